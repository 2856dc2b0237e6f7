"""Each API's request -> the resolved turn, without a server (as vLLM tests its protocol
translations): what a request says and what the server decides for what it leaves out.

Runs in about a second: `pytest tests/test_translation.py`."""

import dataclasses

import pytest

from server.api.chat.prompt import translate as chat
from server.api.chat.schema import ChatCompletionRequest
from server.api.messages.prompt import translate as messages
from server.api.messages.schema import MessagesRequest
from server.api.responses.prompt import translate as responses
from server.api.responses.schema import ResponsesRequest
from server.config import Settings
from server.engine.sampling import SamplingParams
from server.plumbing.errors import APIError
from server.turn.resolve import ANY_TOOL, resolve

SETTINGS = Settings(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, max_tokens=4096, reasoning_effort="medium")
HI = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def chat_turn(settings=SETTINGS, **body):
    return resolve(chat(ChatCompletionRequest(messages=HI, **body)), settings)


def responses_turn(settings=SETTINGS, **body):
    return resolve(responses(ResponsesRequest(**{"input": "hi", **body}), history=[]), settings)


def messages_turn(settings=SETTINGS, **body):
    return resolve(messages(MessagesRequest(**{"max_tokens": 100, "messages": HI, **body})), settings)


def error_of(make, **body) -> APIError:
    with pytest.raises(APIError) as caught:
        make(**body)
    return caught.value


# ---- defaults: what a request leaves out, the same on every API -------------------------------

@pytest.mark.parametrize("make", [chat_turn, responses_turn, messages_turn])
def test_a_bare_request_gets_the_configured_defaults(make):
    turn = make()
    assert turn.sampling == SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
    assert turn.prompt.effort == "medium"
    assert turn.n == 1 and turn.logprobs is None and turn.stop == ()
    assert turn.reasoning.budget is None and not turn.reasoning.exclude
    assert turn.reasoning.loop is not None  # the loop guard is on by default
    assert turn.response_format is None and not turn.tools.shown and turn.tools.forced is None
    assert turn.max_tokens == (100 if make is messages_turn else 4096)  # Messages requires max_tokens


@pytest.mark.parametrize("make", [chat_turn, responses_turn, messages_turn])
def test_settings_change_the_defaults_not_what_a_request_said(make):
    settings = Settings(temperature=0.2, top_k=0, max_tokens=77, reasoning_effort="low",
                        reasoning_max_tokens=300, loop_guard=False)
    turn = make(settings=settings)
    assert (turn.sampling.temperature, turn.sampling.top_k) == (0.2, 0)
    assert turn.prompt.effort == "low"
    assert turn.reasoning.budget == 300 and turn.reasoning.loop is None
    assert make(settings=settings, temperature=1.0).sampling.temperature == 1.0


def test_a_resolved_turn_is_frozen():
    turn = chat_turn()
    with pytest.raises(dataclasses.FrozenInstanceError):
        turn.max_tokens = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        turn.sampling.temperature = 1.5


# ---- chat completions ---------------------------------------------------------------------------

def test_chat_sampling_effort_limits_and_choices():
    turn = chat_turn(temperature=0, top_p=0.5, top_k=-1, min_p=0.1, seed=7, presence_penalty=0.5,
                     frequency_penalty=-0.5, reasoning_effort="high", max_completion_tokens=50, n=3,
                     stop=["END"], logprobs=True, top_logprobs=2)
    assert turn.sampling == SamplingParams(temperature=0, top_p=0.5, top_k=0, min_p=0.1, seed=7,
                                           presence_penalty=0.5, frequency_penalty=-0.5)
    assert turn.prompt.effort == "high"
    assert (turn.max_tokens, turn.max_tokens_param) == (50, "max_completion_tokens")
    assert turn.n == 3 and turn.stop == ("END",) and turn.logprobs == 2
    assert [turn.choice(i).sampling.seed for i in range(3)] == [7, 8, 9]
    assert chat_turn(reasoning={"effort": "low"}).prompt.effort == "low"
    assert chat_turn(max_tokens=9).max_tokens_param == "max_tokens"


