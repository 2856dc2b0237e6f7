"""python -m bench.overhead: what a server's own work costs per token and per turn, on the near-free model.

    python -m bench.overhead                   # ~3 min on 2 cores
    python -m bench.overhead --quick
    python -m bench.overhead --skip-mlx-server --rounds 1

On the near-free model (bench/nearfree_arch.py: the next token is a fixed harmony reply chosen by a
few MLX ops, so a step costs what mlx-lm's own sampling costs and little more) the server's own
work is a large share of every token, as it is on a fast Mac with a real model. In one run, for
swallow-server, raw mlx-lm (generate_step / BatchGenerator in a process of its own) and
mlx_lm.server:

- **server CPU per token**: the CPU time (user + system, all threads) the serving process used
  while generating, over the tokens it generated; one stream and sixteen. It does not depend on
  how busy the benchmark's own client keeps the machine (wall-clock rates do, on 2 cores);
- **decode, one stream** (tok/s), as in `python -m bench`;
- **turn cost**: an agent's conversation (a long system prompt with tools, then turns that each
  add the previous reply, a tool result and a user message): the warm turn's time to first token
  at the last turn (~6k tokens cached by default), and a turn that continues exactly where the
  last reply ended (the reply's tool call, then its result: nothing in between is re-rendered).

Every system gets the same token ids (raw mlx-lm and mlx_lm.server the harmony rendering that
swallow-server makes of the messages), greedy. Each figure is the best of its rounds.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import client, models, prompts, report, runs, system
from bench.prompts import filler

TOOLS = [
    {"type": "function", "function": {
        "name": models.TOOL, "description": "Read a text file of the workspace.",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "Path relative to the workspace root."},
            "start_line": {"type": "integer"}, "end_line": {"type": "integer"}},
            "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "run_command", "description": "Run a shell command in the workspace and return its output.",
        "parameters": {"type": "object", "properties": {
            "command": {"type": "string"}, "timeout_s": {"type": "integer"}}, "required": ["command"]}}},
    {"type": "function", "function": {
        "name": "apply_patch", "description": "Apply a unified diff to the workspace.",
        "parameters": {"type": "object", "properties": {"patch": {"type": "string"}}, "required": ["patch"]}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search the workspace for a regular expression.",
        "parameters": {"type": "object", "properties": {
            "pattern": {"type": "string"}, "glob": {"type": "string"}}, "required": ["pattern"]}}},
]
ANALYSIS = "".join(" " + w for w in models.CYCLE_WORDS[: models.ANALYSIS_WORDS])  # the near-free model's


@dataclass
class Plan:
    decode_tokens: int = 1000  # one stream
    stream_tokens: int = 200  # each of 16 streams
    streams: int = 16
    system_tokens: int = 5000  # the agent's system prompt
    tool_result_tokens: int = 250
    agent_turns: int = 4  # warm turns after the first
    rounds: int = 3
    turn_reply_tokens: int = 64  # the agent reply is ~40 tokens and ends in <|call|>


@dataclass
class AgentConversation:
    """The messages of each request of one agent conversation, and their renderings."""
    turns: list  # [messages] per agent turn: turn 0 is cold, the rest warm
    continued: list  # the messages of a turn that goes on from the last reply (its call's result)
    rendered: list = field(default_factory=list)  # prompts.Request per turn, then the continued one


def agent_conversation(renderer: prompts.Renderer, plan: Plan, nonce: str) -> AgentConversation:
    enc = renderer.encoding
    system_text = f"{nonce} You are a coding agent working in a repository. " + filler(enc, plan.system_tokens, seed=11)
    messages = [{"role": "system", "content": system_text},
                {"role": "user", "content": "Read notes.txt and fix the failing test it describes."}]
    turns = [list(messages)]

    def reply(k: int) -> list:
        call = {"id": f"call_{k}", "type": "function",
                "function": {"name": models.TOOL, "arguments": models.TOOL_ARGUMENTS}}
        return [{"role": "assistant", "content": None, "reasoning_content": ANALYSIS, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": f"call_{k}",
                 "content": filler(enc, plan.tool_result_tokens, seed=100 + k)}]

    for k in range(plan.agent_turns):
        messages = messages + reply(k) + [{"role": "user", "content": f"Good. Now step {k + 2}: go on."}]
        turns.append(messages)
    continued = messages + reply(plan.agent_turns)
    conversation = AgentConversation(turns, continued)
    conversation.rendered = [renderer.request(m, TOOLS) for m in [*turns, continued]]
    return conversation


def continues_exactly(conversation: AgentConversation, reply_tokens: list) -> bool:
    """Whether the continued turn's prompt is the last turn's prompt and reply, token for token."""
    last, continued = conversation.rendered[-2].tokens, conversation.rendered[-1].tokens
    return continued[: len(last) + len(reply_tokens)] == last + reply_tokens


# ---- each system's measurements --------------------------------------------------------

def _cpu_per_token(s, run) -> tuple:
    """(what run() returned, CPU ms per generated token of the serving process); run() returns
    (figures, tokens generated)."""
    before = s.cpu_seconds()
    figures, tokens = run()
    return figures, 1000 * (s.cpu_seconds() - before) / max(1, tokens)


def decode(s, workload: prompts.Workload, n: int) -> dict:
    if isinstance(s, runs.RawSystem):
        def run():
            r = s.worker.call("decode", prompt=workload.decode.tokens, n=n)
            return r["decode_tps"], r["completion_tokens"]
    else:
        def run():
            r = client.run_one(s.request(workload.decode, n))
            return r.decode_tps, r.completion_tokens
    tps, cpu = _cpu_per_token(s, run)
    return {"decode_tps": tps, "cpu_ms_per_token_1": cpu}


def streams(s, workload: prompts.Workload, count: int, n: int) -> dict:
    requests = workload.streams[:count]
    if isinstance(s, runs.RawSystem):
        def run():
            r = s.worker.call("streams", prompts=[q.tokens for q in requests], n=n)
            return r["aggregate_tps"], r["completion_tokens"]
    else:
        def run():
            r = client.run_streams([s.request(q, n) for q in requests])
            return r.aggregate_tps, r.completion_tokens
    tps, cpu = _cpu_per_token(s, run)
    return {f"streams_{count}": tps, f"cpu_ms_per_token_{count}": cpu}


def agent_turns(s, conversation: AgentConversation, plan: Plan) -> dict:
    """Times to first token of the conversation's turns, and of the continued turn."""
    rendered = conversation.rendered
    if isinstance(s, runs.RawSystem):
        r = s.worker.call("turns", prompts=[q.tokens for q in rendered], reply_tokens=plan.turn_reply_tokens)
        ttfts = [t["ttft_s"] for t in r["turns"]]
        cached = [t["cached_tokens"] for t in r["turns"]]
    else:
        ttfts, cached = [], []
        url, n = s.server.url, plan.turn_reply_tokens
        for i, messages in enumerate([*conversation.turns, conversation.continued]):
            if s.chat:
                r = client.run_one(lambda c, m=messages: client.chat_stream(c, url, m, n, TOOLS))
            else:
                r = client.run_one(lambda c, t=rendered[i].text: client.completion_stream(c, url, t, n))
            if s.chat and (r.tool_calls != [[models.TOOL, models.TOOL_ARGUMENTS]] or "".join(r.reasoning) != ANALYSIS):
                raise RuntimeError(f"unexpected agent reply: reasoning {''.join(r.reasoning)!r}, calls {r.tool_calls}")
            ttfts.append(r.ttft_s)
            cached.append(r.cached_tokens)
    return {"agent_ttft_s": ttfts[-2], "continued_ttft_s": ttfts[-1], "agent_turn_ttfts": ttfts[1:-1],
            "cold_ttft_s": ttfts[0], "agent_cached_tokens": cached[-2], "continued_cached_tokens": cached[-1],
            "agent_prompt_tokens": len(rendered[-2].tokens), "continued_prompt_tokens": len(rendered[-1].tokens)}


