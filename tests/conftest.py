"""Shared fixtures: small real models built offline, and real servers on free ports.

Servers are the real command (`python -m server`) in a subprocess; tests talk to them over
HTTP with the openai SDK and httpx.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.scripts import SCRIPTS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The cache (tokenizer, tiktoken file, demo model) the servers share. It is kept between
    runs, apart from the user's own cache: its files are deterministic and hash-checked, and
    building the tokenizer costs ~10 s. The cold path has its own tests (test_models_loading)."""
    path = Path(os.environ.get("SWALLOW_TEST_CACHE_DIR") or Path.home() / ".cache" / "swallow-server-tests")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["SWALLOW_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def scripted_model(cache_dir, tmp_path_factory) -> Path:
    from models.scripted import build_scripted_model

    return build_scripted_model(tmp_path_factory.mktemp("scripted"), SCRIPTS, context_length=4096)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """`python -m server ARGS` on a free port, until stop(); `launcher`: the command it runs under
    (e.g. mlx.launch -n 2 --)."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None, launcher: list[str] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [*launcher, sys.executable, "-m", "server", "--port", str(self.port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="not-needed", max_retries=0, **kwargs)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="not-needed", max_retries=0)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory, cache_dir):
    """Factory: start_server(args) -> RunningServer, stopped at the end of the session."""
    servers = []

    def start(args: list[str], env: dict | None = None, launcher: list[str] = ()) -> RunningServer:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        # a data_dir of its own (stored responses, prompt-cache snapshots) unless the test shares one
        env = {"SWALLOW_DATA_DIR": str(log_path.parent / "data"), **(env or {})}
        server = RunningServer(args, log_path, env, launcher)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def scripted_server(start_server, scripted_model) -> RunningServer:
    """The scripted model behind the real server, greedy by default (replies are exact anyway).
    It also listens on a second port as Ollama's would (`ollama_url`, tests/test_ollama.py)."""
    ollama_port = free_port()
    server = start_server(["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted",
                           "--ollama-port", str(ollama_port)])
    server.ollama_url = f"http://127.0.0.1:{ollama_port}"
    return server


@pytest.fixture(scope="session")
def demo_server(start_server) -> RunningServer:
    """The random-weight gpt_oss demo model (the real architecture, sliding window 128), greedy
    by default; requests that want sampling set a temperature."""
    return start_server(["--model", "demo"], env={"SWALLOW_TEMPERATURE": "0"})


@pytest.fixture(scope="session")
def client(scripted_server) -> openai.OpenAI:
    return scripted_server.client()


@pytest.fixture(scope="session")
def encoding(scripted_model):
    """Harmony's encoding, loaded offline from a model directory's tokenizer.json."""
    from models.vocab import load_harmony_encoding_offline

    return load_harmony_encoding_offline(scripted_model)
