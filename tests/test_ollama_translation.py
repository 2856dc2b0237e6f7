"""Ollama's requests -> the resolved turn, and its model details, without a server (as
tests/test_translation.py does for the other APIs): what a request says, what the server decides
for what it leaves out, and what it refuses.

Runs in about a second: `pytest tests/test_ollama_translation.py`."""

import json

import pytest
from openai_harmony import Role
from pydantic import ValidationError

from server.api.ollama.cards import details, parameter_count, quantization
from server.api.ollama.prompt import UNLIMITED, translate_chat, translate_generate
from server.api.ollama.schema import ChatRequest, GenerateRequest
from server.config import Settings
from server.engine.sampling import SamplingParams
from server.plumbing.errors import APIError
from server.turn.resolve import resolve

SETTINGS = Settings(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, max_tokens=4096, reasoning_effort="medium")
HI = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "function": {"name": "get weather", "description": "Weather in a city",
                                                 "parameters": WEATHER}}


def chat_turn(**body):
    return resolve(translate_chat(ChatRequest(**{"model": "swallow", "messages": HI, **body})), SETTINGS)


def generate_turn(**body):
    return resolve(translate_generate(GenerateRequest(**{"model": "swallow", "prompt": "hi", **body})), SETTINGS)


def test_a_bare_request_gets_the_configured_defaults():
    for turn in (chat_turn(), generate_turn()):
        assert turn.sampling == SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
        assert turn.prompt.effort == "medium" and turn.max_tokens == 4096
        assert turn.reasoning.budget is None and not turn.reasoning.exclude
        assert turn.response_format is None and turn.stop == () and turn.logprobs is None


def test_options_are_the_sampling_the_token_limit_and_the_stops():
    turn = chat_turn(options={"temperature": 0, "top_p": 0.5, "top_k": -1, "min_p": 0.1, "seed": 7,
                              "presence_penalty": 0.5, "frequency_penalty": -0.5, "stop": "END", "num_predict": 50,
                              "num_ctx": 2048, "repeat_penalty": 1.1, "mirostat": 2, "num_gpu": 99})
    assert turn.sampling == SamplingParams(temperature=0, top_p=0.5, top_k=0, min_p=0.1, seed=7,
                                           presence_penalty=0.5, frequency_penalty=-0.5)
    assert turn.stop == ("END",) and (turn.max_tokens, turn.max_tokens_param) == (50, "options.num_predict")
    for endless in (-1, -2, 0):  # Ollama's "as long as the context allows"; the turn clamps it
        assert chat_turn(options={"num_predict": endless}).max_tokens == UNLIMITED
    with pytest.raises(ValidationError):
        ChatRequest(messages=HI, options={"temperature": 3})


@pytest.mark.parametrize("think, effort", [(None, "medium"), (True, "medium"), ("low", "low"), ("medium", "medium"),
                                           ("high", "high"), ("max", "high")])
def test_think_is_the_reasoning_effort(think, effort):
    turn = chat_turn(think=think)
    assert turn.prompt.effort == effort and turn.reasoning.budget is None and not turn.reasoning.exclude
    assert generate_turn(think=think).prompt.effort == effort


def test_think_false_skips_the_reasoning_and_sends_none():
    turn = chat_turn(think=False)
    assert turn.reasoning.budget == 0 and turn.reasoning.exclude and turn.prompt.effort == "low"
    with pytest.raises(ValidationError, match="invalid think value"):
        ChatRequest(messages=HI, think="extreme")


def test_format_json_or_a_schema():
    assert chat_turn(format="json").response_format.schema == {"type": "object"}
    turn = chat_turn(format=WEATHER)
    assert (turn.response_format.type, turn.response_format.schema) == ("json_schema", WEATHER)
    assert turn.prompt.instructions.startswith("# Response Formats")
    assert chat_turn(format="").response_format is None
    with pytest.raises(ValidationError):
        ChatRequest(messages=HI, format="yaml")


