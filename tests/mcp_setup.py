"""Real MCP servers for the tool-loop tests and the benchmark: the reference servers from npm,
installed once into the test cache, and tests/mcp_server.py (the `mcp` SDK) over stdio or HTTP.

    bins = npm_servers(cache_dir)                    # {"everything": path, "filesystem": path}
    with http_mcp_server() as url: ...               # tests/mcp_server.py on streamable HTTP
    write_config(path, servers, tools={...})         # a config.toml with [tools] and [[mcp_servers]]
"""

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_SERVER = ROOT / "tests" / "mcp_server.py"
# the versions the tests were written against: installed once per version into the test cache
NPM_PACKAGES = {"everything": ("@modelcontextprotocol/server-everything", "2026.8.31", "mcp-server-everything"),
                "filesystem": ("@modelcontextprotocol/server-filesystem", "2026.8.31", "mcp-server-filesystem")}


class NpmMissing(RuntimeError):
    pass


def npm_servers(cache_dir: Path) -> dict[str, Path]:
    """The npm servers' executables, installed into cache_dir/mcp-npm-<versions> when missing
    (npm install: a minute the first time, nothing after)."""
    versions = "-".join(version for _, version, _ in NPM_PACKAGES.values())
    prefix = Path(cache_dir) / f"mcp-npm-{versions}"
    bins = {name: prefix / "node_modules" / ".bin" / command for name, (_, _, command) in NPM_PACKAGES.items()}
    if all(path.exists() for path in bins.values()):
        return bins
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise NpmMissing("node and npm are needed for the MCP reference servers (apt-get install nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    specs = [f"{package}@{version}" for package, version, _ in NPM_PACKAGES.values()]
    subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", *specs],
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    return bins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_mcp_server(log_path: Path | None = None):
    """tests/mcp_server.py on streamable HTTP; yields its URL."""
    port = free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, str(TEST_SERVER), "http", str(port)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP MCP server did not start (exit {process.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        if log_path:
            log.close()


def stdio_test_server(name: str, **more) -> dict:
    """A [[mcp_servers]] entry running tests/mcp_server.py over stdio."""
    return {"name": name, "command": sys.executable, "args": [str(TEST_SERVER), "stdio"], **more}


def write_config(path: Path, servers: list[dict], tools: dict | None = None) -> Path:
    """A config file with a [tools] table and [[mcp_servers]] tables (values written as JSON,
    which TOML reads the same for strings, numbers, lists and inline tables of strings)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = ["[tools]", *(f"{k} = {value(v)}" for k, v in (tools or {}).items()), ""]
    for server in servers:
        lines += ["[[mcp_servers]]", *(f"{k} = {value(v)}" for k, v in server.items()), ""]
    path.write_text("\n".join(lines))
    return path
