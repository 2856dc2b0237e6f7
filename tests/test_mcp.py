"""Tools the server runs itself: real MCP servers behind the tool loop, on every API.

One server for the file, with four MCP servers: the reference `server-filesystem` and
`server-everything` from npm over stdio, and tests/mcp_server.py (the `mcp` SDK) both over stdio
(`tools`: it fails, hangs, floods and crashes on demand) and over streamable HTTP (`web`). The
scripted model calls their tools (tests/scripts.py); where a tool's result holds a trigger of its
own, the reply after it is that trigger's, so the answer proves the result reached the model.
"""

import asyncio
import json
import re
import time

import anthropic
import httpx
import pytest
from mcp import Client

from tests.mcp_setup import NpmMissing, http_mcp_server, npm_servers, stdio_test_server, write_config
from tests.scripts import (
    CRASH_ANSWER,
    FLOOD_ANSWER,
    MISSING_TOOL_ANSWER,
    NOTE_ANSWER,
    NOTE_TEXT,
    SHOUT_ANSWER,
    SLOW_ANSWER,
    SUM_ANSWER,
    TOOL_FAILED_ANSWER,
)
from tests.test_web_page import Page, browser  # noqa: F401, F811 (the browser fixture)

pytestmark = pytest.mark.slow  # a server of its own, and MCP servers beside it
TIMEOUT = 6  # tool_timeout of the server under test, seconds
MAX_ROUNDS = 3
MAX_RESULT_KB = 4  # the scripted model's context is 4096 tokens
NOTE = [{"role": "user", "content": "Read the note file."}]


