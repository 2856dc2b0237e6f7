"""harmony's built-in browser and python, run by the server inside the turn, on every API.

One server for the file, with both built-ins on: the browser searches a SearXNG-shaped endpoint and
reads pages of a local web site (tests/web_site.py; 127.0.0.1 allowed by browser_allowed_hosts), and
python runs in bubblewrap. The scripted model (tests/scripts.py) searches, opens, finds and cites, or
runs code twice in one interpreter; where a result holds a trigger of its own, the next reply is that
trigger's, so the answer proves that the result reached the model.
"""

import shutil
import sys

import anthropic
import httpx
import pytest

from server.tools.python import inspect
from server.tools.sandbox import Bubblewrap
from tests.scripts import (
    BROWSE_QUESTION,
    MISSING_TOOL_ANSWER,
    PYTHON_AGAIN,
    PYTHON_ANSWER,
    PYTHON_KEPT,
    PYTHON_OFF_ANSWER,
    PYTHON_QUESTION,
    PYTHON_STILL,
    PYTHON_STILL_ANSWER,
)
from tests.test_mcp import in_order, streamed_chat
from tests.test_web_page import Page, browser  # noqa: F401 (the browser fixture)
from tests.web_site import LocalSite

pytestmark = pytest.mark.slow  # a server of its own
CLAUDE = "claude-sonnet-4-5"


def sandbox_python() -> str:
    """Under root bubblewrap runs the code as nobody, who can't reach an interpreter under /root."""
    return "/usr/bin/python3" if Bubblewrap.unreachable(inspect(sys.executable).dirs) else sys.executable


@pytest.fixture(scope="module")
def site():
    with LocalSite() as site:
        yield site


@pytest.fixture(scope="module")
def server(start_server, scripted_model, site):
    return start_server(
        ["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted"],
        env={"SWALLOW_BROWSER_TOOL": "true", "SWALLOW_BROWSER_DEFAULT": "true",  # on for chat by default
             "SWALLOW_BROWSER_SEARXNG_URL": site.searxng, "SWALLOW_BROWSER_ALLOWED_HOSTS": "127.0.0.1",
             "SWALLOW_PYTHON_TOOL": "true", "SWALLOW_PYTHON_EXECUTABLE": sandbox_python()})


@pytest.fixture(scope="module")
def python_on(server):
    if "python" not in httpx.get(f"{server.url}/status.json", timeout=10).json()["builtin_tools"]:
        why = "bubblewrap is not installed" if shutil.which("bwrap") is None else "bubblewrap can't run here"
        pytest.skip(f"python is not offered: {why} (see test_python_tool.py)")


class Cited:
    """The answer to BROWSE_QUESTION as the server gives it: each citation a link to the page it cites."""

    def __init__(self, site):
        self.url = site.url("/tokyo.html")
        self.link = f"([127.0.0.1:{site.port}]({self.url}))"  # no space before it after Japanese
        first = f"今日の東京は晴れです{self.link}"
        self.text = f"{first}。明日は午後から雨が降る見込みです{self.link}。"
        end = len(self.text) - 1  # before the last 。
        self.spans = [(len(first) - len(self.link), len(first)), (end - len(self.link), end)]


def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="any", max_retries=0)


