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
   from the start (the batch created; the prompts inserted) to the last token, prefill included,
   and tokens per CPU-second of each process (what a machine shared with other work can still
   compare). The goal: the batch at least 0.9 x raw.
2. A live request beside a batch. Time to its first token (a streamed /v1/completions request with
   the rendered prompt, so that no harmony header is held back): on the idle server; while a batch
   of long lines keeps all 16 rows busy (the youngest batch row gives way at the next step
   boundary); and while 15 live streams run (the same compute beside it, no batch work). A step is
   the time the server takes to generate a token for each row (/metrics). The goal: beside a batch
   within the idle time plus one step. That holds where a step costs about the same at 16 rows as
   at 1 (a GPU); on a CPU a step of 16 rows costs several of one, and the live request's prompt is
   read in a step shared with the 15 others, so the comparison that isolates the batch's part is
   with the 15 live streams: beside a batch within that plus one step. With --compare-hold, the
   same on a server with batch_preemption = false, where the live request waits for a batch line
   to end.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
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

    def running(self) -> int:
        return self.http.get("/health").json()["running"]

    def metric(self, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.http.get("/metrics").text.splitlines()
                   if line.startswith(name))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: on a machine shared with other work, tokens
    per CPU-second compare two systems' efficiency when their wall-clock rates are noise."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_throughput(server: system.Swallow, reqs: list, tokens: int) -> dict:
    api = Batches(server.url)
    cpu, started = cpu_seconds(server.process.pid), time.perf_counter()
    batch = api.create(reqs, tokens)
    while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.05)
        batch = api.get(batch["id"])
    wall, cpu = time.perf_counter() - started, cpu_seconds(server.process.pid) - cpu
    if batch["status"] != "completed" or batch["request_counts"]["failed"]:
        raise RuntimeError(f"the batch ended {batch['status']} with {batch['request_counts']}")
    out = batch["usage"]["output_tokens"]
    return {"tps": out / wall, "per_cpu_s": out / cpu, "tokens": out, "wall_s": wall}


def raw_throughput(raw: system.RawWorker, reqs: list, tokens: int) -> dict:
    cpu = cpu_seconds(raw.process.pid)
    out = raw.call("streams", prompts=[r.tokens for r in reqs], n=tokens)
    cpu = cpu_seconds(raw.process.pid) - cpu
    return {"tps": out["completion_tokens"] / out["total_s"], "per_cpu_s": out["completion_tokens"] / cpu,
            "tokens": out["completion_tokens"], "wall_s": out["total_s"]}


def compare(server: system.Swallow, raw: system.RawWorker, reqs: list, tokens: int, repeat: int) -> dict:
    """The batch and raw BatchGenerator in turns, `repeat` rounds, each keeping its best:
    {"batch": {...}, "raw": {...}, "ratio": batch / raw, "cpu_ratio": the same per CPU-second}."""
    raw.call("streams", prompts=[r.tokens for r in reqs[:ROWS]], n=2)  # this batch size's first-call costs
    best = {}
    for _ in range(repeat):
        for key, run in (("batch", lambda: batch_throughput(server, reqs, tokens)),
                         ("raw", lambda: raw_throughput(raw, reqs, tokens))):
            result = run()
            runs.log(f"{'Batch API' if key == 'batch' else 'raw BatchGenerator'}: {result['tokens']} tokens in "
                     f"{result['wall_s']:.1f} s, {result['tps']:.1f} tok/s, {result['per_cpu_s']:.1f} per CPU-second")
            for figure in ("tps", "per_cpu_s"):
                best.setdefault(key, {})[figure] = max(best.get(key, {}).get(figure, 0.0), result[figure])
    best["ratio"] = best["batch"]["tps"] / best["raw"]["tps"]
    best["cpu_ratio"] = best["batch"]["per_cpu_s"] / best["raw"]["per_cpu_s"]
    return best


def measure(model_path: Path, mode: str, openblas, log_dir: Path, renderer: prompts.Renderer, lines: int,
            tokens: int, repeat: int) -> dict:
    """compare() on a server and a raw mlx-lm of their own (python -m bench's step [6])."""
    server = system.Swallow(model_path, openblas, log_dir)
    raw = system.RawWorker(model_path, mode, openblas, log_dir)
    try:
        server.wait_ready()
        raw.wait_ready()
        return compare(server, raw, requests(renderer, lines), tokens, repeat)
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


class LiveLoad:
    """Streamed chat requests that go on generating (in a thread) until stop(): the same compute
    beside a live request as a full batch, with no batch work in it."""

    def __init__(self, url: str, reqs: list, tokens: int):
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run(url, reqs, tokens)), daemon=True)
        self.thread.start()

    async def _run(self, url: str, reqs: list, tokens: int) -> None:
        async def one(client: httpx.AsyncClient, req: prompts.Request) -> None:
            body = {"messages": req.messages, "max_tokens": tokens, "temperature": 0, "stream": True}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_lines():
                    if self.stopping.is_set():
                        return  # closing the stream cancels the generation

        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
            await asyncio.gather(*(one(client, r) for r in reqs), return_exceptions=True)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def step_seconds(api: Batches, rows: int, steps: int = 3, timeout: float = 600) -> float:
    """One decode step of `rows` rows: the time the server takes to generate `steps` x `rows`
    tokens (swallow_completion_tokens_total, counted as each token reaches its request), once
    every row has its first tokens (their prompts read)."""
    begun = api.metric("swallow_completion_tokens_total")
    wait_for("the rows' first tokens", lambda: api.metric("swallow_completion_tokens_total") - begun >= 2 * rows,
             timeout)
    start, t0 = api.metric("swallow_completion_tokens_total"), time.perf_counter()
    while True:
        time.sleep(0.5)
        done, elapsed = api.metric("swallow_completion_tokens_total") - start, time.perf_counter() - t0
        if done >= steps * rows or elapsed > timeout:
            return elapsed * rows / done if done else float("nan")