def test_a_tool_round_trip_becomes_harmony_calls_and_results():
    turn = chat_turn(tools=[WEATHER_TOOL], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Tokyo and Osaka?"},
        {"role": "assistant", "content": "", "thinking": "Two calls.", "tool_calls": [
            {"function": {"name": "get weather", "arguments": {"city": "Tokyo"}}},
            {"id": "call_2", "function": {"name": "get weather", "arguments": '{"city": "Osaka"}'}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get weather"},
        {"role": "tool", "content": "rainy", "tool_call_id": "call_2"},
        {"role": "system", "content": "Answer in Japanese."},
    ])
    assert turn.prompt.instructions == "Be brief." and turn.tools.shown_names == ["get_weather"]
    messages = turn.prompt.messages
    assert [(m.author.role, m.channel, m.recipient) for m in messages] == [
        (Role.USER, None, None), (Role.ASSISTANT, "analysis", None),
        (Role.ASSISTANT, "commentary", "functions.get_weather"), (Role.ASSISTANT, "commentary", "functions.get_weather"),
        (Role.TOOL, "commentary", "assistant"), (Role.TOOL, "commentary", "assistant"), (Role.DEVELOPER, None, None)]
    assert [json.loads(m.content[0].text) for m in messages[2:4]] == [{"city": "Tokyo"}, {"city": "Osaka"}]
    assert [m.author.name for m in messages[4:6]] == ["functions.get_weather"] * 2
    assert messages[6].content[0].text == "Answer in Japanese."


def test_a_tool_message_without_a_name_answers_the_earliest_unanswered_call():
    call = {"role": "assistant", "tool_calls": [{"function": {"name": "lookup", "arguments": {}}}]}
    turn = chat_turn(messages=[*HI, call, {"role": "tool", "content": "found"}])
    assert turn.prompt.messages[-1].author.name == "functions.lookup"
    with pytest.raises(APIError) as refused:
        chat_turn(messages=[*HI, {"role": "tool", "content": "orphan"}])
    assert refused.value.param == "messages[1].tool_name"


def test_generate_takes_system_and_refuses_what_harmony_cant_do():
    turn = generate_turn(system="Speak like a pirate.")
    assert turn.prompt.instructions == "Speak like a pirate."
    assert [m.content[0].text for m in turn.prompt.messages] == ["hi"]
    for field, value in (("suffix", "return x"), ("template", "{{ .Prompt }}"), ("context", [1, 2, 3])):
        with pytest.raises(APIError) as refused:
            generate_turn(**{field: value})
        assert refused.value.param == field and "not supported" in refused.value.message
    with pytest.raises(ValidationError, match="raw mode does not support"):
        GenerateRequest(prompt="x", raw=True, system="y")


def test_images_and_unknown_roles_are_refused():
    with pytest.raises(ValidationError, match="images are not supported"):
        ChatRequest(messages=[{"role": "user", "content": "what is this?", "images": ["aGk="]}])
    with pytest.raises(ValidationError, match="images are not supported"):
        GenerateRequest(prompt="what is this?", images=["aGk="])
    with pytest.raises(ValidationError, match="role 'robot'"):
        ChatRequest(messages=[{"role": "robot", "content": "beep"}])
    assert ChatRequest(messages=[{"role": "USER", "content": "hi", "images": []}]).messages[0].role == "user"


# ---- the model details /api/tags, /api/show and /api/ps give ------------------------------------

GPT_OSS_20B = {"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
               "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 32,
               "vocab_size": 201088, "tie_word_embeddings": False}


def test_gpt_oss_20b_details_as_ollama_gives_them():
    assert parameter_count(GPT_OSS_20B) == 20_914_757_184  # Ollama's gpt-oss:20b says 20.9B too
    six_bit = {**GPT_OSS_20B, "quantization": {"group_size": 64, "bits": 6}}
    assert details(six_bit) == {"parent_model": "", "format": "safetensors", "family": "gptoss",
                                "families": ["gptoss"], "parameter_size": "20.9B", "quantization_level": "6-bit"}
    assert quantization({"quantization_config": {"quant_method": "mxfp4"}}) == "MXFP4"
    assert quantization({"torch_dtype": "bfloat16"}) == "BF16"
    assert details({"model_type": "scripted"})["parameter_size"] == ""


def test_the_ollama_port_is_a_second_port_or_none():
    from server.cli import serve_parser
    from server.config import load_settings

    args = vars(serve_parser().parse_args(["--ollama-port", "11434"]))
    assert load_settings(None, {k: v for k, v in args.items() if k not in ("config", "models_given")}).ollama_port == 11434
    assert Settings().ollama_port == 0  # off unless asked for
    with pytest.raises(ValidationError, match="the server's port too"):
        Settings(port=11434, ollama_port=11434)