def test_chat_reasoning_controls():
    assert chat_turn(reasoning={"enabled": False}).reasoning.budget == 0
    assert chat_turn(reasoning={"max_tokens": 64, "exclude": True}).reasoning.budget == 64
    assert chat_turn(reasoning={"exclude": True}).reasoning.exclude
    assert chat_turn(reasoning={"loop_guard": False}).reasoning.loop is None


def test_chat_tools_and_tool_choice():
    tool = {"type": "function", "function": {"name": "get weather", "parameters": WEATHER, "strict": True}}
    auto = chat_turn(tools=[tool])
    assert auto.tools.shown_names == ["get_weather"] and auto.tools.forced is None
    assert auto.tools.client_name("get_weather") == "get weather"
    assert auto.tools.strict == (("get_weather", WEATHER, "tools[0].function.parameters"),)
    assert chat_turn(tools=[tool], tool_choice="required").tools.forced == ANY_TOOL
    named = chat_turn(tools=[tool], tool_choice={"type": "function", "function": {"name": "get weather"}})
    assert named.tools.forced == "get_weather"
    assert named.forced_prefix() == "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    none = chat_turn(tools=[tool], tool_choice="none")
    assert none.tools.shown == () and none.prompt.tools == [] and none.tools.strict == ()
    unknown = error_of(chat_turn, tools=[tool], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert unknown.param == "tool_choice" and "'nope'" in unknown.message
    assert error_of(chat_turn, tool_choice="required").param == "tool_choice"
    twice = error_of(chat_turn, tools=[tool, tool])
    assert twice.param == "tools"
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
    assert error_of(chat_turn, tools=[bad]).param == "tools[0].function.parameters"


def test_chat_response_formats():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    turn = chat_turn(response_format={"type": "json_schema",
                                      "json_schema": {"name": "answer", "schema": schema, "description": "It."}})
    assert (turn.response_format.name, turn.response_format.schema) == ("answer", schema)
    assert turn.response_format.param == "response_format.json_schema.schema"
    assert turn.prompt.instructions.startswith("# Response Formats\n\n## answer\n\n// It.\n{")
    obj = chat_turn(response_format={"type": "json_object"})
    assert obj.response_format.schema == {"type": "object"} and "Response Formats" not in obj.prompt.instructions
    assert chat_turn(response_format={"type": "text"}).response_format is None
    assert error_of(chat_turn, response_format={"type": "json_object"}, stop="x").param == "stop"


def test_chat_choices_are_bounded_by_max_n():
    assert error_of(chat_turn, settings=Settings(max_n=2), n=3).param == "n"


def test_chat_messages_become_the_conversation():
    body = ChatCompletionRequest(messages=[
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Speak Japanese."},
        {"role": "user", "content": "hi"}])
    turn = resolve(chat(body), SETTINGS)
    assert turn.prompt.instructions == "Be brief.\n\nSpeak Japanese."
    assert [m.content[0].text for m in turn.prompt.messages] == ["hi"]


# ---- Responses -----------------------------------------------------------------------------------

def test_responses_options():
    turn = responses_turn(instructions="Be brief.", reasoning={"effort": "xhigh", "max_tokens": 10},
                          max_output_tokens=30, top_k=5, seed=1, include=["message.output_text.logprobs"],
                          top_logprobs=3)
    assert turn.prompt.effort == "high" and turn.reasoning.budget == 10
    assert (turn.max_tokens, turn.max_tokens_param) == (30, "max_output_tokens")
    assert (turn.sampling.top_k, turn.sampling.seed) == (5, 1) and turn.logprobs == 3
    assert turn.prompt.instructions == "Be brief." and turn.input_param == "input"
    assert responses_turn(reasoning_effort="minimal").prompt.effort == "low"


def test_responses_namespaces_and_formats():
    namespace = {"type": "namespace", "name": "multi_agent_v1",
                 "tools": [{"type": "function", "name": "spawn_agent", "parameters": WEATHER, "strict": True}]}
    turn = responses_turn(tools=[namespace, {"type": "web_search"}], tool_choice="required")
    assert turn.tools.shown_names == ["multi_agent_v1_spawn_agent"] and turn.tools.forced == ANY_TOOL
    assert turn.tools.client("multi_agent_v1_spawn_agent") == ("multi_agent_v1", "spawn_agent")
    assert turn.tools.strict[0][2] == "tools[0].tools[0].parameters"
    fmt = responses_turn(text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER}}).response_format
    assert (fmt.name, fmt.param) == ("w", "text.format.schema")


