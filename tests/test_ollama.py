"""Ollama's API, driven by Ollama's own libraries (`ollama` from PyPI, and from npm for one round)
against the real server and the scripted model: chat streamed and not, thinking at each level, a
tool round trip, structured output, generate (raw too), list / show / ps, loading and unloading,
errors in Ollama's shape, and the second port that answers as Ollama does."""

import datetime
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import mlx.core as mx
import ollama
import pytest

from models.demo import built_demo_dir
from tests.scripts import (
    JAPANESE_ANSWER,
    JAPANESE_REASONING,
    TOOL_ANSWER,
    TOOL_ARGUMENTS,
    WEATHER_JSON,
    thought,
)

TWO_PLUS_TWO = [{"role": "user", "content": "What is 2+2?"}]
EFFORT = [{"role": "user", "content": "Tell me your effort."}]  # unscripted: the effort line is the trigger
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"}},
                  "required": ["city", "temperature"]}


def get_weather(city: str, unit: str, details: str) -> str:
    """Get the current weather for a city.

    Args:
      city: The city
      unit: celsius or fahrenheit
      details: What to report
    """
    return "sunny, 21°C"


@pytest.fixture(scope="module")
def api(scripted_server) -> ollama.Client:
    return ollama.Client(host=scripted_server.url)


def test_chat_streamed_and_not(api, scripted_server):
    whole = api.chat(model="scripted", messages=TWO_PLUS_TWO)
    assert (whole.message.thinking, whole.message.content) == (JAPANESE_REASONING, JAPANESE_ANSWER)
    assert whole.done and whole.done_reason == "stop"
    *parts, last = api.chat(model="scripted", messages=TWO_PLUS_TWO, stream=True)
    assert "".join(part.message.thinking or "" for part in parts) == JAPANESE_REASONING
    assert "".join(part.message.content for part in parts) == JAPANESE_ANSWER
    assert not any(part.done for part in parts) and last.done and last.message.content == ""
    # the counts are the turn's own: chat completions counts the same conversation alike
    usage = scripted_server.client().chat.completions.create(model="scripted", messages=TWO_PLUS_TWO).usage
    for reply in (whole, last):
        assert (reply.prompt_eval_count, reply.eval_count) == (usage.prompt_tokens, usage.completion_tokens)
        assert reply.total_duration >= reply.load_duration + reply.prompt_eval_duration + reply.eval_duration
        assert reply.prompt_eval_duration > 0 and reply.eval_duration > 0


def test_think_is_the_effort_and_false_skips_the_reasoning(api):
    for think, effort in ((True, "medium"), ("low", "low"), ("medium", "medium"), ("high", "high"), ("max", "high"),
                          (False, "low")):
        assert api.chat(model="scripted", messages=EFFORT, think=think).message.content == f"effort={effort}"
    assert api.chat(model="scripted", messages=TWO_PLUS_TWO, think=False).message.thinking is None
    assert not any(part.thinking for part in api.generate(model="scripted", prompt="What is 2+2?", think=False,
                                                           stream=True))


def test_a_tool_round_trip(api):
    messages = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    (call_chunk,) = [part for part in api.chat(model="scripted", messages=messages, tools=[get_weather], stream=True)
                     if part.message.tool_calls]
    (call,) = call_chunk.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == json.loads(TOOL_ARGUMENTS)
    first = api.chat(model="scripted", messages=messages, tools=[get_weather])
    assert first.message.thinking == "I should call the weather tool." and first.done_reason == "stop"
    assert [c.function.arguments for c in first.message.tool_calls] == [json.loads(TOOL_ARGUMENTS)]
    messages += [first.message, {"role": "tool", "content": get_weather("Tokyo", "celsius", ""),
                                 "tool_name": "get_weather"}]
    answer = api.chat(model="scripted", messages=messages, tools=[get_weather])
    assert answer.message.content == TOOL_ANSWER and not answer.message.tool_calls


def test_format_a_schema_or_json(api):
    reply = api.chat(model="scripted", messages=[{"role": "user", "content": "Weather as JSON"}], format=WEATHER_SCHEMA)
    assert json.loads(reply.message.content) == json.loads(WEATHER_JSON)
    assert api.generate(model="scripted", prompt="Weather as JSON", format="json").response == WEATHER_JSON


def test_generate_with_a_system_prompt_and_raw(api):
    *parts, last = api.generate(model="scripted", prompt="What is 2+2?", stream=True)
    assert "".join(part.response for part in parts) == JAPANESE_ANSWER
    assert "".join(part.thinking or "" for part in parts) == JAPANESE_REASONING
    assert last.done and last.done_reason == "stop" and last.eval_count > 0
    assert api.generate(model="scripted", prompt="Ahoy", system="Speak like a pirate.").response == \
        "Arr, instructions received."
    raw = api.generate(model="scripted", prompt="<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant",
                       raw=True)
    assert raw.response == thought(JAPANESE_REASONING, JAPANESE_ANSWER).removesuffix("<|return|>")