@pytest.fixture(scope="module")
def web_url(tmp_path_factory):
    with http_mcp_server(tmp_path_factory.mktemp("mcp-http") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def server(start_server, scripted_model, cache_dir, tmp_path_factory, web_url):
    try:
        bins = npm_servers(cache_dir)
    except NpmMissing as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("notes")
    (root / "note.txt").write_text(NOTE_TEXT)
    config = write_config(tmp_path_factory.mktemp("config") / "config.toml", [
        {"name": "fs", "command": str(bins["filesystem"]), "args": ["."], "cwd": str(root), "default": True},
        {"name": "everything", "command": str(bins["everything"]), "args": ["stdio"],
         "allowed_tools": ["echo", "get-sum"]},
        stdio_test_server("tools"),
        {"name": "web", "url": web_url},
    ], tools={"tool_max_rounds": MAX_ROUNDS, "tool_timeout": TIMEOUT, "tool_max_result_kb": MAX_RESULT_KB})
    return start_server(["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted",
                         "--config", str(config)])


def chat(server, text: str, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": text}], **body})
    assert response.status_code == 200, response.text
    return response.json()


def with_server(label: str) -> dict:
    return {"tools": [{"type": "mcp", "server_label": label}]}


def metric(server, name: str, **labels) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the text format sorts them
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def streamed_chat(server, body: dict) -> tuple[dict, list[dict]]:
    """A streamed chat completion put together: (the message, its usage), and the chunks."""
    chunks = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=120,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    message = {"content": "", "reasoning_content": "", "server_tool_calls": []}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            message["content"] += delta.get("content") or ""
            message["reasoning_content"] += delta.get("reasoning_content") or ""
            for part in delta.get("server_tool_calls", []):
                calls = message["server_tool_calls"]
                if part["index"] == len(calls):
                    calls.append({**part, "arguments": ""})
                call = calls[part["index"]]
                call["arguments"] += part.get("arguments", "")
                call.update({k: v for k, v in part.items() if k in ("output", "error")})
    return {**message, "usage": chunks[-1]["usage"]}, chunks


def test_chat_completions_runs_the_default_filesystem_server(server):
    """A request that names no server gets those configured with `default = true`: the call and its
    result come in `server_tool_calls` and as lines of the reasoning; the answer follows it."""
    reply = chat(server, "Read the note file.")
    choice = reply["choices"][0]
    message = choice["message"]
    assert message["content"] == NOTE_ANSWER and choice["finish_reason"] == "stop"
    (call,) = message["server_tool_calls"]
    assert call == {"id": call["id"], "type": "mcp", "server": "fs", "name": "read_text_file",
                    "arguments": '{"path": "note.txt"}', "output": NOTE_TEXT, "error": None}
    assert ('[tool call] fs.read_text_file {"path": "note.txt"}\n[tool result] ' + NOTE_TEXT) in message["reasoning_content"]
    assert "tool_calls" not in message  # those stay the client's functions
    both = chat(server, "Read the note file.", n=2)["choices"]  # n > 1: a loop per choice
    assert [c["message"]["content"] for c in both] == [NOTE_ANSWER] * 2
    assert [c["message"]["server_tool_calls"][0]["output"] for c in both] == [NOTE_TEXT] * 2

    # streamed: the same call, built from deltas, and the same answer
    streamed, chunks = streamed_chat(server, {"messages": NOTE})
    assert streamed["content"] == NOTE_ANSWER
    assert [{k: c[k] for k in ("server", "name", "arguments", "output", "error")} for c in streamed["server_tool_calls"]] \
        == [{"server": "fs", "name": "read_text_file", "arguments": '{"path": "note.txt"}', "output": NOTE_TEXT,
             "error": None}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # usage counts both rounds; on this second identical request, everything but the tool's message
    # (and a token or two) came from the prompt cache: the second round continued the first one's cache
    usage = streamed["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (reply["usage"]["prompt_tokens"],
                                                                    reply["usage"]["completion_tokens"])
    assert usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"] < 40


def in_order(wanted: list[str], kinds: list[str]) -> bool:
    """Whether `wanted` occur in `kinds` in this order (others may come between)."""
    rest = iter(kinds)
    return all(kind in rest for kind in wanted)


def test_responses_lists_the_server_and_streams_the_mcp_call(server):
    tools = [{"type": "mcp", "server_label": "everything", "require_approval": "never"}]
    response = server.client().responses.create(model="scripted", input="Add two and three.", tools=tools)
    listed, reasoning, call, message = response.output
    assert listed.type == "mcp_list_tools" and listed.server_label == "everything" and listed.error is None
    assert [t.name for t in listed.tools] == ["echo", "get-sum"]  # the server's allowed_tools
    assert listed.tools[1].input_schema["required"] == ["a", "b"]
    assert reasoning.type == "reasoning"
    assert (call.type, call.server_label, call.name, call.status) == ("mcp_call", "everything", "get-sum", "completed")
    assert json.loads(call.arguments) == {"a": 2, "b": 3} and call.output == "The sum of 2 and 3 is 5." and call.error is None
    assert response.output_text == SUM_ANSWER and response.status == "completed"

    # streamed: the list and the call as they happen, in OpenAI's events
    with server.client().responses.stream(model="scripted", input="Add two and three.", tools=tools) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert in_order(["response.created", "response.output_item.added", "response.mcp_list_tools.in_progress",
                     "response.mcp_list_tools.completed", "response.output_item.done", "response.reasoning_text.done",
                     "response.output_item.added", "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
                     "response.mcp_call_arguments.done", "response.mcp_call.completed", "response.output_item.done",
                     "response.output_text.done", "response.completed"], kinds), kinds
    assert [item.type for item in final.output] == ["mcp_list_tools", "reasoning", "mcp_call", "message"]

    # continued: the stored mcp items come back as input, and the server isn't listed again
    more = server.client().responses.create(model="scripted", input="Thanks.", tools=tools,
                                            previous_response_id=final.id)
    assert [item.type for item in more.output] == ["message"]


def test_messages_shows_mcp_tool_use_and_result_over_streamable_http(server, web_url):
    claude = anthropic.Anthropic(base_url=server.url, api_key="any", max_retries=0)
    ask = {"model": "claude-sonnet-4-5", "max_tokens": 512, "messages": [{"role": "user", "content": "Shout it over HTTP."}],
           # the MCP connector's own shape: a configured server, named with its own URL
           "mcp_servers": [{"type": "url", "name": "web", "url": web_url}], "betas": ["mcp-client-2025-04-04"]}
    message = claude.beta.messages.create(**ask)
    thinking, use, result, text = message.content
    assert (use.type, use.server_name, use.name, use.input) == ("mcp_tool_use", "web", "shout", {"text": "hello over http"})
    assert result.type == "mcp_tool_result" and result.tool_use_id == use.id and result.is_error is False
    assert result.content[0].text == "HELLO OVER HTTP"
    assert text.text == SHOUT_ANSWER and message.stop_reason == "end_turn"

    with claude.beta.messages.stream(**ask) as stream:
        events = list(stream)
        streamed = stream.get_final_message()
    assert [block.type for block in streamed.content] == ["thinking", "mcp_tool_use", "mcp_tool_result", "text"]
    assert streamed.content[1].input == {"text": "hello over http"}  # put together from input_json_delta
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)

    # sent back, the blocks are read back into harmony: the next turn goes on from them
    history = [*ask["messages"], {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
               {"role": "user", "content": "Read the note file."}]
    more = claude.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=history,
                                  extra_body={"tools": [{"type": "mcp_toolset", "mcp_server_name": "fs"}]})
    assert more.content[-1].text == NOTE_ANSWER


def test_a_tool_that_fails_hangs_floods_or_is_missing_is_answered_and_the_model_goes_on(server):
    failed = chat(server, "Use the failing tool.", **with_server("tools"))["choices"][0]["message"]
    assert failed["content"] == TOOL_FAILED_ANSWER
    assert "it failed on purpose: testing" in failed["server_tool_calls"][0]["error"]
    assert "[tool error] " in failed["reasoning_content"]

    started = time.monotonic()
    slow = chat(server, "Wait for the slow tool.", **with_server("tools"))["choices"][0]["message"]
    assert time.monotonic() - started < 60  # the tool would take 120 s
    assert slow["content"] == SLOW_ANSWER
    assert slow["server_tool_calls"][0]["error"] == f"the call took longer than {TIMEOUT} s and was stopped"

    flood = chat(server, "Flood me with text.", **with_server("web"))["choices"][0]["message"]
    assert flood["content"] == FLOOD_ANSWER
    output = flood["server_tool_calls"][0]["output"]
    assert output.startswith("xxxx") and output.endswith(
        f"[cut: the tool returned 10,485,760 bytes; the first {MAX_RESULT_KB * 1024:,} are shown (tool_max_result_kb)]")

    missing = chat(server, "Search the web for swallows.")["choices"][0]["message"]
    assert missing["content"] == MISSING_TOOL_ANSWER
    assert missing["server_tool_calls"][0]["type"] is None
    assert missing["server_tool_calls"][0]["error"] == "browser.search is not available here"

    # a model that keeps calling: told "no more" once, then its reply ends
    looping = chat(server, "Keep calling tools.", **with_server("tools"))["choices"][0]
    calls = looping["message"]["server_tool_calls"]
    assert looping["finish_reason"] == "length" and len(calls) == MAX_ROUNDS + 2
    assert all(call["output"].isdigit() for call in calls[:MAX_ROUNDS])
    assert calls[MAX_ROUNDS]["error"].startswith(f"this reply reached its limit of {MAX_ROUNDS} tool calls")
    assert calls[-1]["error"].startswith("not run: ")

    assert metric(server, "swallow_tool_calls_total", source="tools", outcome="timeout") >= 1
    assert metric(server, "swallow_tool_calls_total", source="tools", outcome="error") >= 1
    assert metric(server, "swallow_tool_calls_total", source="(none)", outcome="unavailable") >= 1
    assert metric(server, "swallow_tool_result_bytes_total", source="web") >= 10 * 2**20


def test_a_server_that_crashes_mid_call_is_restarted(server):
    reply = chat(server, "Crash the tool server.", **with_server("tools"))["choices"][0]["message"]
    before, crash, after = reply["server_tool_calls"]
    assert "went away during the call" in crash["error"]
    assert before["output"].isdigit() and after["output"].isdigit() and before["output"] != after["output"]
    assert reply["content"] == CRASH_ANSWER
    listed = {s["name"]: s for s in httpx.get(f"{server.url}/v1/mcp/servers", timeout=10).json()["data"]}
    assert listed["tools"]["state"] == "ready" and listed["tools"]["restarts"] >= 1
    assert listed["fs"]["default"] is True and "read_text_file" in [t["name"] for t in listed["fs"]["tools"]]
    assert server.health()["mcp_servers"] == {"fs": "ready", "everything": "ready", "tools": "ready", "web": "ready"}


def test_unknown_servers_and_request_urls_are_refused(server):
    unknown = httpx.post(f"{server.url}/v1/chat/completions", timeout=30,
                         json={"messages": NOTE, "tools": [{"type": "mcp", "server_label": "nope"}]})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "tools[0]" and unknown.json()["error"]["code"] == "unknown_mcp_server"
    assert "configured: everything, fs, tools, web" in unknown.json()["error"]["message"]

    by_url = httpx.post(f"{server.url}/v1/responses", timeout=30, json={
        "input": "hi", "tools": [{"type": "mcp", "server_label": "mine", "server_url": "http://127.0.0.1:9/mcp"}]})
    assert by_url.status_code == 400 and by_url.json()["error"]["code"] == "mcp_server_url_not_allowed"

    claude = anthropic.Anthropic(base_url=server.url, api_key="any", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="no MCP server named 'nope'"):
        claude.messages.create(model="m", max_tokens=64, messages=NOTE, extra_body={"mcp_servers": [{"name": "nope"}]})


def ask_web(url: str, tool: str, until=lambda answer: True) -> str:
    """A tool of the web MCP server, called by the test itself (asked again, up to 3 s, until `until`)."""

    async def ask() -> str:
        async with Client(url) as web:
            for _ in range(30):
                answer = (await web.call_tool(tool, {})).content[0].text
                if until(answer):
                    break
                await asyncio.sleep(0.1)
            return answer

    return asyncio.run(ask())


def test_a_client_that_leaves_mid_call_cancels_the_call(server, web_url):
    body = {"messages": [{"role": "user", "content": "Wait for the slow web tool."}], "stream": True,
            **with_server("web")}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if "[tool call] web.hang" in line:  # the call starts: wait until the MCP server runs it, then leave
                assert ask_web(web_url, "calls_in_progress", until=lambda n: n == "1") == "1"
                break
    # left while the MCP server runs the call: well before its time limit, it is cancelled there too
    assert ask_web(web_url, "cancelled_calls", until=lambda n: n != "0") == "1"
    assert ask_web(web_url, "calls_in_progress") == "0"
    assert metric(server, "swallow_tool_calls_total", source="web", outcome="cancelled") == 1
    assert server.health()["running"] == 0  # and no round follows


def test_the_chat_page_shows_each_call_folded_in_the_reply(browser, server):  # noqa: F811
    page = Page(browser, server.url)
    page.settings()
    page.wait(lambda: page.el("#tools-setting").is_displayed(), what="the MCP servers in the settings")
    ticked = {box.get_attribute("value"): box.is_selected() for box in page.all("#tool-servers input")}
    assert ticked == {"fs": True, "everything": False, "tools": False, "web": False}  # `default = true`
    page.send("Read the note file.")
    reply = page.wait_for_reply()
    assert reply.find_element("css selector", ".answer").text == NOTE_ANSWER
    (call,) = reply.find_elements("css selector", ".tool-call")
    assert call.get_attribute("open") is None and call.text == "🔧 fs.read_text_file"  # folded
    call.find_element("css selector", "summary").click()
    assert call.find_element("css selector", "pre.arguments").text == '{"path": "note.txt"}'
    assert call.find_element("css selector", "pre.result").text == NOTE_TEXT


def test_a_server_named_by_url_is_its_requests_own_when_allowed(web_url):
    """With mcp_request_servers on, a request's URL gets a connection of its own, stopped after it."""
    from server.config import Settings
    from server.tools.base import CallLimits
    from server.tools.toolbox import ServerAsk, Toolbox
    from server.turn.loop import ServerCall, run_call

    async def use_it():
        toolbox = Toolbox(Settings(mcp_request_servers=True))
        toolset = await toolbox.select((ServerAsk("mine", allowed_tools=("shout",), url=web_url),))
        call = ServerCall("mine.shout", "commentary", arguments='{"text": "by url"}')
        await run_call(call, toolset, CallLimits(timeout=10, max_bytes=1000))
        (listing,) = toolset.listings
        await toolset.close()
        return [t.name for t in listing.tools], call.output, listing.source.state

    assert asyncio.run(use_it()) == (["shout"], "BY URL", "stopped")
