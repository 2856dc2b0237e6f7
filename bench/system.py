"""Processes and the machine: the servers under test, OpenBLAS, memory, machine facts."""

import glob
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
OPENBLAS_GLOB = "/usr/lib/*/openblas-pthread/libblas.so.3"  # Debian's libopenblas0-pthread


def find_openblas() -> str | None:
    found = sorted(glob.glob(OPENBLAS_GLOB))
    return found[0] if found else None


def blas_env(openblas: str | None) -> dict:
    """Environment for a child process: OpenBLAS preloaded, or explicitly not."""
    env = dict(os.environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split() if "openblas" not in p]
    if openblas:
        preload.insert(0, openblas)
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    # swallow-server preloads OpenBLAS itself when it finds it: "off" must say so
    env["SWALLOW_OPENBLAS"] = "true" if openblas else "false"
    return env


def blas_in_use(pid: int) -> str:
    """Which BLAS a running process has mapped: 'OpenBLAS' or the reference BLAS mlx ships."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    # numpy ships an OpenBLAS of its own (scipy_openblas): only Debian's counts here.
    return "OpenBLAS" if "/openblas-pthread/" in maps else "reference BLAS (mlx wheel)"


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far: /proc on Linux, ps
    elsewhere (macOS prints it to the hundredth of a second)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except OSError:
        pass
    text = subprocess.run(["ps", "-o", "time=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    days, _, clock = text.rpartition("-")
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds + 86400 * int(days or 0)


def needs_remote_code(model: Path) -> bool:
    """Whether the model's architecture is a file of its own (the bench's near-free and scripted
    models), which mlx-lm and the servers load only with trust_remote_code."""
    try:
        return bool(json.loads((Path(model) / "config.json").read_text()).get("model_file"))
    except (OSError, ValueError):
        return False


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, be sent SIGTERM when the bench process dies, so that
    an interrupted or killed run leaves no server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the orchestrator's own cleanup has to do


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info() -> dict:
    import mlx.core as mx
    import mlx_lm

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram_gb, 1), "os": platform.platform(),
            "python": platform.python_version(), "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
            "device": str(mx.default_device())}


def load_average() -> float:
    return os.getloadavg()[0]


class Server:
    """A server under test in a subprocess, on a free port, until stop()."""

    name = "server"

    def __init__(self, model: Path, openblas: str | None, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        self._log = open(self.log_path, "w")
        env = blas_env(openblas)
        env.update(self.extra_env())
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.command(model), cwd=ROOT, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)

    def command(self, model: Path) -> list:
        raise NotImplementedError

    def extra_env(self) -> dict:
        return {}

    def wait_ready(self, timeout: float = 600) -> float:
        """Seconds from start to answering its health check."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.process.pid)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def blas(self) -> str:
        return blas_in_use(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Swallow(Server):
    name = "swallow-server"

    def command(self, model: Path) -> list:
        return [sys.executable, "-m", "server", "--model", str(model), "--port", str(self.port),
                "--log-level", "warning", *(["--trust-remote-code"] if needs_remote_code(model) else [])]

    def extra_env(self) -> dict:
        # Greedy, and room for 16 streams at once (the defaults, spelled out); a data_dir of its own,
        # so no stored response or prompt-cache snapshot of another run is found there.
        return {"SWALLOW_TEMPERATURE": "0", "SWALLOW_MAX_BATCH_SIZE": "16", "SWALLOW_MAX_CONCURRENCY": "16",
                "SWALLOW_DATA_DIR": tempfile.mkdtemp(prefix="swallow-bench-data-")}


class MlxLmServer(Server):
    name = "mlx_lm.server"

    def command(self, model: Path) -> list:
        # Decode / prefill batch sizes as swallow-server's engine; greedy is its default.
        return [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(self.port),
                "--decode-concurrency", "16", "--prompt-concurrency", "8", "--log-level", "WARNING",
                *(["--trust-remote-code"] if needs_remote_code(model) else [])]


class RawWorker:
    """bench.raw in its own process, loaded and waiting for commands (see bench/raw.py)."""

    name = "raw mlx-lm"

    def __init__(self, model: Path, mode: str, openblas: str | None, log_dir: Path):
        self.mode = mode
        self.log_path = log_dir / f"raw-{mode}-{model.name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.raw", "--model", str(model), "--mode", mode,
             *(["--trust-remote-code"] if needs_remote_code(model) else [])], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=blas_env(openblas), text=True,
            preexec_fn=_die_with_parent)

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"raw mlx-lm ({self.mode}) exited with {self.process.returncode}:\n{self.log_tail()}")
        return json.loads(line)

    def wait_ready(self) -> dict:
        return self._reply()

    def call(self, op: str, **args) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"raw mlx-lm ({self.mode}): {reply['error']}")
        return reply

    def log_tail(self, lines: int = 10) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def blas(self) -> str:
        return blas_in_use(self.process.pid)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