def test_responses_searches_opens_finds_and_cites(server, site):
    cited = Cited(site)
    response = server.client().responses.create(model="scripted", input=BROWSE_QUESTION, tools=[{"type": "web_search"}],
                                                include=["web_search_call.action.sources"])
    assert [item.type for item in response.output] == ["reasoning", "web_search_call"] * 3 + ["reasoning", "message"]
    search, opened, found = (item.action for item in response.output if item.type == "web_search_call")
    assert (search.type, search.query) == ("search", "東京 天気")
    # the search endpoint's results with an http(s) URL, in its order
    assert [s.url for s in search.sources] == [cited.url, site.url("/en/guide.html"), site.url("/forecast.html")]
    assert (opened.type, opened.url) == ("open_page", cited.url)
    assert (found.type, found.pattern, found.url) == ("find_in_page", "雨", cited.url)
    assert all(item.status == "completed" for item in response.output)
    assert response.output_text == cited.text
    (part,) = response.output[-1].content
    assert [(a.type, a.url, a.title, a.start_index, a.end_index) for a in part.annotations] == \
        [("url_citation", cited.url, "東京の天気", start, end) for start, end in cited.spans]
    assert all(cited.text[a.start_index:a.end_index] == cited.link for a in part.annotations)

    # streamed, with the preview type: the calls and the citations as they happen, in OpenAI's events
    with server.client().responses.stream(model="scripted", input=BROWSE_QUESTION,
                                          tools=[{"type": "web_search_preview"}]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert in_order(["response.output_item.added", "response.web_search_call.in_progress",
                     "response.web_search_call.searching", "response.web_search_call.completed",
                     "response.output_item.done"] * 3 + ["response.output_text.delta",
                    "response.output_text.annotation.added", "response.output_text.annotation.added",
                    "response.output_text.done", "response.completed"], kinds), kinds
    added = [e.annotation for e in events if e.type == "response.output_text.annotation.added"]
    assert [(a.start_index, a.end_index) for a in added] == cited.spans
    assert final.output_text == cited.text and len(final.output[-1].content[0].annotations) == 2
    assert not hasattr(final.output[1].action, "sources") or final.output[1].action.sources is None  # not asked


def test_responses_runs_python_in_the_conversations_container(server, python_on):
    client = server.client()
    tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    first = client.responses.create(model="scripted", input=PYTHON_QUESTION, tools=tools)
    assert [item.type for item in first.output] == ["reasoning", "code_interpreter_call"] * 2 + ["reasoning", "message"]
    computed, kept = (item for item in first.output if item.type == "code_interpreter_call")
    assert (computed.code, computed.status) == ("x = 6 * 7\nx", "completed")
    assert [(o.type, o.logs) for o in computed.outputs] == [("logs", "42\n")]  # the last expression's value
    assert kept.outputs[0].logs == PYTHON_KEPT + "\n"  # the variable outlived the call
    container = computed.container_id
    assert container.startswith("cntr_") and kept.container_id == container
    assert first.output_text == PYTHON_ANSWER

    # continued (streamed): the conversation's container, its variables still there
    with client.responses.stream(model="scripted", input=PYTHON_AGAIN, tools=tools,
                                 previous_response_id=first.id) as stream:
        kinds = [event.type for event in stream]
        again = stream.get_final_response()
    assert in_order(["response.output_item.added", "response.code_interpreter_call.in_progress",
                     "response.code_interpreter_call_code.delta", "response.code_interpreter_call_code.done",
                     "response.code_interpreter_call.interpreting", "response.code_interpreter_call.completed",
                     "response.output_item.done", "response.completed"], kinds), kinds
    (call,) = (item for item in again.output if item.type == "code_interpreter_call")
    assert (call.container_id, call.outputs[0].logs) == (container, PYTHON_STILL + "\n")
    assert again.output_text == PYTHON_STILL_ANSWER

    # a container named by its id is that interpreter; a new conversation gets a new one, without x
    named = client.responses.create(model="scripted", input=PYTHON_AGAIN,
                                    tools=[{"type": "code_interpreter", "container": container}])
    assert named.output_text == PYTHON_STILL_ANSWER
    fresh = client.responses.create(model="scripted", input=PYTHON_AGAIN, tools=tools, max_tool_calls=1)
    call = next(item for item in fresh.output if item.type == "code_interpreter_call")
    assert call.container_id != container and "NameError: name 'x' is not defined" in call.outputs[0].logs


def test_chat_completions_shows_the_calls_and_the_citations(server, site, python_on):
    cited = Cited(site)
    # browser_default: on for a request that names no server-run tools
    reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": BROWSE_QUESTION}]}).json()
    message = reply["choices"][0]["message"]
    assert message["content"] == cited.text
    assert message["annotations"] == [
        {"type": "url_citation", "url_citation": {"url": cited.url, "title": "東京の天気", "start_index": start,
                                                  "end_index": end}} for start, end in cited.spans]
    calls = message["server_tool_calls"]
    assert [(c["type"], c["server"], c["name"], c["action"]["type"]) for c in calls] == \
        [("browser", "browser", "search", "search"), ("browser", "browser", "open", "open_page"),
         ("browser", "browser", "find", "find_in_page")]
    assert calls[1]["output"].startswith(f"[1] 東京の天気 ({cited.url})")  # the view the model read, cursor 1
    assert '[tool call] browser.search {"query": "東京 天気"}' in message["reasoning_content"]

    # streamed, turned on by OpenAI's web_search_options: the same answer, its annotations in the deltas
    streamed, chunks = streamed_chat(server, {"messages": [{"role": "user", "content": BROWSE_QUESTION}],
                                              "web_search_options": {}})
    assert streamed["content"] == cited.text
    annotations = [a for c in chunks for choice in c["choices"] for a in choice["delta"].get("annotations", [])]
    assert annotations == message["annotations"]

    # python, named by the conversation's opening: a later request of the conversation finds x again
    ask = {"messages": [{"role": "user", "content": PYTHON_QUESTION}], "builtin_tools": ["python"]}
    computed = httpx.post(f"{server.url}/v1/chat/completions", json=ask, timeout=120).json()["choices"][0]["message"]
    assert computed["content"] == PYTHON_ANSWER
    assert [(c["type"], c["output"]) for c in computed["server_tool_calls"]] == \
        [("python", "42\n"), ("python", PYTHON_KEPT + "\n")]
    history = {**ask, "messages": [*ask["messages"], {"role": "assistant", "content": computed["content"]},
                                   {"role": "user", "content": PYTHON_AGAIN}]}
    again, _ = streamed_chat(server, history)
    assert again["content"] == PYTHON_STILL_ANSWER
    assert again["server_tool_calls"][0]["output"] == PYTHON_STILL + "\n"


def test_messages_shows_server_tool_use_and_cited_text_blocks(server, site, python_on):
    cited = Cited(site)
    ask = {"model": CLAUDE, "max_tokens": 1024, "messages": [{"role": "user", "content": BROWSE_QUESTION}],
           "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    message = claude(server).messages.create(**ask)
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "server_tool_use", "web_search_tool_result"] + \
        ["thinking", "server_tool_use", "web_fetch_tool_result"] * 2 + ["thinking", "text", "text", "text"]
    search, results = message.content[1:3]
    assert (search.name, search.input, results.tool_use_id) == ("web_search", {"query": "東京 天気"}, search.id)
    assert [(r.url, r.title) for r in results.content][:2] == [(cited.url, "東京の天気"),
                                                              (site.url("/en/guide.html"), "A guide to Tokyo's parks")]
    opened, fetched = message.content[4:6]
    assert (opened.name, opened.input) == ("web_fetch", {"url": cited.url})
    assert fetched.content.content.source.data.startswith(f"[1] 東京の天気 ({cited.url})")
    assert message.content[7].input == {"url": cited.url, "pattern": "雨"}
    texts = message.content[-3:]
    assert "".join(block.text for block in texts) == cited.text
    assert [block.text.endswith(cited.link) for block in texts] == [True, True, False]  # each cited part ends a block
    first_quote, second_quote = (block.citations[0] for block in texts[:2])
    assert (first_quote.type, first_quote.url, first_quote.title) == \
        ("web_search_result_location", cited.url, "東京の天気")
    assert first_quote.cited_text.startswith("今日の東京は晴れです。最高気温は25度")  # the line it cites (L2)
    assert second_quote.cited_text.startswith("明日は午後から雨が降る見込みです。")  # of the find page, cursor 2
    assert texts[2].citations is None
    counted = message.usage.server_tool_use
    assert (counted.web_search_requests, counted.web_fetch_requests) == (1, 2)

    with claude(server).messages.stream(**ask) as stream:
        events = list(stream)
        streamed = stream.get_final_message()
    assert [block.type for block in streamed.content] == kinds
    assert [b.citations for b in streamed.content[-3:]] == [b.citations for b in texts]  # from citations_delta
    assert sum(e.type == "content_block_delta" and e.delta.type == "citations_delta" for e in events) == 2

    # the system message declares the browser, as harmony does: its tokens are counted
    bare = claude(server).messages.count_tokens(model=CLAUDE, messages=ask["messages"]).input_tokens
    with_browser = claude(server).messages.count_tokens(model=CLAUDE, messages=ask["messages"],
                                                        tools=ask["tools"]).input_tokens
    assert with_browser - bare > 300

    # python as Anthropic's code execution, named by metadata.user_id: a later request finds x again,
    # with the earlier reply's blocks sent back as they came
    run = {"model": CLAUDE, "max_tokens": 1024, "metadata": {"user_id": "user_test_session_42"},
           "tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}
    computed = claude(server).messages.create(messages=[{"role": "user", "content": PYTHON_QUESTION}], **run)
    use, result = computed.content[1:3]
    assert (use.name, use.input) == ("code_execution", {"code": "x = 6 * 7\nx"})
    assert result.type == "code_execution_tool_result"
    assert (result.content.stdout, result.content.return_code) == ("42\n", 0)
    assert computed.content[-1].text == PYTHON_ANSWER
    history = [{"role": "user", "content": PYTHON_QUESTION},
               {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in computed.content]},
               {"role": "user", "content": PYTHON_AGAIN}]
    with claude(server).messages.stream(messages=history, **run) as stream:  # streamed, this time
        again = stream.get_final_message()
    assert [block.type for block in again.content] == ["thinking", "server_tool_use", "code_execution_tool_result",
                                                       "text"]
    assert (again.content[2].content.stdout, again.content[-1].text) == (PYTHON_STILL + "\n", PYTHON_STILL_ANSWER)


def test_a_builtin_call_where_it_is_off_still_ends_in_an_answer(server, scripted_server):
    """Off for the request (not turned on) or on the server (not configured): the model calls it
    anyway, as GPT-OSS does; it reads that the tool is not available here, and answers."""
    off = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Run python where it is off."}], "builtin_tools": []}).json()
    message = off["choices"][0]["message"]
    assert message["content"] == PYTHON_OFF_ANSWER and off["choices"][0]["finish_reason"] == "stop"
    assert message["server_tool_calls"][0]["error"] == "python is not available here"

    streamed, _ = streamed_chat(server, {"messages": [{"role": "user", "content": "Search the web for swallows."}],
                                         "builtin_tools": []})
    assert streamed["content"] == MISSING_TOOL_ANSWER

    response = server.client().responses.create(model="scripted", input="Search the web for swallows.")
    assert [item.type for item in response.output] == ["reasoning", "message"]  # no web_search_call
    assert response.output_text == MISSING_TOOL_ANSWER

    python_off = claude(server).messages.create(model=CLAUDE, max_tokens=512, messages=[
        {"role": "user", "content": "Run python where it is off."}])
    assert python_off.content[-1].text == PYTHON_OFF_ANSWER and python_off.stop_reason == "end_turn"

    # a server without them: web_search is left out quietly (Codex CLI always sends it), and a request
    # that needs a built-in the server doesn't run is told so
    quiet = scripted_server.client().responses.create(model="scripted", input="Search the web for swallows.",
                                                      tools=[{"type": "web_search"}])
    assert quiet.output_text == MISSING_TOOL_ANSWER
    refused = httpx.post(f"{scripted_server.url}/v1/responses", timeout=30, json={
        "input": "hi", "tools": [{"type": "function", "name": "f"}, {"type": "code_interpreter", "container": "cntr_1"}]})
    error = refused.json()["error"]
    assert (refused.status_code, error["param"], error["code"]) == (400, "tools[1]", "builtin_tool_unavailable")
    with pytest.raises(anthropic.BadRequestError, match="does not run the browser"):
        claude(scripted_server).messages.create(model=CLAUDE, max_tokens=64,
                                                messages=[{"role": "user", "content": "hi"}],
                                                tools=[{"type": "web_search_20250305", "name": "web_search"}])


def test_the_chat_page_toggles_search_and_python_and_links_citations(browser, server, site, python_on):  # noqa: F811
    cited = Cited(site)
    page = Page(browser, server.url)
    page.settings()
    page.wait(lambda: page.el("#builtin-setting").is_displayed(), what="the built-in tools in the settings")
    ticks = {box.get_attribute("value"): box for box in page.all("#builtin-tools input")}
    assert {name: box.is_selected() for name, box in ticks.items()} == {"browser": True, "python": False}
    page.send(BROWSE_QUESTION)
    reply = page.wait_for_reply()
    links = reply.find_elements("css selector", ".answer a.citation")
    assert [(a.get_attribute("href"), a.text) for a in links] == [(cited.url, f"127.0.0.1:{site.port}")] * 2
    calls = [call.text for call in reply.find_elements("css selector", ".tool-call")]
    assert calls == ["🔎 東京 天気", f"📄 {cited.url}", "🔍 雨"]

    ticks["python"].click()  # python on: the model's code runs, in this conversation's interpreter
    page.send(PYTHON_QUESTION)
    reply = page.wait_for_reply()
    assert reply.find_element("css selector", ".answer").text == PYTHON_ANSWER
    assert [call.text for call in reply.find_elements("css selector", ".tool-call")] == ["🐍 python"] * 2
    sent = page.js("return JSON.parse(localStorage.getItem('swallow.conversations'))[0].serverId")
    assert len(sent) == 32  # the conversation's random name, sent as metadata.conversation_id
