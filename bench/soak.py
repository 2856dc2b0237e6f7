"""python -m bench.soak: the same mixed load, round after round, and the server's memory after each.

    python -m bench.soak                          # the demo model, 10 rounds of 32 clients
    python -m bench.soak --rounds 50 --model PATH --plot soak.png --json soak.json
    python -m bench.soak --url http://127.0.0.1:8000 --rounds 100   # a server already running

Each round, `--clients` clients at once: chat completions, Responses (stored and not) and the
Messages API, streamed and not, and the legacy completions; every `--leave-every`th client walks
away, half of them before the first byte, half in the middle of the stream. After the round,
once the server is idle, its /health gives the process's resident memory (RSS; its peak where
the platform can't tell the current one), MLX's active memory and the prompt caches' bytes: a
server that leaks grows round after round, a sound one levels off after the first rounds
(caches filling). One line per round, a summary, and a plot (PNG, with matplotlib when it is
installed) and the numbers (--json).
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import models, system

QUESTIONS = ["What is the capital of Japan?", "Name three colors.", "Write one short sentence about rivers.",
             "Count from one to five.", "What is 2+2?", "Say hello in French."]


def _bodies(i: int, max_tokens: int) -> tuple[str, dict]:
    """Client i's request: (path, body), cycling through the APIs, streamed and not."""
    question = QUESTIONS[i % len(QUESTIONS)]
    messages = [{"role": "user", "content": question}]
    kinds = [
        ("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens, "stream": True}),
        ("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens}),
        ("/v1/responses", {"input": question, "max_output_tokens": max_tokens, "stream": True, "store": False}),
        ("/v1/responses", {"input": question, "max_output_tokens": max_tokens}),
        ("/v1/messages", {"messages": messages, "max_tokens": max_tokens, "stream": True}),
        ("/v1/messages", {"messages": messages, "max_tokens": max_tokens}),
        ("/v1/completions", {"prompt": question, "max_tokens": max_tokens, "stream": True}),
    ]
    return kinds[i % len(kinds)]


async def _client(http: httpx.AsyncClient, i: int, args, counts: dict) -> None:
    path, body = _bodies(i, args.max_tokens)
    leaves = args.leave_every > 0 and i % args.leave_every == args.leave_every - 1
    if leaves and (i // args.leave_every) % 2 == 0:  # before the first byte
        try:
            await asyncio.wait_for(http.post(path, json=body), timeout=0.05)
        except (TimeoutError, httpx.TimeoutException):
            pass
        counts["left"] += 1
        return
    if leaves:  # in the middle of a stream
        body = {**body, "stream": True}
        async with http.stream("POST", path, json=body) as response:
            seen = 0
            async for _ in response.aiter_lines():
                seen += 1
                if seen >= 4:
                    break
        counts["left"] += 1
        return
    if body.get("stream"):
        async with http.stream("POST", path, json=body) as response:
            lines = [line async for line in response.aiter_lines()]
            ok = response.status_code == 200 and bool(lines) and _ended(path, [x for x in lines if x])
    else:
        response = await http.post(path, json=body)
        ok = response.status_code == 200
    counts["ok" if ok else "failed"] += 1
    if not ok and len(counts["problems"]) < 5:
        counts["problems"].append(f"{path} (stream: {bool(body.get('stream'))}): status {response.status_code}")


def _ended(path: str, lines: list[str]) -> bool:
    """Whether a stream ended as its API ends a successful one."""
    if path == "/v1/responses":
        return any(x.startswith(("event: response.completed", "event: response.incomplete")) for x in lines)
    if path == "/v1/messages":
        return "event: message_stop" in lines
    return lines[-1] == "data: [DONE]" and not any(x.startswith('data: {"error"') for x in lines)


async def _round(url: str, args) -> dict:
    counts = {"ok": 0, "failed": 0, "left": 0, "problems": []}
    limits = httpx.Limits(max_connections=args.clients * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        results = await asyncio.gather(*(_client(http, i, args, counts) for i in range(args.clients)),
                                       return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    counts["failed"] += len(errors)
    counts["problems"] += [f"a client failed: {e!r}" for e in errors[:5]]
    return counts


def _idle_health(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{url}/health", timeout=10).json()
        if (health["running"] == 0 and health["waiting"] == 0) or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def _memory(health: dict) -> dict:
    process = health.get("process") or {}
    rss = process.get("rss_bytes")
    cached = (health.get("kv_memory") or {}).get("prompt_cache_bytes")
    if cached is None:
        cached = (health.get("prompt_cache") or {}).get("bytes", 0)
    return {"rss_mb": (rss if rss is not None else process.get("peak_rss_bytes", 0)) / 2**20,
            "rss_is_peak": rss is None,
            "mlx_mb": (health.get("memory") or {}).get("mlx_active_bytes", 0) / 2**20,
            "prompt_cache_mb": cached / 2**20}


def plot(rounds: list[dict], path: Path) -> str:
    """Save the plot; what happened, in words."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib); the numbers are above"
    numbers = [r["round"] for r in rounds]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    rss_label = "RSS (peak)" if rounds and rounds[0]["rss_is_peak"] else "RSS"
    for key, label in (("rss_mb", rss_label), ("mlx_mb", "MLX active memory"), ("prompt_cache_mb", "prompt cache")):
        axes.plot(numbers, [r[key] for r in rounds], marker="o", label=label)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("round")
    axes.set_ylabel("MiB")
    axes.set_title("swallow-server memory after each round of mixed load")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"plot: {path}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="demo (default), bench-small, or a GPT-OSS MLX model directory")
    p.add_argument("--url", help="soak a server that is already running instead of starting one")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=32, help="clients at once in each round")
    p.add_argument("--leave-every", type=int, default=4, help="every Nth client walks away (0: none)")
    p.add_argument("--max-tokens", type=int, default=48, help="each request's token limit")
    p.add_argument("--plot", default="soak.png", help="where the PNG goes")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)

    server = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        model, _ = models.resolve(args.model)
        server = system.Swallow(model.path, system.find_openblas(), Path(tempfile.mkdtemp(prefix="swallow-soak-")))
        server.wait_ready()
        url = server.url
    rounds, failed = [], 0
    try:
        print(f"soak: {args.rounds} rounds of {args.clients} clients against {url}\n")
        print("| round | seconds | ok | failed | walked away | RSS MiB | MLX MiB | prompt cache MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for number in range(1, args.rounds + 1):
            start = time.perf_counter()
            counts = asyncio.run(_round(url, args))
            seconds = time.perf_counter() - start
            problems = counts.pop("problems")
            row = {"round": number, "seconds": round(seconds, 2), **counts, **_memory(_idle_health(url))}
            rounds.append(row)
            failed += counts["failed"]
            for problem in problems:
                print(f"  round {number}: {problem}", file=sys.stderr)
            print(f"| {number} | {seconds:.1f} | {counts['ok']} | {counts['failed']} | {counts['left']} | "
                  f"{row['rss_mb']:.0f}{' (peak)' if row['rss_is_peak'] else ''} | {row['mlx_mb']:.0f} | "
                  f"{row['prompt_cache_mb']:.1f} |", flush=True)
    finally:
        if server is not None:
            server.stop()
    if len(rounds) >= 2:
        settled = rounds[min(2, len(rounds) - 2)]  # after the first rounds have filled the caches
        print(f"\nRSS from round {settled['round']} to round {rounds[-1]['round']}: "
              f"{rounds[-1]['rss_mb'] - settled['rss_mb']:+.0f} MiB; MLX: {rounds[-1]['mlx_mb'] - settled['mlx_mb']:+.0f} MiB")
    print(plot(rounds, Path(args.plot)))
    if args.json:
        Path(args.json).write_text(json.dumps({"url": url, "clients": args.clients, "rounds": rounds}, indent=2))
    if failed:
        print(f"{failed} request(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