# ---- Messages ------------------------------------------------------------------------------------

def test_messages_thinking_effort_and_stops():
    assert messages_turn(thinking={"type": "disabled"}).reasoning.budget == 0
    assert messages_turn(thinking={"type": "enabled", "budget_tokens": 2048}).reasoning.budget == 2048
    assert messages_turn(thinking={"type": "adaptive"}).reasoning.budget is None
    assert messages_turn(output_config={"effort": "max"}).prompt.effort == "high"
    turn = messages_turn(stop_sequences=["END"], top_k=3, temperature=0.1, system="Be brief.")
    assert turn.stop == ("END",) and turn.sampling.top_k == 3 and turn.sampling.temperature == 0.1
    assert turn.prompt.instructions == "Be brief."


def test_messages_tool_choice_and_format():
    tool = {"name": "Read", "input_schema": WEATHER}
    assert messages_turn(tools=[tool], tool_choice={"type": "any"}).tools.forced == ANY_TOOL
    assert messages_turn(tools=[tool], tool_choice={"type": "tool", "name": "Read"}).tools.forced == "Read"
    assert messages_turn(tools=[tool], tool_choice={"type": "none"}).tools.shown == ()
    unknown = error_of(messages_turn, tools=[tool], tool_choice={"type": "tool", "name": "Write"})
    assert unknown.param == "tool_choice.name"
    fmt = messages_turn(output_config={"format": {"type": "json_schema", "schema": WEATHER}}).response_format
    assert (fmt.type, fmt.param) == ("json_schema", "output_config.format.schema")


# ---- MCP servers the server runs tools of (docs/tools.md) -------------------------------------

def test_each_api_names_its_mcp_servers_in_its_own_words():
    from server.tools.toolbox import ServerAsk

    assert chat(ChatCompletionRequest(messages=HI)).servers is None  # none named: the configured defaults
    assert chat(ChatCompletionRequest(messages=HI, tools=[
        {"type": "mcp", "server_label": "fs", "allowed_tools": {"tool_names": ["read_text_file"]}}])).servers \
        == (ServerAsk("fs", ("read_text_file",), param="tools[0]"),)
    assert responses(ResponsesRequest(input="hi"), history=[]).servers == ()  # none: none
    assert responses(ResponsesRequest(input="hi", tools=[
        {"type": "mcp", "server_label": "web", "server_url": "https://example.com/mcp", "authorization": "t",
         "require_approval": "never"}]), history=[]).servers \
        == (ServerAsk("web", url="https://example.com/mcp", headers={"Authorization": "Bearer t"}, param="tools[0]"),)
    # the MCP connector: a server in mcp_servers and its toolset are one server
    asks = messages(MessagesRequest(max_tokens=10, messages=HI, mcp_servers=[{"type": "url", "name": "fs", "url": ""}],
                                    tools=[{"type": "mcp_toolset", "mcp_server_name": "fs",
                                            "configs": {"write_file": {"enabled": False}}}])).servers
    assert asks == (ServerAsk("fs", denied_tools=("write_file",), param="mcp_servers[0]"),)


