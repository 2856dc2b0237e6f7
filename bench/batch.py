"""python -m bench.batch: the Batch API against raw mlx-lm's BatchGenerator, and how soon a live
request starts beside a running batch. `python -m bench` runs the first part too.

    python -m bench.batch                 # bench-small: 64 lines of 64 tokens, then the live requests
    python -m bench.batch --quick         # 32 lines of 32 tokens
    python -m bench.batch --compare-hold  # also a server with batch_preemption = false (slow on a CPU)
    python -m bench.batch --model PATH --lines 256 --tokens 256

1. Throughput. The same N requests (chat messages; raw mlx-lm gets the token ids the server's
   harmony rendering makes of them), greedy, T tokens each: as one batch of /v1/chat/completions
   lines (POST /v1/files, POST /v1/batches, polled until completed), and all inserted at once into
   raw mlx-lm's BatchGenerator with the engine's sizes (decode 16, prefill 8). Tokens per second
   from the start (the batch created; the prompts inserted) to the last token, prefill included.
   The goal: the batch at least 0.9 x raw.
2. A live request beside a batch. Time to its first token (a streamed /v1/completions request with
   the rendered prompt, so that no harmony header is held back) on the idle server, then while a
   batch of long lines keeps all 16 rows busy: the youngest batch row gives way at the next step
   boundary. One step of the full batch is 16 / the tokens per second the server generates while
   the batch runs (/metrics). The goal: within the idle time plus one step, where a step costs
   about the same at 16 rows as at 1 (a GPU); on a CPU a step of 16 rows costs several of 1, and
   the live request's own first steps are full-batch steps, so the figures say how many steps.
   With --compare-hold, the same on a server with batch_preemption = false, where the live
   request waits for a batch line to end.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import models, prompts, runs, system

GOAL = 0.9
ROWS = 16  # the engine's max_batch_size in the bench (system.Swallow)


class SwallowHold(system.Swallow):
    """swallow-server whose batch rows never give way: a live request waits for one to end."""

    name = "swallow-server (batch_preemption = false)"

    def extra_env(self) -> dict:
        return {**super().extra_env(), "SWALLOW_BATCH_PREEMPTION": "false"}


def requests(renderer: prompts.Renderer, count: int, start: int = 0) -> list[prompts.Request]:
    return [renderer.request([{"role": "user", "content": f"Story {i:03d}: tell me a long story about a falcon, "
                                                          "a glacier and a walnut."}]) for i in range(start, start + count)]


class Batches:
    """One server's Batch API, over HTTP."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(60.0))

    def create(self, reqs: list[prompts.Request], tokens: int) -> dict:
        lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"messages": r.messages, "max_tokens": tokens, "temperature": 0}}
                 for i, r in enumerate(reqs)]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        uploaded = self.http.post("/v1/files", files={"file": ("bench.jsonl", data)}, data={"purpose": "batch"})
        uploaded.raise_for_status()
        created = self.http.post("/v1/batches", json={"input_file_id": uploaded.json()["id"],
                                                      "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        created.raise_for_status()
        return created.json()

    def get(self, batch_id: str) -> dict:
        return self.http.get(f"/v1/batches/{batch_id}").json()

    def cancel_and_wait(self, batch_id: str) -> None:
        self.http.post(f"/v1/batches/{batch_id}/cancel")
        while self.get(batch_id)["status"] not in ("cancelled", "completed", "failed", "expired"):
            time.sleep(0.1)

    def batch_rows(self) -> int:
        return sum(m.get("batch_running", 0) for m in self.http.get("/health").json()["models"].values())

    def metric(self, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.http.get("/metrics").text.splitlines()
                   if line.startswith(name))


def batch_throughput(url: str, reqs: list, tokens: int) -> dict:
    api = Batches(url)
    started = time.perf_counter()
    batch = api.create(reqs, tokens)
    while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.05)
        batch = api.get(batch["id"])
    wall = time.perf_counter() - started
    if batch["status"] != "completed" or batch["request_counts"]["failed"]:
        raise RuntimeError(f"the batch ended {batch['status']} with {batch['request_counts']}")
    out = batch["usage"]["output_tokens"]
    return {"tps": out / wall, "tokens": out, "wall_s": wall}


def raw_throughput(raw: system.RawWorker, reqs: list, tokens: int) -> dict:
    out = raw.call("streams", prompts=[r.tokens for r in reqs], n=tokens)
    return {"tps": out["completion_tokens"] / out["total_s"], "tokens": out["completion_tokens"],
            "wall_s": out["total_s"]}


def compare(server_url: str, raw: system.RawWorker, reqs: list, tokens: int, repeat: int) -> dict:
    """The batch and raw BatchGenerator in turns, `repeat` rounds, each keeping its best:
    {"batch": {...}, "raw": {...}, "ratio": batch / raw}."""
    raw.call("streams", prompts=[r.tokens for r in reqs[:ROWS]], n=2)  # this batch size's first-call costs
    best = {}
    for _ in range(repeat):
        for key, run in (("batch", lambda: batch_throughput(server_url, reqs, tokens)),
                         ("raw", lambda: raw_throughput(raw, reqs, tokens))):
            result = run()
            runs.log(f"{'Batch API' if key == 'batch' else 'raw BatchGenerator'}: {result['tokens']} tokens in "
                     f"{result['wall_s']:.1f} s, {result['tps']:.1f} tok/s")
            best[key] = max(best.get(key, result), result, key=lambda r: r["tps"])
    best["ratio"] = best["batch"]["tps"] / best["raw"]["tps"]
    return best


def measure(model_path: Path, mode: str, openblas, log_dir: Path, renderer: prompts.Renderer, lines: int,
            tokens: int, repeat: int) -> dict:
    """compare() on a server and a raw mlx-lm of their own (python -m bench's step [4])."""
    server = system.Swallow(model_path, openblas, log_dir)
    raw = system.RawWorker(model_path, mode, openblas, log_dir)
    try:
        server.wait_ready()
        raw.wait_ready()
        return compare(server.url, raw, requests(renderer, lines), tokens, repeat)
    finally:
        server.stop()
        raw.stop()


def first_token_s(url: str, req: prompts.Request) -> float:
    """Seconds from sending a streamed completion of the rendered prompt to its first token."""
    body = {"prompt": req.text, "max_tokens": 2, "temperature": 0, "stream": True}
    sent = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=None) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line[6:] != "[DONE]":
                if any(choice.get("text") for choice in json.loads(line[6:]).get("choices", [])):
                    return time.perf_counter() - sent
    raise RuntimeError("the live request generated nothing")


