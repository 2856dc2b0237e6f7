"""python -m bench.contention: what work beside the model costs it, on this machine.

On a CPU, the model's compute (MLX's threads and OpenBLAS's) keeps every core busy. Any other
work then runs on the same cores: an HTTP client reading a stream, a server's event loop writing
it, the engine's own bookkeeping. A server measured against raw mlx-lm carries that work and raw
mlx-lm has none, so this shows how much of a gap it alone makes: raw mlx-lm's BatchGenerator
(no server, no client) decodes N streams while another process burns a share of one core in
short bursts (like per-token work), in turns with the same run without it, best of rounds each.

    python -m bench.contention                       # bench-small, 1 and 8 streams, 0/10/20% of a core
    python -m bench.contention --streams 8 --load 0,15,30

`python -m bench` prints the share its HTTP client took (its CPU per token); the server's event
loop takes about as much again. On a Mac the compute runs on the GPU and such work runs on idle
cores, so none of this applies there.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import models, prompts, runs, system

BURST_MS = 2.0  # one burst of work, then a sleep that makes the asked share of one core

BURNER = """
import sys, time
busy, idle = float(sys.argv[1]), float(sys.argv[2])
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < busy:
        pass
    time.sleep(idle)
"""


def burner(share: float) -> subprocess.Popen | None:
    """A process that keeps `share` (0..1) of one core busy, in bursts of BURST_MS."""
    if share <= 0:
        return None
    busy = BURST_MS / 1000
    return subprocess.Popen([sys.executable, "-c", BURNER, str(busy), str(busy * (1 - share) / share)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bench-small")
    p.add_argument("--streams", default="1,8", help="stream counts (default 1,8)")
    p.add_argument("--load", default="0,10,20", help="share of one core burnt beside the model, in %% (default 0,10,20)")
    p.add_argument("--tokens", type=int, default=48, help="tokens per stream (default 48)")
    p.add_argument("--repeat", type=int, default=3, help="rounds, each load in turn (default 3)")
    p.add_argument("--openblas", choices=("auto", "on", "off"), default="auto")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.streams.split(",") if n.strip()]
    loads = [float(x) / 100 for x in args.load.split(",") if x.strip()]
    openblas = system.find_openblas() if args.openblas != "off" else None
    model, _ = models.resolve(args.model)
    workload = prompts.build(prompts.Renderer(model.path), 200, [])
    worker = system.RawWorker(model.path, "float32", openblas, Path(tempfile.mkdtemp(prefix="swallow-bench-")))
    best: dict = {}
    try:
        worker.wait_ready()
        for count in counts:
            tokens = [r.tokens for r in workload.streams[:count]]
            worker.call("streams", prompts=tokens, n=8)  # warm up this batch size
            for _ in range(args.repeat):
                for share in loads:
                    burning = burner(share)
                    try:
                        result = worker.call("streams", prompts=tokens, n=args.tokens)
                    finally:
                        if burning:
                            burning.kill()
                            burning.wait()
                    rate = result["steady_tps"] if count > 1 else result["aggregate_tps"]
                    best[count, share] = max(best.get((count, share), 0.0), rate)
                    runs.log(f"{count} stream(s), {share:.0%} of a core burnt: {rate:.1f} tok/s")
    finally:
        worker.stop()
    print(f"\nraw mlx-lm BatchGenerator ({model.label}, {'OpenBLAS' if openblas else 'reference BLAS'}, "
          f"{system.machine_info()['cores']} cores), best of {args.repeat}:\n")
    print("| streams | " + " | ".join(f"{s:.0%} of a core burnt" for s in loads) + " |")
    print("|---|" + "---|" * len(loads))
    for count in counts:
        alone = best[count, loads[0]]
        cells = [f"{best[count, s]:.1f} tok/s ({best[count, s] / alone:.2f}×)" for s in loads]
        print(f"| {count} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
