"""python -m bench.prefill: do running streams keep flowing while a long prompt is read?

    python -m bench.prefill                         # bench-small, chunks 2048,512,256,128, ~5 min on 2 cores
    python -m bench.prefill --chunks 256,2048 --prompt-tokens 2400 --streams 4

For swallow-server at each prefill chunk size (`prefill_step_size`) and for mlx_lm.server at its
default, in one run: `streams` requests decode long replies; once they all stream, a request with
a `prompt_tokens`-token prompt (nothing of it cached) joins. Measured:

- the running streams' longest gap between two tokens from the join until the joiner's first
  token, against their usual gap (the median before the join): the freeze a chat sees;
- the joiner's time to first token under that load, against its time alone;
- prefill throughput alone (prompt tokens over the time to first token), against the largest
  chunk's (unchunked: 2048 reads a 2.4k prompt in two steps).

mlx-lm's BatchGenerator already reads prompts chunk by chunk between decode steps; the chunk
size decides how long each decode step waits behind a piece of prompt.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import client, models, prompts, system


START_S = 5.0  # from the streams' start to the join


class SwallowChunked(system.Swallow):
    chunk = 2048

    @property
    def name(self) -> str:
        return f"swallow-server, chunk {self.chunk}"

    def extra_env(self) -> dict:
        return {**super().extra_env(), "SWALLOW_PREFILL_STEP_SIZE": str(self.chunk)}


def chunked(size: int):
    return type(f"SwallowChunk{size}", (SwallowChunked,), {"chunk": size})


async def _join_run(server, runners: list, joiner: prompts.Request, reply_tokens: int, chat: bool):
    def request(req, n):
        if chat:
            return lambda c: client.chat_stream(c, server.url, req.messages, n)
        return lambda c: client.completion_stream(c, server.url, req.text, n)

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as http:
        running = [asyncio.create_task(request(r, reply_tokens)(http)) for r in runners]
        await asyncio.sleep(START_S)  # their short prompts are read and they all stream by then
        joined_at = time.perf_counter()
        joined = await request(joiner, 4)(http)
        results = await asyncio.gather(*running)
    return joined_at, joined, results


def gaps(times: list, start: float, end: float) -> tuple[float, float]:
    """(median gap between tokens before `start`, longest gap overlapping [start, end])."""
    before = [b - a for a, b in zip(times, times[1:]) if b <= start]
    during = [b - a for a, b in zip(times, times[1:]) if b > start and a < end]
    return (statistics.median(before) if before else float("nan")), (max(during) if during else float("nan"))


def measure(kind, model: Path, openblas, log_dir: Path, workload, n_streams: int, reply_tokens: int,
            alone: prompts.Request, joiner: prompts.Request) -> dict:
    server = kind(model, openblas, log_dir)
    chat = issubclass(kind, system.Swallow)
    try:
        server.wait_ready()

        def one(req, n):
            if chat:
                return lambda c: client.chat_stream(c, server.url, req.messages, n)
            return lambda c: client.completion_stream(c, server.url, req.text, n)

        client.run_one(one(workload.warmup, 4))
        solo = client.run_one(one(alone, 4))
        joined_at, joined, results = asyncio.run(
            _join_run(server, workload.streams[:n_streams], joiner, reply_tokens, chat))
        first = joined.first_body
        usual, longest = zip(*(gaps(r.times, joined_at, first) for r in results))
        return {"name": server.name, "usual_gap_s": statistics.median(usual), "longest_gap_s": max(longest),
                "ttft_alone_s": solo.ttft_s, "ttft_loaded_s": first - joined_at,
                "prefill_tps_alone": len(alone.tokens) / solo.ttft_s}
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prefill", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bench-small")
    p.add_argument("--chunks", default="2048,512,256,128", help="swallow-server prefill chunk sizes to compare")
    p.add_argument("--prompt-tokens", type=int, default=2400, help="the joining prompt's length")
    p.add_argument("--streams", type=int, default=4, help="streams decoding when it joins")
    p.add_argument("--reply-tokens", type=int, default=240, help="their reply length (long enough to span the join)")
    p.add_argument("--skip-mlx-server", action="store_true")
    p.add_argument("--openblas", choices=("auto", "on", "off"), default="auto")
    args = p.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    openblas = system.find_openblas() if args.openblas != "off" else None
    main_model, _ = models.resolve(args.model)
    renderer = prompts.Renderer(main_model.path)
    workload = prompts.build(renderer, 200, [])
    log_dir = Path(tempfile.mkdtemp(prefix="swallow-bench-prefill-"))
    kinds = [chunked(c) for c in chunks]
    if not args.skip_mlx_server:
        kinds.append(system.MlxLmServer)
    rows = []
    for k, kind in enumerate(kinds):
        def long_prompt(seed):
            text = prompts.filler(renderer.encoding, args.prompt_tokens, seed=seed)
            return renderer.request([{"role": "user", "content": f"{text} Summarize it."}])

        row = measure(kind, main_model.path, openblas, log_dir, workload, args.streams, args.reply_tokens,
                      alone=long_prompt(100 + 2 * k), joiner=long_prompt(101 + 2 * k))
        print(f"  {time.strftime('%H:%M:%S')} {row['name']}: longest gap {row['longest_gap_s']:.2f} s "
              f"(usual {row['usual_gap_s']:.3f} s), joiner TTFT {row['ttft_loaded_s']:.2f} s loaded / "
              f"{row['ttft_alone_s']:.2f} s alone, prefill {row['prefill_tps_alone']:.0f} tok/s", flush=True)
        rows.append(row)
    unchunked = next((r for r, c in zip(rows, chunks) if c == max(chunks)), None)
    print(f"\n{args.streams} streams decoding, a {args.prompt_tokens}-token prompt joins ({main_model.label}, "
          f"{'OpenBLAS' if openblas else 'reference BLAS'}):\n")
    print("| system | longest gap | usual gap | gap / usual | joiner TTFT loaded / alone | prefill vs largest chunk |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["longest_gap_s"] / row["usual_gap_s"]
        prefill = row["prefill_tps_alone"] / unchunked["prefill_tps_alone"] if unchunked else float("nan")
        print(f"| {row['name']} | {row['longest_gap_s']:.2f} s | {row['usual_gap_s'] * 1000:.0f} ms | {ratio:.1f}× | "
              f"{row['ttft_loaded_s'] / row['ttft_alone_s']:.2f}× | {prefill:.2f}× |")
    print("\nTargets: gap ≤ 5× usual, joiner TTFT ≤ 1.3× alone, prefill ≥ 0.9× unchunked.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