def live_beside_a_batch(url: str, busy: list, busy_tokens: int, live: prompts.Request, rounds: int = 3) -> dict:
    """First-token times of a live request on the idle server, then beside a batch of long lines
    that keeps every row busy; and the step time of the full batch."""
    api = Batches(url)
    first_token_s(url, live)  # first-call costs
    idle = [first_token_s(url, live) for _ in range(rounds)]
    batch = api.create(busy, busy_tokens)
    try:
        deadline = time.monotonic() + 1800
        while api.batch_rows() < ROWS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the batch never filled the engine's {ROWS} rows")
            time.sleep(0.2)
        before, t0 = api.metric("swallow_completion_tokens_total"), time.perf_counter()
        time.sleep(5.0)
        after, t1 = api.metric("swallow_completion_tokens_total"), time.perf_counter()
        gave_way = api.metric("swallow_batch_rows_gave_way_total")
        beside = []
        for _ in range(rounds):
            beside.append(first_token_s(url, live))
            time.sleep(1.0)
        gave_way = api.metric("swallow_batch_rows_gave_way_total") - gave_way
    finally:
        api.cancel_and_wait(batch["id"])
    rate = (after - before) / (t1 - t0)
    return {"idle_s": statistics.median(idle), "beside_s": statistics.median(beside), "beside_worst_s": max(beside),
            "batch_tps": rate, "step_s": ROWS / rate if rate > 0 else float("nan"), "gave_way": gave_way}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bench-small")
    p.add_argument("--lines", type=int, help="lines of the batch (default 64; --quick 32)")
    p.add_argument("--tokens", type=int, help="tokens per line (default 64; --quick 32)")
    p.add_argument("--busy-tokens", type=int, default=4096,
                   help="tokens per line of the batch beside which the live requests run (default 4096: it "
                        "stays busy; it is cancelled after them)")
    p.add_argument("--repeat", type=int, help="throughput rounds, each system keeping its best (default 2; --quick 1)")
    p.add_argument("--compare-hold", action="store_true",
                   help="also a server with batch_preemption = false (its live request waits for a batch line to end)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--openblas", choices=("auto", "on", "off"), default="auto")
    args = p.parse_args(argv)
    lines = args.lines or (32 if args.quick else 64)
    tokens = args.tokens or (32 if args.quick else 64)
    repeat = args.repeat or (1 if args.quick else 2)
    openblas = system.find_openblas() if args.openblas != "off" else None
    model, _ = models.resolve(args.model)
    log_dir = Path(tempfile.mkdtemp(prefix="swallow-bench-batch-"))
    renderer = prompts.Renderer(model.path)
    reqs, busy = requests(renderer, lines), requests(renderer, 2 * ROWS, start=lines)
    live = renderer.request([{"role": "user", "content": "Say hello."}])
    import mlx.core as mx

    mode = "float32" if mx.default_device() == mx.cpu else "default"
    print(f"Model: {model.label}; {lines} lines of {tokens} tokens, batch {ROWS}; raw mlx-lm ({mode}); "
          f"load average {system.load_average():.2f}", flush=True)
    server = system.Swallow(model.path, openblas, log_dir)
    raw = system.RawWorker(model.path, mode, openblas, log_dir)
    hold = SwallowHold(model.path, openblas, log_dir) if args.compare_hold else None
    try:
        server.wait_ready()
        raw.wait_ready()
        throughput = compare(server.url, raw, reqs, tokens, repeat)
        raw.stop()
        preempt = live_beside_a_batch(server.url, busy, args.busy_tokens, live)
        runs.log(f"live request: first token {preempt['idle_s']:.3f} s idle, {preempt['beside_s']:.3f} s beside a batch "
                 f"(one step {preempt['step_s']:.3f} s)")
        waited = None
        if hold is not None:
            hold.wait_ready()
            waited = live_beside_a_batch(hold.url, busy, args.busy_tokens, live)
    finally:
        for s in (server, raw, hold):
            if s is not None:
                s.stop()
    report(lines, throughput, preempt, waited)
    return 0