def measure(started: dict, plan: Plan, workload: prompts.Workload, renderer: prompts.Renderer,
            errors: dict) -> dict:
    """started: key -> a started runs.HttpSystem / runs.RawSystem (stopped here). key -> figures,
    each the best of the rounds (every round's values under "samples")."""
    results = {key: {"samples": {}} for key in started}
    live = dict(started)
    lower_is_better = ("cpu_ms", "ttft")

    def record(key: str, figures: dict) -> None:
        mine = results[key]
        for name, value in figures.items():
            if not isinstance(value, (int, float)):
                mine[name] = value
                continue
            mine["samples"].setdefault(name, []).append(value)
            values = [v for v in mine["samples"][name] if v == v]
            best = min if any(t in name for t in lower_is_better) else max
            mine[name] = best(values) if values else float("nan")

    def each(step: str, fn) -> None:
        for key, s in list(live.items()):
            try:
                record(key, fn(key, s))
            except Exception as e:
                errors[key] = f"{step}: {type(e).__name__}: {e}".splitlines()[0]
                runs.log(f"{s.name} FAILED at {step}: {type(e).__name__}: {e}\n--- its log ---\n{s.log_tail()}")
                live.pop(key)
                s.stop()

    def ready(key, s):
        s.wait_ready()
        runs.log(f"{s.name} ready")
        return {}

    try:
        each("start", ready)
        for round in range(plan.rounds):
            each("decode", lambda key, s: decode(s, workload, plan.decode_tokens))
            each(f"{plan.streams} streams", lambda key, s: streams(s, workload, plan.streams, plan.stream_tokens))
            conversations = {key: agent_conversation(renderer, plan, f"Session {7100 + 10 * i + round}.")
                             for i, key in enumerate(live)}
            each("agent turns", lambda key, s: agent_turns(s, conversations[key], plan))
            runs.log(f"round {round + 1}: " + "; ".join(
                f"{s.name} {_round_summary(results[k], plan.streams)}" for k, s in live.items()))
        for key, s in live.items():
            results[key]["peak_rss_mb"] = s.memory()
    finally:
        for s in live.values():
            s.stop()
    return results


