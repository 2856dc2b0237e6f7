"""python -m bench.tool_loop: a tool round trip run by the server's loop, next to the same one run by a client.

    python -m bench.tool_loop                          # a 2,000-token system prompt, 10 rounds each, ~1 min
    python -m bench.tool_loop --prefix-tokens 8000 --repeat 10

One swallow-server on a scripted model (models/scripted.py: replies written in advance, so both
sides generate exactly the same tokens and the model's own cost is nearly nothing), and the MCP
server tests/mcp_server.py over stdio. Each round asks a new question under the same system prompt;
the reply calls the tool `shout`, then answers:

- server-run: chat completions with the MCP server on; the server runs the call inside the turn
  (server/turn/loop.py) and the model goes on from the prompt cache;
- client-run: chat completions with a function tool `shout`; the client gets the call, runs the same
  MCP tool itself (its own MCP client, same server program), and sends the whole conversation back
  with the result, which the server renders and reads again.

Both stream. Reported per side, the best of the rounds (and their median): the whole round trip; the tool's own time;
the gap from the call's last token to the first token after the result, less the tool's time (what
the round trip costs beyond the tool: for the client, ending the stream, sending the conversation
back, the server reading, rendering and admitting it; for the server's loop, rendering the tool
message and submitting the next round); the prompt tokens the server read (its rounds' prompts, or
the client's two requests), and those of them it had to compute (not taken from the prompt cache).
"""

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from mcp import Client, StdioServerParameters

from bench import system

TEST_SERVER = system.ROOT / "tests" / "mcp_server.py"
ARGUMENTS = '{"text": "round trip"}'
ANSWER = "<|channel|>analysis<|message|>It shouted back.<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>"


def call(recipient: str) -> str:
    return ("<|channel|>analysis<|message|>I will shout it.<|end|>"
            f"<|start|>assistant to={recipient}<|channel|>commentary <|constrain|>json<|message|>{ARGUMENTS}<|call|>")


