"""python -m bench.distributed: one process against two ranks under mlx.launch, same model.

    python -m bench.distributed                  # bench-small, ~3 min on 2 cores
    python -m bench.distributed --model demo --tokens 48

swallow-server in one process, then under `mlx.launch -n 2 --backend ring` on 127.0.0.1 (the model
split in two by tensor parallelism, rank 0 serving HTTP): decode tokens/s of one stream, aggregate
tokens/s of 8 streams, time to first token of a ~1,000-token prompt, and each process's peak
memory. Prints the figures and the two-rank / one-process ratios, and whether the greedy tokens
were the same.

What it measures on one machine is the cost of running in step, not a speedup: both ranks share
the same cores and the same memory bandwidth, and their collectives go over loopback TCP. It
does not predict a Mac pair over Thunderbolt, where each rank has a GPU and memory of its own
(each reads half of the sharded weights per token: the gain), and where each of the model's two
all_sums per layer crosses the cable (the cost: ~2 x layers round trips per decode step).
"""

import argparse
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import httpx

from bench import client, models, prompts, system

MLX_LAUNCH = str(Path(sys.executable).parent / "mlx.launch")


def ring_ports() -> int:
    """A port p with p and p + 1 free: the ring listens on one per rank."""
    while True:
        p = system.free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue


class TwoRanks(system.Swallow):
    name = "swallow-server x2 (ring)"

    def command(self, model: Path) -> list:
        return [MLX_LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(ring_ports()), "--",
                *super().command(model)]

    def ranks(self) -> list:
        return httpx.get(f"{self.url}/health", timeout=5).json()["distributed"]["ranks"]

    def peak_rss_mb(self) -> float:
        return max(system.peak_rss_mb(r["pid"]) for r in self.ranks())  # per rank

    def stop(self) -> None:
        if self.process.poll() is None:
            try:  # rank 0 stops the other rank; mlx.launch then ends
                os.kill(self.ranks()[0]["pid"], signal.SIGTERM)
                self.process.wait(timeout=60)
            except (httpx.HTTPError, OSError):
                pass
        super().stop()


def measure(server, text: str, long_text: str, tokens: int, streams: int) -> dict:
    one = client.run_one(lambda c: client.completion_stream(c, server.url, text, tokens))
    many = client.run_streams([
        (lambda i: lambda c: client.completion_stream(c, server.url, f"{i}. {text}", tokens))(i)
        for i in range(streams)])
    first = client.run_one(lambda c: client.completion_stream(c, server.url, long_text, 4))
    return {"decode": one.decode_tps, "aggregate": many.aggregate_tps, "ttft": first.ttft_s,
            "rss": server.peak_rss_mb(), "tokens": "".join(one.text or one.content)}


def raw_decode(model_path: Path, tokens: int) -> None:
    """`--raw`, one of the ranks (or the one process): mlx-lm's own generate_step on the model, split
    when there are ranks; rank 0 prints its tokens/s. The floor the server's lockstep adds to."""
    import time

    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    group = mx.distributed.init()
    model, _ = load_model(model_path, lazy=True)
    if group.size() > 1:
        model.shard(group)
    mx.eval(model.parameters())
    prompt = mx.array([200006, 1000, 2000, 3000])
    for _ in zip(range(8), generate_step(prompt, model)):
        pass
    start = time.perf_counter()
    for _ in zip(range(tokens), generate_step(prompt, model)):
        pass
    if group.rank() == 0:
        print(f"RAW {tokens / (time.perf_counter() - start):.3f}", flush=True)


def raw_rate(model_path: Path, tokens: int, openblas, ranks: int) -> float:
    import subprocess

    command = [sys.executable, "-m", "bench.distributed", "--raw", str(model_path), "--tokens", str(tokens)]
    if ranks > 1:
        command = [MLX_LAUNCH, "-n", str(ranks), "--backend", "ring", "--starting-port", str(ring_ports()),
                   "--", *command]
    out = subprocess.run(command, cwd=system.ROOT, env=system.blas_env(openblas), capture_output=True,
                         text=True, timeout=600).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("RAW ")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bench-small")
    p.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=1000, help="the long prompt, for time to first token")
    p.add_argument("--raw", help=argparse.SUPPRESS)  # a model directory: run raw_decode (one rank of it)
    args = p.parse_args(argv)
    if args.raw:
        raw_decode(Path(args.raw), args.tokens)
        return 0
    model, _ = models.resolve(args.model)
    renderer = prompts.Renderer(model.path)
    openblas = system.find_openblas()
    log_dir = Path(tempfile.mkdtemp(prefix="swallow-bench-distributed-"))
    text = "Write a long story about a lighthouse keeper."
    long_text = prompts.filler(renderer.encoding, args.prompt_tokens, seed=11)
    results = {}
    for kind in (system.Swallow, TwoRanks):
        server = kind(model.path, openblas, log_dir)
        try:
            server.wait_ready()
            measure(server, text, text, 8, 2)  # warm: the first request's one-time costs
            results[kind.name] = measure(server, text, long_text, args.tokens, args.streams)
        finally:
            server.stop()
    one, two = results[system.Swallow.name], results[TwoRanks.name]
    one["raw"], two["raw"] = (raw_rate(model.path, args.tokens, openblas, n) for n in (1, 2))
    print(f"\nOne process against two ranks (mlx.launch -n 2 --backend ring, 127.0.0.1), {model.label}, "
          f"{os.cpu_count()} CPUs:\n")
    print("| | one process | two ranks | two / one |")
    print("|---|---|---|---|")
    rows = [("raw mlx-lm generate_step, split the same way (tokens/s)", "raw", "{:.1f}"),
            ("decode, 1 stream (tokens/s)", "decode", "{:.1f}"),
            (f"aggregate, {args.streams} streams (tokens/s)", "aggregate", "{:.1f}"),
            (f"time to first token, {args.prompt_tokens}-token prompt (s)", "ttft", "{:.2f}"),
            ("peak memory per process (MB)", "rss", "{:.0f}")]
    for label, key, fmt in rows:
        print(f"| {label} | {fmt.format(one[key])} | {fmt.format(two[key])} | {two[key] / one[key]:.2f}× |")
    print(f"\nServer decode / raw mlx-lm: one process {one['decode'] / one['raw']:.2f}×, "
          f"two ranks {two['decode'] / two['raw']:.2f}× (what the lockstep costs beyond the split itself)")
    print(f"Greedy tokens the same: {'yes' if one['tokens'] == two['tokens'] else 'NO'}")
    print("On one machine the ranks share cores and memory bandwidth: this is the cost of the lockstep "
          "and of loopback collectives, not what two Macs over Thunderbolt would gain (see the docstring).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