def _round_summary(r: dict, streams: int) -> str:
    def last(name):
        values = r["samples"].get(name) or [float("nan")]
        return values[-1]
    return (f"{last('decode_tps'):.0f} tok/s, CPU {last('cpu_ms_per_token_1'):.2f} / "
            f"{last(f'cpu_ms_per_token_{streams}'):.2f} ms a token (1 / {streams} streams), agent turn "
            f"{1000 * last('agent_ttft_s'):.0f} ms, continued {1000 * last('continued_ttft_s'):.0f} ms")


# ---- the report -------------------------------------------------------------------------

def rows(r: dict, streams: int = 16) -> list:
    s, w, m = r.get("swallow", {}), r.get("raw", {}), r.get("mlx", {})
    ms = lambda x: None if x is None else 1000 * x  # noqa: E731

    def over(a, b):
        return "" if a is None or b is None or math.isnan(a) or math.isnan(b) else f"{a - b:+.3f} ms"

    out = [report.metric_row("decode, 1 stream (tok/s)", s.get("decode_tps"), w.get("decode_tps"), m.get("decode_tps"))]
    for n in (1, streams):
        name = f"cpu_ms_per_token_{n}"
        out.append((f"server CPU per token, {n} stream{'s' if n > 1 else ''} (ms)",
                    report._num(s.get(name), digits=3), report._num(w.get(name), digits=3),
                    report._num(m.get(name), digits=3), over(s.get(name), w.get(name)), over(s.get(name), m.get(name))))
    out.append(report.metric_row(f"aggregate, {streams} streams (tok/s)", s.get(f"streams_{streams}"),
                                 w.get(f"streams_{streams}"), m.get(f"streams_{streams}")))
    cached = s.get("agent_cached_tokens") or w.get("agent_cached_tokens")
    out.append(report.metric_row(f"agent turn, TTFT (ms; {cached} cached of {s.get('agent_prompt_tokens')})",
                                 ms(s.get("agent_ttft_s")), ms(w.get("agent_ttft_s")), ms(m.get("agent_ttft_s"))))
    out.append(report.metric_row("continued turn, TTFT (ms)", ms(s.get("continued_ttft_s")),
                                 ms(w.get("continued_ttft_s")), ms(m.get("continued_ttft_s"))))
    out.append(report.metric_row("cold turn 1, TTFT (ms)", ms(s.get("cold_ttft_s")), ms(w.get("cold_ttft_s")),
                                 ms(m.get("cold_ttft_s"))))
    return out