def test_list_show_and_ps(api):
    (listed,) = [m for m in api.list().models if m.model == "scripted"]
    assert listed.size > 0 and len(listed.digest) == 64 and listed.details.format == "safetensors"
    shown = api.show("scripted:latest")  # Ollama's clients add the tag
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.modelinfo["scripted.context_length"] == 4096 and "harmony" in shown.template
    api.chat(model="scripted", messages=[], keep_alive=1e300)  # kept longer than any date can say
    (running,) = [m for m in api.ps().models if m.model == "scripted"]
    assert running.expires_at.year > 2300  # Ollama's way of saying "never"
    api.chat(model="scripted", messages=[], keep_alive=-1)  # loaded, for good (whatever earlier tests set)
    (running,) = [m for m in api.ps().models if m.model == "scripted"]
    assert running.context_length == 4096 and running.digest == listed.digest
    assert running.expires_at.year > 2300


def test_errors_come_in_ollamas_shape(api, scripted_server):
    for call, status, words in [
        (lambda: api.embed(model="scripted", input="x"), 400, "embeddings are not supported"),
        (lambda: api.show("nope"), 404, "model 'nope' not found"),
        (lambda: api.chat(model="scripted", messages=[{"role": "user", "content": "?", "images": [b"\x89PNG"]}]),
         400, "images are not supported"),
        (lambda: api.generate(model="scripted", prompt="hi", context=[1, 2]), 400, "context is not supported"),
        # an error after the stream began: its last line
        (lambda: list(api.chat(model="scripted", messages=[{"role": "user", "content": "Weather as JSON"}],
                               format=WEATHER_SCHEMA, options={"num_predict": 12}, stream=True)), -1, "token limit"),
    ]:
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == status and words in refused.value.error, refused.value
    bad = httpx.post(f"{scripted_server.url}/api/chat", json={"messages": 5})
    assert bad.status_code == 400 and list(bad.json()) == ["error"]
    # Ollama reads any body as JSON: its own examples are `curl -d '{...}'` (form data, says curl)
    curl = httpx.post(f"{scripted_server.url}/api/chat", content=json.dumps({"messages": EFFORT, "stream": False}),
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert curl.json()["message"]["content"] == "effort=medium"
    assert httpx.head(f"{scripted_server.url}/").status_code == 200  # how Ollama's CLI checks a server
    assert httpx.get(f"{scripted_server.url}/api/version").json()["version"]


def test_show_counts_a_gpt_oss_models_parameters(demo_server):
    shown = ollama.Client(host=demo_server.url).show("demo")
    weights = sum(array.size for path in built_demo_dir().glob("*.safetensors") for array in mx.load(str(path)).values())
    assert shown.modelinfo["general.parameter_count"] == weights
    assert (shown.details.family, shown.details.quantization_level) == ("gptoss", "BF16")


# ---- Ollama's port (the session's scripted server listens on a second one) ---------------------------

def test_the_second_port_answers_as_ollama(scripted_server):
    assert httpx.get(f"{scripted_server.ollama_url}/").text == "Ollama is running"
    assert "<html" in httpx.get(f"{scripted_server.url}/").text.lower()  # the main port keeps the chat page
    api = ollama.Client(host=scripted_server.ollama_url)
    assert api.generate(model="scripted", keep_alive=0).done_reason == "unload"
    assert api.ps().models == []
    reply = api.chat(model="scripted", messages=TWO_PLUS_TWO, keep_alive="10m")
    assert reply.message.content == JAPANESE_ANSWER and reply.load_duration > 0  # it waited for the load
    (running,) = api.ps().models
    left = running.expires_at - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=9) < left <= datetime.timedelta(minutes=10)
    assert api.chat(model="scripted", messages=[], keep_alive=-1).done_reason == "load"  # loaded for good again


JS_CHAT = Path(__file__).resolve().parent / "data" / "ollama" / "chat.cjs"


def ollama_npm(cache_dir: Path) -> Path:
    """A node_modules folder holding the `ollama` npm library: SWALLOW_TEST_NODE_MODULES when it has
    it, else one installed once into the test cache (skipped, saying why, when that can't be done)."""
    given = Path(os.environ.get("SWALLOW_TEST_NODE_MODULES", "/nonexistent"))
    if (given / "ollama" / "package.json").is_file():
        return given
    where = cache_dir / "npm-ollama"
    if not (where / "node_modules" / "ollama" / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: the ollama JavaScript library can't be installed")
        installed = subprocess.run([npm, "install", "--prefix", str(where), "--no-audit", "--no-fund", "ollama@^0.6"],
                                   capture_output=True, text=True, timeout=300, check=False)
        if installed.returncode != 0:
            pytest.skip(f"npm could not install the ollama library: {installed.stderr[-500:]}")
    return where / "node_modules"


def test_ollamas_javascript_library(scripted_server, cache_dir):
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the ollama JavaScript library can't be run")
    modules = ollama_npm(cache_dir)
    ran = subprocess.run(["node", str(JS_CHAT), scripted_server.ollama_url], capture_output=True, text=True,
                         timeout=60, check=False, env={**os.environ, "NODE_PATH": str(modules)})
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout) == {"content": JAPANESE_ANSWER, "thinking": JAPANESE_REASONING, "done_reason": "stop"}
