"""python -m bench.restart: the first turn after a restart, with the prompt cache on disk.

    python -m bench.restart                    # bench-small, a ~2,000-token shared prefix, ~2 min
    python -m bench.restart --prefix-tokens 8000

swallow-server answers a request whose system prompt is `prefix_tokens` long (cold: nothing
cached), is stopped once the snapshot of that prefix is on disk, started again on the same
data_dir, and answers a new question under the same system prompt: its time to first token
against the cold one. mlx_lm.server keeps no cache across restarts, so its turn 1 after a
restart is its cold turn (measured the same way, for the comparison).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench import client, models, prompts, system


class SwallowWithData(system.Swallow):
    data_dir = ""

    def extra_env(self) -> dict:
        return {**super().extra_env(), "SWALLOW_DATA_DIR": self.data_dir}  # the same one across the restart


def ttft(server, request: prompts.Request, chat: bool) -> tuple[float, int]:
    if chat:
        result = client.run_one(lambda c: client.chat_stream(c, server.url, request.messages, 4))
    else:
        result = client.run_one(lambda c: client.completion_stream(c, server.url, request.text, 4))
    return result.ttft_s, result.cached_tokens or 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bench-small")
    p.add_argument("--prefix-tokens", type=int, default=2000)
    p.add_argument("--skip-mlx-server", action="store_true")
    args = p.parse_args(argv)
    model, _ = models.resolve(args.model)
    renderer = prompts.Renderer(model.path)
    openblas = system.find_openblas()
    log_dir = Path(tempfile.mkdtemp(prefix="swallow-bench-restart-"))
    data_dir = Path(tempfile.mkdtemp(prefix="swallow-bench-data-"))
    instructions = prompts.filler(renderer.encoding, args.prefix_tokens, seed=7)

    def turn(question: str) -> prompts.Request:
        return renderer.request([{"role": "system", "content": instructions}, {"role": "user", "content": question}])

    kind = type("SwallowBench", (SwallowWithData,), {"data_dir": str(data_dir)})
    server = kind(model.path, openblas, log_dir)
    server.wait_ready()
    cold, _ = ttft(server, turn("Summarize the rules above."), True)
    deadline = time.monotonic() + 120
    while not list(data_dir.glob("prompt-cache/*/*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.2)
    server.stop()
    server = kind(model.path, openblas, log_dir)
    server.wait_ready()
    after, cached = ttft(server, turn("Which rule comes first?"), True)
    server.stop()
    rows = [("swallow-server", cold, after, cached)]
    if not args.skip_mlx_server:
        for attempt in range(2):  # started afresh each time: nothing carries over
            mlx = system.MlxLmServer(model.path, openblas, log_dir)
            mlx.wait_ready()
            value, _ = ttft(mlx, turn("Summarize the rules above." if attempt == 0 else "Which rule comes first?"),
                            False)
            mlx.stop()
            if attempt == 0:
                mlx_cold = value
        rows.append(("mlx_lm.server", mlx_cold, value, 0))
    print(f"\nTurn 1 after a restart, {args.prefix_tokens}-token shared prefix ({model.label}):\n")
    print("| system | TTFT cold | TTFT turn 1 after a restart | after / cold | prompt tokens cached |")
    print("|---|---|---|---|---|")
    for name, c, a, k in rows:
        print(f"| {name} | {c:.2f} s | {a:.2f} s | {a / c:.2f}× | {k} |")
    print("\nTarget: turn 1 after a restart ≤ 0.15× cold.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