def targets(r: dict, streams: int = 16) -> list:
    s, w, m = r.get("swallow", {}), r.get("raw", {}), r.get("mlx", {})
    out = []

    def check(name, value, ok, text):
        out.append((name, text if value is not None else "not measured", None if value is None else ok))

    for n in (1, streams):
        key = f"cpu_ms_per_token_{n}"
        a, b = s.get(key), w.get(key)
        x = None if a is None or b is None else a - b
        rounds = report._rounds([("swallow", report.spread(s, key, " ms")), ("raw", report.spread(w, key, " ms"))])
        check(f"server CPU per token ≤ raw + 0.15 ms, {n} stream{'s' if n > 1 else ''}", x,
              x is not None and x <= 0.15, f"{x:+.3f} ms ({a:.3f} vs {b:.3f}){rounds}" if x is not None else "")
    x = report.ratio(s.get("decode_tps"), w.get("decode_tps"))
    check("near-free decode ≥ 0.95× raw generate_step", x, x is not None and x >= 0.95, f"{x:.3f}×" + report._rounds(
        [("swallow", report.spread(s, "decode_tps")), ("raw", report.spread(w, "decode_tps"))]) if x else "")
    x = report.ratio(s.get("decode_tps"), m.get("decode_tps"))
    check("near-free decode ≥ mlx_lm.server", x, x is not None and x >= 1.0, f"{x:.3f}×" + report._rounds(
        [("swallow", report.spread(s, "decode_tps")), ("mlx_lm.server", report.spread(m, "decode_tps"))]) if x else "")
    for key, label in (("agent_ttft_s", "agent turn"), ("continued_ttft_s", "continued turn")):
        a, b = s.get(key), m.get(key)
        x = report.ratio(a, b)
        check(f"{label} TTFT ≤ mlx_lm.server's", x, x is not None and x <= 1.0,
              f"{1000 * a:.1f} vs {1000 * b:.1f} ms ({x:.2f}×)" if x else "")
    a = s.get("agent_ttft_s")
    rounds = sorted(1000 * v for v in s.get("samples", {}).get("agent_ttft_s", []) if v == v)
    spread = f" (rounds: {rounds[0]:.1f}–{rounds[-1]:.1f} ms)" if len(rounds) > 1 else ""
    check(f"agent turn TTFT ≤ 40 ms ({s.get('agent_cached_tokens')} tokens cached)", a, a is not None and a <= 0.040,
          f"{1000 * a:.1f} ms{spread}" if a else "")
    return out


def notes(r: dict) -> list:
    lines = []
    for key, name in (("swallow", "swallow-server"), ("mlx", "mlx_lm.server")):
        f = r.get(key, {})
        if "agent_cached_tokens" in f:
            lines.append(f"{name} found {f['agent_cached_tokens']} of {f['agent_prompt_tokens']} prompt tokens "
                         f"cached at the agent turn, {f['continued_cached_tokens']} of {f['continued_prompt_tokens']} "
                         "at the continued one.")
    return lines