SCRIPTS = {"Server-run round": [call("bench.shout"), ANSWER], "Client-run round": [call("functions.shout"), ANSWER]}
SHOUT = {"type": "function", "function": {"name": "shout", "description": "Return the text in capital letters.",
                                          "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                                         "required": ["text"]}}}


class SwallowWithTools(system.Swallow):
    config = ""

    def command(self, model: Path) -> list:
        return [*super().command(model), "--trust-remote-code", "--config", self.config]


def build(directory: Path, prefix_tokens: int) -> tuple[Path, Path, str]:
    """(the scripted model, a config with the MCP server, a system prompt of about prefix_tokens)."""
    from bench.prompts import filler
    from models.scripted import build_scripted_model
    from models.vocab import load_harmony_encoding_offline

    model = build_scripted_model(directory / "model", SCRIPTS, context_length=prefix_tokens + 4096)
    config = directory / "config.toml"
    config.write_text(f'[[mcp_servers]]\nname = "bench"\ncommand = {json.dumps(sys.executable)}\n'
                      f'args = [{json.dumps(str(TEST_SERVER))}, "stdio"]\nallowed_tools = ["shout"]\n')
    instructions = filler(load_harmony_encoding_offline(model), prefix_tokens, seed=11)
    return model, config, instructions


async def tool_seconds(client: httpx.AsyncClient, url: str) -> float:
    """The server's total time in the bench tool so far (/metrics)."""
    text = (await client.get(f"{url}/metrics")).text
    found = re.search(r'^swallow_tool_call_duration_seconds_sum\{source="bench"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def computed(usage: dict) -> int:
    return usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"]


async def stream(client: httpx.AsyncClient, url: str, body: dict, on_chunk=None) -> tuple[dict, list]:
    """A streamed chat completion: (its message put together, with usage; [(time, delta)] of each chunk)."""
    message, times, usage = {"content": "", "reasoning_content": "", "tool_calls": [], "server_tool_calls": []}, [], None
    async with client.stream("POST", f"{url}/v1/chat/completions",
                             json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                delta = choice["delta"]
                times.append((time.perf_counter(), delta))
                message["content"] += delta.get("content") or ""
                message["reasoning_content"] += delta.get("reasoning_content") or ""
                for part in delta.get("tool_calls", []):
                    if part.get("id"):
                        message["tool_calls"].append({"id": part["id"], "type": "function",
                                                      "function": {"name": part["function"]["name"], "arguments": ""}})
                    message["tool_calls"][part["index"]]["function"]["arguments"] += part["function"].get("arguments", "")
                for part in delta.get("server_tool_calls", []):
                    if "output" in part:
                        message["server_tool_calls"].append(part)
    return {**message, "usage": usage}, times


def generated(delta: dict) -> bool:
    """A chunk that carries generated text (not the first role chunk, not the tool lines)."""
    text = delta.get("content") or delta.get("reasoning_content") or ""
    return bool(text or delta.get("tool_calls")) and not text.startswith(("\n[tool call]", "[tool result]"))


async def server_run(client: httpx.AsyncClient, url: str, instructions: str, n: int) -> dict:
    before = await tool_seconds(client, url)
    started = time.perf_counter()
    message, times = await stream(client, url, {
        "messages": [{"role": "system", "content": instructions},
                     {"role": "user", "content": f"Server-run round {n}: shout it."}],
        "tools": [{"type": "mcp", "server_label": "bench"}]})
    total = time.perf_counter() - started
    assert message["content"] == "Done." and message["server_tool_calls"][0]["output"] == "ROUND TRIP", message
    tool = await tool_seconds(client, url) - before
    # the gap: from the call's last token to the first token after the tool's result
    result_at = next(i for i, (_, d) in enumerate(times) if "output" in str(d.get("server_tool_calls")))
    last_call = max(t for t, d in times[:result_at] if d.get("server_tool_calls") or generated(d))
    first_after = next(t for t, d in times[result_at + 1:] if generated(d))
    return {"total": total, "tool": tool, "gap": first_after - last_call - tool,
            "computed": computed(message["usage"]), "prompt": message["usage"]["prompt_tokens"]}


async def client_run(client: httpx.AsyncClient, url: str, instructions: str, n: int, tools: Client) -> dict:
    messages = [{"role": "system", "content": instructions},
                {"role": "user", "content": f"Client-run round {n}: shout it."}]
    started = time.perf_counter()
    first, first_times = await stream(client, url, {"messages": messages, "tools": [SHOUT]})
    last_call = max(t for t, d in first_times if generated(d))
    (tool_call,) = first["tool_calls"]
    tool_started = time.perf_counter()
    result = await tools.call_tool("shout", json.loads(tool_call["function"]["arguments"]))
    tool = time.perf_counter() - tool_started
    output = result.content[0].text
    messages += [{"role": "assistant", "content": None, "reasoning_content": first["reasoning_content"],
                  "tool_calls": first["tool_calls"]},
                 {"role": "tool", "tool_call_id": tool_call["id"], "content": output}]
    second, second_times = await stream(client, url, {"messages": messages, "tools": [SHOUT]})
    total = time.perf_counter() - started
    assert second["content"] == "Done." and output == "ROUND TRIP", second
    first_after = next(t for t, d in second_times if generated(d))
    return {"total": total, "tool": tool, "gap": first_after - last_call - tool,
            "computed": computed(first["usage"]) + computed(second["usage"]),
            "prompt": first["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"]}


async def measure(url: str, instructions: str, repeat: int) -> dict:
    results = {"server": [], "client": []}
    # the client's own MCP client: the same server program, over stdio
    async with Client(StdioServerParameters(command=sys.executable, args=[str(TEST_SERVER), "stdio"])) as tools, \
            httpx.AsyncClient(timeout=120) as client:
        await server_run(client, url, instructions, 0)  # warm: the MCP server started, the prefix cached
        await client_run(client, url, instructions, 0, tools)
        for n in range(1, repeat + 1):
            results["server"].append(await server_run(client, url, instructions, n))
            results["client"].append(await client_run(client, url, instructions, n, tools))
    return results


def best(rounds: list[dict], key: str, digits: int = 0) -> str:
    """The best (lowest) of the rounds, and their median: on a busy machine the best is the cost itself."""
    values = [r[key] * 1000 for r in rounds]
    return f"{min(values):.{digits}f} ms ({statistics.median(values):.{digits}f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tool_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix-tokens", type=int, default=2000, help="the system prompt's length (default 2000)")
    p.add_argument("--repeat", type=int, default=10, help="rounds of each (default 10)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="swallow-bench-tool-loop-"))
    model, config, instructions = build(work, args.prefix_tokens)
    kind = type("SwallowBench", (SwallowWithTools,), {"config": str(config)})
    server = kind(model, system.find_openblas(), work)
    try:
        server.wait_ready()
        results = asyncio.run(measure(server.url, instructions, args.repeat))
    finally:
        server.stop()
    print(f"\nA tool round trip under a {args.prefix_tokens}-token system prompt, {args.repeat} rounds each, the best "
          "(and the median); scripted model: the figures are the server's and the client's own costs, not the model's\n")
    print("| side | round trip | tool | from the call's last token to the next one, less the tool | "
          "prompt tokens read | computed |")
    print("|---|---|---|---|---|---|")
    for side, label in (("server", "server-run (its loop)"), ("client", "client-run (chat completions, twice)")):
        rounds = results[side]
        print(f"| {label} | {best(rounds, 'total')} | {best(rounds, 'tool', 1)} | {best(rounds, 'gap')} | "
              f"{statistics.median(r['prompt'] for r in rounds):.0f} | "
              f"{statistics.median(r['computed'] for r in rounds):.0f} |")
    server_gap = min(r["gap"] for r in results["server"])
    client_gap = min(r["gap"] for r in results["client"])
    print(f"\nTarget: the server's loop costs less than the client's round trip: "
          f"{'met' if server_gap < client_gap else 'NOT met'} ({server_gap * 1000:.0f} ms vs {client_gap * 1000:.0f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