def test_each_api_turns_on_the_builtins_and_names_the_conversation_in_its_own_words():
    from server.tools.toolbox import BuiltinAsk

    # chat completions: builtin_tools, or OpenAI's web_search_options; a request naming no server-run
    # tool at all gets the defaults (browser_default, python_default), one naming any gets only those
    assert chat(ChatCompletionRequest(messages=HI)).builtins == BuiltinAsk(defaults=True)
    assert chat(ChatCompletionRequest(messages=HI, tools=[{"type": "mcp", "server_label": "fs"}])).builtins \
        == BuiltinAsk()
    named = chat(ChatCompletionRequest(messages=HI, builtin_tools=["python"], web_search_options={},
                                       metadata={"conversation_id": "c1"}))
    assert named.builtins == BuiltinAsk(browser="web_search_options", python="builtin_tools", conversation="id\0c1")
    assert chat(ChatCompletionRequest(messages=HI, builtin_tools=[])).servers == ()  # no MCP defaults either
    # Responses: web_search (left out quietly where there's no browser); code_interpreter's container
    asked = responses(ResponsesRequest(input="hi", tools=[{"type": "web_search_preview"},
                                                          {"type": "code_interpreter", "container": "cntr_mine"}]),
                      history=[]).builtins
    assert asked == BuiltinAsk(browser="tools[0]", python="tools[1]", conversation="cntr_mine", quiet=("browser",))
    earlier = [{"type": "code_interpreter_call", "id": "ci_1", "code": "x = 1", "container_id": "cntr_old",
                "outputs": [{"type": "logs", "logs": ""}]}]
    body = ResponsesRequest(input=[*earlier, {"role": "user", "content": "more"}],
                            tools=[{"type": "code_interpreter", "container": {"type": "auto"}}])
    going_on = responses(body, history=[])
    assert going_on.builtins.conversation == "cntr_old"  # the conversation's last
    assert len(going_on.messages) == 1  # earlier built-in calls are records, not shown again
    fresh = responses(ResponsesRequest(input="hi", tools=[{"type": "code_interpreter"}]), history=[])
    assert fresh.builtins.conversation.startswith("cntr_") and fresh.builtins.conversation != "cntr_old"
    # Messages: Anthropic's server tools; metadata.user_id (Claude Code's session) names the conversation
    ask = messages(MessagesRequest(max_tokens=10, messages=HI, metadata={"user_id": "session_1"}, tools=[
        {"type": "web_fetch_20250910", "name": "web_fetch"},
        {"type": "code_execution_20250825", "name": "code_execution"}, {"name": "get_weather", "input_schema": WEATHER}]))
    assert ask.builtins == BuiltinAsk(browser="tools[0]", python="tools[1]", conversation="id\0session_1")
    assert [t.name for t in ask.tools] == ["get_weather"]  # the server tools are not the client's


def test_max_tool_calls_bounds_the_loop_within_the_setting():
    assert responses_turn().server_tools.max_rounds == SETTINGS.tool_max_rounds == 8
    assert responses_turn(max_tool_calls=2).server_tools.max_rounds == 2
    assert responses_turn(max_tool_calls=50).server_tools.max_rounds == 8


def test_approvals_and_connectors_are_refused_on_responses():
    for tool in ({"type": "mcp", "server_label": "fs", "require_approval": "always"},
                 {"type": "mcp", "server_label": "gmail", "connector_id": "connector_gmail"}):
        with pytest.raises(ValueError):
            ResponsesRequest(input="hi", tools=[tool])


def test_earlier_mcp_calls_go_back_into_harmony_as_call_and_result():
    turn = responses_turn(input=[
        {"role": "user", "content": "Read it."},
        {"type": "mcp_list_tools", "server_label": "everything", "tools": []},
        {"type": "mcp_call", "server_label": "everything", "name": "get-sum", "arguments": '{"a": 1}',
         "output": None, "error": {"type": "mcp_protocol_error", "code": -32000, "message": "timed out"}},
    ])
    call, result = turn.prompt.messages[-2:]
    assert (call.recipient, call.channel, call.content[0].text) == ("everything.get_sum", "commentary", '{"a": 1}')
    assert (result.author.name, result.recipient, result.content[0].text) == (
        "everything.get_sum", "assistant", "Error: timed out")