def wait_for(what: str, ready, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen in {timeout:.0f} s")
        time.sleep(0.2)


def live_requests(url: str, busy: list, busy_tokens: int, live: prompts.Request, rounds: int = 3) -> dict:
    """First-token times of a live request: on the idle server; beside a batch of long lines that
    keeps all the rows busy (one gives way to it); beside ROWS - 1 live streams (the same compute,
    no batch work). And a decode step's time in each."""
    api = Batches(url)
    first_token_s(url, live)  # first-call costs
    out = {"idle_s": statistics.median(first_token_s(url, live) for _ in range(rounds))}

    def beside(key: str) -> None:
        times = []
        for _ in range(rounds):
            times.append(first_token_s(url, live))
            time.sleep(1.0)
        out[f"{key}_s"], out[f"{key}_worst_s"] = statistics.median(times), max(times)

    batch = api.create(busy, busy_tokens)
    try:
        wait_for(f"a batch in all {ROWS} rows", lambda: api.batch_rows() >= ROWS)
        out["batch_step_s"] = step_seconds(api, ROWS)
        gave_way = api.metric("swallow_batch_rows_gave_way_total")
        beside("batch")
        out["gave_way"] = api.metric("swallow_batch_rows_gave_way_total") - gave_way
    finally:
        api.cancel_and_wait(batch["id"])
    wait_for("the batch's rows to leave", lambda: api.batch_rows() == 0, 120)
    load = LiveLoad(url, busy[:ROWS - 1], busy_tokens)
    try:
        wait_for(f"{ROWS - 1} live streams running", lambda: api.running() >= ROWS - 1)
        out["live_step_s"] = step_seconds(api, ROWS - 1)
        beside("live")
    finally:
        load.stop()
    return out


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
        throughput = compare(server, raw, reqs, tokens, repeat)
        raw.stop()
        preempt = live_requests(server.url, busy, args.busy_tokens, live)
        runs.log(f"live request: first token {preempt['idle_s']:.3f} s idle, {preempt['batch_s']:.3f} s beside a batch, "
                 f"{preempt['live_s']:.3f} s beside {ROWS - 1} live streams (a step: {preempt['batch_step_s']:.3f} s)")
        waited = None
        if hold is not None:
            hold.wait_ready()
            waited = live_requests(hold.url, busy, args.busy_tokens, live)
    finally:
        for s in (server, raw, hold):
            if s is not None:
                s.stop()
    report(lines, throughput, preempt, waited)
    return 0


def report(lines: int, throughput: dict, live: dict, waited: dict | None) -> None:
    step, idle = live["batch_step_s"], live["idle_s"]
    raw, batched = throughput["raw"], throughput["batch"]
    print("\n| | tokens/s | vs raw | tokens per CPU-second | vs raw |\n|---|---|---|---|---|")
    print(f"| raw mlx-lm BatchGenerator, {lines} prompts at once | {raw['tps']:.1f} | 1.00 | {raw['per_cpu_s']:.1f} | 1.00 |")
    print(f"| Batch API, {lines} lines | {batched['tps']:.1f} | {throughput['ratio']:.2f} | {batched['per_cpu_s']:.1f} | "
          f"{throughput['cpu_ratio']:.2f} |")
    print("\n| a live request's first token (median of 3) | seconds | idle + steps |\n|---|---|---|")
    print(f"| idle server | {idle:.3f} | |")
    print(f"| beside a batch in all {ROWS} rows (one gives way) | {live['batch_s']:.3f} (worst {live['batch_worst_s']:.3f})"
          f" | {(live['batch_s'] - idle) / step:+.1f} |")
    if waited is not None:
        print(f"| the same, batch_preemption = false (waits for a batch line to end) | {waited['batch_s']:.3f} "
              f"(worst {waited['batch_worst_s']:.3f}) | {(waited['batch_s'] - waited['idle_s']) / waited['batch_step_s']:+.1f} |")
    print(f"| beside {ROWS - 1} live streams (the same compute, no batch) | {live['live_s']:.3f} "
          f"(worst {live['live_worst_s']:.3f}) | {(live['live_s'] - idle) / step:+.1f} |")
    print(f"| a decode step: of the full batch / of {ROWS - 1} live streams | {step:.3f} / {live['live_step_s']:.3f} | |")
    print(f"\nBatch rows that gave way to the live requests: {live['gave_way']:.0f}")
    print("Targets:")
    ratio = throughput["ratio"]
    print(f"- [{'MET' if ratio >= GOAL else 'MISSED'}] batch ≥ {GOAL}× raw BatchGenerator: {ratio:.2f}× "
          f"({throughput['cpu_ratio']:.2f}× per CPU-second)")
    met = live["batch_s"] <= idle + step
    print(f"- [{'MET' if met else 'MISSED'}] live first token beside a batch ≤ idle + one step "
          f"({idle + step:.3f} s): {live['batch_s']:.3f} s")
    met = live["batch_s"] <= live["live_s"] + step
    print(f"- [{'MET' if met else 'MISSED'}] beside a batch ≤ beside live streams + one step "
          f"({live['live_s'] + step:.3f} s): {live['batch_s']:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
