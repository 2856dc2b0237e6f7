"""python -m bench.builtin_tools: what the built-in tools cost, without a model.

    python -m bench.builtin_tools                 # the sandbox's start, a warm call, a browser open
    python -m bench.builtin_tools --python /usr/bin/python3 --rounds 20 --json tools.json

- python: the first call of a conversation (the sandbox and the interpreter start, then
  `print(1)`), and a warm call (`print(1)` in the running interpreter), best and median;
- browser: `open` of a local page (fetch through the SSRF guard, trafilatura, the view), the first
  one (trafilatura loads) and the next ones.

`python -m bench` runs the same at its end.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = ("<!doctype html><html lang='ja'><head><meta charset='utf-8'><title>ベンチマーク用のページ</title></head>"
        "<body><nav><a href='/'>Home</a></nav><article><h1>ベンチマーク用のページ</h1>"
        + "".join(f"<h2>Section {i}</h2><p>東京の公園についての段落 {i}。Trees, ponds and the paths between "
                  f"them, at some length. <a href='/p{i}'>続き</a></p>" for i in range(60))
        + "</article></body></html>").encode()


def serve_page() -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def figures(times: list[float]) -> dict:
    return {"best_ms": min(times) * 1000, "median_ms": statistics.median(times) * 1000, "n": len(times)}


async def measure_python(python: str | None, rounds: int) -> dict:
    from server.tools.python import PythonTool, inspect
    from server.tools.sandbox import Bubblewrap, find_sandbox

    path = python or sys.executable
    if python is None and Bubblewrap.unreachable(inspect(path).dirs):
        path = "/usr/bin/python3"  # under root the sandbox runs as nobody, who can't reach this one
    interpreter = inspect(path)
    sandbox, why = find_sandbox(path, interpreter.dirs)
    if sandbox is None:
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="swallow-bench-tools-") as work_dir:
        import os

        os.chmod(work_dir, 0o711)
        tool = PythonTool(sandbox, interpreter, work_dir=work_dir)
        starts, warm = [], []
        try:
            for i in range(rounds):
                started = time.perf_counter()
                result = await tool.run(f"start-{i}", "print(1)")
                starts.append(time.perf_counter() - started)
                assert result.output == "1\n", result.output
                await tool.session(f"start-{i}").close()
            session = tool.session("warm")
            await session.run("print(1)")
            for _ in range(rounds * 4):
                started = time.perf_counter()
                await session.run("print(1)")
                warm.append(time.perf_counter() - started)
        finally:
            await tool.close()
    return {"sandbox": sandbox.name, "interpreter": f"{path} (Python {interpreter.version})",
            "start": figures(starts), "warm": figures(warm)}


async def measure_browser(rounds: int) -> dict:
    from server.tools.browser import Browser, Searxng
    from server.tools.net import AddressPolicy

    server = serve_page()
    url = f"http://127.0.0.1:{server.server_address[1]}/page"
    try:
        browser = Browser(Searxng("http://127.0.0.1:9"), AddressPolicy(("127.0.0.1",)))
        session = browser.session()
        started = time.perf_counter()
        first = await session.open(url)
        cold = time.perf_counter() - started
        assert first.error is None and "ベンチマーク用のページ" in first.text, first.text
        times = []
        for _ in range(rounds * 2):
            started = time.perf_counter()
            await session.open(url)  # a URL is fetched again each time, as a reload
            times.append(time.perf_counter() - started)
    finally:
        server.shutdown()
        server.server_close()
    return {"page_kb": len(PAGE) / 1024, "first_ms": cold * 1000, "open": figures(times)}


def measure(python: str | None = None, rounds: int = 5) -> dict:
    async def both():
        return {"python": await measure_python(python, rounds), "browser": await measure_browser(rounds)}

    return asyncio.run(both())


def report(results: dict) -> str:
    lines = []
    py = results["python"]
    if "skipped" in py:
        lines.append(f"python tool: skipped: {py['skipped']}")
    else:
        lines.append(f"python tool ({py['sandbox']}, {py['interpreter']}): start + print(1) "
                     f"{py['start']['median_ms']:.0f} ms median (best {py['start']['best_ms']:.0f}), "
                     f"warm print(1) {py['warm']['median_ms']:.1f} ms median (best {py['warm']['best_ms']:.1f})")
    web = results["browser"]
    lines.append(f"browser open of a local {web['page_kb']:.0f} KB page: first {web['first_ms']:.0f} ms "
                 f"(trafilatura loads), then {web['open']['median_ms']:.1f} ms median "
                 f"(best {web['open']['best_ms']:.1f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.builtin_tools", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", help="the interpreter run in the sandbox (default: this one)")
    p.add_argument("--rounds", type=int, default=5, help="sandbox starts measured (warm calls: 4x, opens: 2x)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    results = measure(args.python, args.rounds)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