def report(lines: int, throughput: dict, preempt: dict, waited: dict | None) -> None:
    step, idle = preempt["step_s"], preempt["idle_s"]
    print(f"\n| | tokens/s | vs raw |\n|---|---|---|")
    print(f"| raw mlx-lm BatchGenerator, {lines} prompts at once | {throughput['raw']['tps']:.1f} | 1.00 |")
    print(f"| Batch API, {lines} lines | {throughput['batch']['tps']:.1f} | {throughput['ratio']:.2f} |")
    print("\n| live request, time to its first token (median of 3) | seconds | idle + steps |\n|---|---|---|")
    print(f"| idle server | {idle:.3f} | |")
    print(f"| beside a batch keeping all {ROWS} rows busy (a row gives way) | {preempt['beside_s']:.3f} "
          f"(worst {preempt['beside_worst_s']:.3f}) | {(preempt['beside_s'] - idle) / step:+.1f} |")
    if waited is not None:
        print(f"| the same, batch_preemption = false (waits for a batch line to end) | {waited['beside_s']:.3f} "
              f"(worst {waited['beside_worst_s']:.3f}) | {(waited['beside_s'] - waited['idle_s']) / waited['step_s']:+.1f} |")
    print(f"| one step of the full batch ({preempt['batch_tps']:.1f} tok/s over {ROWS} rows) | {step:.3f} | |")
    print(f"\nBatch rows that gave way to the live requests: {preempt['gave_way']:.0f}")
    print("Targets:")
    ratio = throughput["ratio"]
    print(f"  batch throughput ≥ {GOAL}× raw BatchGenerator: {ratio:.2f}× {'MET' if ratio >= GOAL else 'NOT MET'}")
    within = preempt["beside_s"] <= idle + step
    print(f"  live first token beside a batch ≤ idle + one step ({idle + step:.3f} s): {preempt['beside_s']:.3f} s "
          f"{'MET' if within else 'NOT MET'}")


if __name__ == "__main__":
    sys.exit(main())