def start_systems(model: models.BenchModel, workload, log_dir: Path, skip_mlx: bool, skip_raw: bool,
                  errors: dict) -> dict:
    started = {}

    def start(key, make):
        try:
            started[key] = make()
        except Exception as e:
            errors[key] = f"start: {e}"

    # OpenBLAS changes nothing here (no matmuls); each process keeps mlx's own BLAS.
    start("swallow", lambda: runs.HttpSystem(system.Swallow, model.path, None, log_dir, workload))
    if not skip_raw:
        start("raw", lambda: runs.RawSystem(model.path, "default", None, log_dir, workload))
    if not skip_mlx:
        start("mlx", lambda: runs.HttpSystem(system.MlxLmServer, model.path, None, log_dir, workload))
    return started


def run(plan: Plan, log_dir: Path, skip_mlx: bool = False, skip_raw: bool = False) -> tuple[dict, dict]:
    """(results, errors) of the near-free section."""
    model = models.near_free_model()
    renderer = prompts.Renderer(model.path)
    workload = prompts.build(renderer, 200, [], rounds=0)
    errors = {}
    started = start_systems(model, workload, log_dir, skip_mlx, skip_raw, errors)
    results = measure(started, plan, workload, renderer, errors)
    return results, errors


def print_section(results: dict, errors: dict, plan: Plan) -> None:
    print(report.table(rows(results, plan.streams), report.COLUMNS))
    print(f"\nNear-free model: one stream decodes {plan.decode_tokens} tokens, {plan.streams} streams "
          f"{plan.stream_tokens} each; server CPU per token = the serving process's CPU time (user + system, all "
          "threads) while generating, over the tokens it generated (raw mlx-lm: its own process around "
          "generate_step / BatchGenerator); the 'over' columns are ms added per token. Agent conversation: a "
          f"~{plan.system_tokens}-token system prompt with {len(TOOLS)} tools, then {plan.agent_turns} warm turns, "
          f"each adding the reply's tool call, a ~{plan.tool_result_tokens}-token tool result and a user message; the "
          "continued turn adds only the last call's result. TTFT = time to the first visible reasoning text.")
    for line in notes(results):
        print(line)
    for key, why in errors.items():
        print(f"FAILED near-free {key}: {why}")
    print("\nTargets (near-free model):")
    print(report.format_targets(targets(results, plan.streams)))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer tokens and rounds (~1 min)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None, help="one stream's decode length (default 1000)")
    p.add_argument("--stream-tokens", type=int, default=None, help="tokens per stream of 16 (default 200)")
    p.add_argument("--system-tokens", type=int, default=None, help="the agent's system prompt (default 5000)")
    p.add_argument("--agent-turns", type=int, default=None, help="warm agent turns (default 4)")
    p.add_argument("--streams", type=int, default=None, help="the many-streams figure's count (default 16)")
    p.add_argument("--skip-mlx-server", action="store_true")
    p.add_argument("--skip-raw", action="store_true")
    p.add_argument("--log-dir")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def plan_from(args) -> Plan:
    plan = default_plan(args.quick)
    for name, attr in (("rounds", "rounds"), ("tokens", "decode_tokens"), ("stream_tokens", "stream_tokens"),
                       ("system_tokens", "system_tokens"), ("agent_turns", "agent_turns"), ("streams", "streams")):
        if getattr(args, name) is not None:
            setattr(plan, attr, getattr(args, name))
    return plan


def default_plan(quick: bool = False, rounds: int | None = None) -> Plan:
    plan = Plan(decode_tokens=300, stream_tokens=60, rounds=1, agent_turns=2) if quick else Plan()
    if rounds is not None:
        plan.rounds = rounds
    return plan


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = plan_from(args)
    started = time.perf_counter()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="swallow-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"Load average {system.load_average():.2f} on {system.machine_info()['cores']} cores", flush=True)
    results, errors = run(plan, log_dir, args.skip_mlx_server, args.skip_raw)
    print(f"\n{'=' * 100}\nServer overhead on the near-free model ({(time.perf_counter() - started) / 60:.1f} min; "
          f"load average now {system.load_average():.2f})")
    print_section(results, errors, plan)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "errors": errors, "plan": vars(plan)}, indent=2))
    return 1 if "swallow" in errors else 0


if __name__ == "__main__":
    sys.exit(main())
