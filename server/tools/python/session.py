"""The python tool: one sandboxed, stateful interpreter per conversation.

`PythonTool` is shared (the sandbox, the limits, the interpreters alive); `tool.session(key)` is a
conversation's interpreter, started at its first call and kept between calls: variables, imports
and the files in its working directory stay until the conversation has been idle for
`idle_timeout` seconds (or more than `max_interpreters` conversations want one: the longest idle
goes first). Then the process is killed and the directory removed.

A call never raises for what the code does; `PythonResult.output` is what the model reads, errors
and limits included:
- an exception: its traceback (the interpreter lives on);
- past the time limit: the code is interrupted (TimeoutError), variables kept; if it doesn't stop
  within a few seconds the sandbox is killed and the next call starts a fresh interpreter;
- more output than `max_output_kb`: cut, with a note; a flood past what the server will read
  (written below Python, e.g. by a subprocess) stops the interpreter;
- memory past `memory_mb`: MemoryError; a process that dies (killed, crashed): said so, restarted;
- a working directory past `max_disk_mb`: the interpreter is stopped and its files removed.
"""

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from openai_harmony import ToolNamespaceConfig

from server.tools.python.interpreter import Interpreter
from server.tools.sandbox import Sandbox

log = logging.getLogger("swallow.tools.python")

RUNNER = (Path(__file__).parent / "runner.py").read_text()
READ = 64 * 1024
RESTARTED = "[The interpreter was restarted: variables from earlier calls are gone.]\n"


@dataclass(frozen=True)
class PythonLimits:
    timeout: float = 30.0  # seconds of wall clock (and of CPU) per call
    memory_mb: int = 1024  # address space of each process
    max_processes: int = 16  # processes and threads in the sandbox (where it has its own)
    max_output_kb: int = 16  # output of one call the model sees
    max_disk_mb: int = 256  # files in the working directory, together and each

    @property
    def max_output_chars(self) -> int:
        return self.max_output_kb * 1024

    @property
    def flood_bytes(self) -> int:
        """Output read from the pipe in one call before the interpreter is stopped."""
        return max(8 * 1024 * 1024, 64 * self.max_output_chars)


@dataclass
class PythonResult:
    output: str  # the tool message the model reads
    error: str | None = None  # set when the call failed as a call (timed out, interpreter lost, ...)
    restarted: bool = False  # a fresh interpreter ran it: earlier variables were gone


class Stopped(Exception):
    """The interpreter had to be stopped; the message says why, for the model."""

    def __init__(self, message: str, output: bytes = b""):
        super().__init__(message)
        self.output = output  # what the call had printed


def namespace(description: str) -> ToolNamespaceConfig:
    return ToolNamespaceConfig(name="python", description=description, tools=[])


class PythonTool:
    def __init__(self, sandbox: Sandbox, interpreter: Interpreter, limits: PythonLimits = PythonLimits(),
                 work_dir: str | Path = "", idle_timeout: float = 600.0, max_interpreters: int = 8,
                 grace: float = 5.0):
        self.sandbox = sandbox
        self.interpreter = interpreter
        self.limits = limits
        self.base = Path(work_dir or tempfile.gettempdir()) / f"swallow-python-{os.getuid()}"
        self.idle_timeout = idle_timeout
        self.max_interpreters = max_interpreters
        self.grace = grace  # seconds the code gets to stop after its time is up, before the sandbox is killed
        self.sessions: dict[str, PythonSession] = {}
        self.expired: dict[str, None] = {}  # conversations whose interpreter was stopped for idleness (recent ones)

    # ---- what the model is told ---------------------------------------------------------------
    def description(self) -> str:
        """The truth about this interpreter, in the words of harmony's stock python description
        where they still hold (it promises a Jupyter notebook, 120 s and /mnt/data)."""
        limits = self.limits
        if self.sandbox.workdir_shown:
            where = f"`{self.sandbox.workdir_shown}` (the current directory; /tmp is scratch space)"
        else:
            where = "the current directory"
        processes = ("Processes the code starts are stopped when the call ends." if self.sandbox.can_fork
                     else "The code cannot start other processes.")
        packages = (f" Installed packages include {', '.join(self.interpreter.packages)}."
                    if self.interpreter.packages else " Only the standard library is installed.")
        return (
            "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
            "This tool should be used for internal reasoning, but not for code that is intended to be visible to "
            "the user (e.g. when creating plots, tables, or files).\n\n"
            f"When you send a message containing Python code to python, it will be executed in a stateful Python "
            f"{self.interpreter.version} interpreter: variables and imports are kept from one call to the next, "
            "and the value of the last expression is shown, as in a notebook (without notebook magics or rich "
            f"display). python will respond with the output of the execution or time out after "
            f"{limits.timeout:g} seconds. Only {where} can be written to; files saved there are kept while this "
            f"conversation goes on and deleted after {duration(self.idle_timeout)} without a call. "
            f"There is no internet access. Each process may use {limits.memory_mb} MB of memory. {processes} "
            f"Output beyond {limits.max_output_kb} KB is cut.{packages}"
        )

    def namespace(self) -> ToolNamespaceConfig:
        return namespace(self.description())

    # ---- conversations ------------------------------------------------------------------------
    def session(self, key: str) -> "PythonSession":
        """The interpreter of conversation `key` (made at first use; its process starts at the first call)."""
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = PythonSession(self, key)
            if self.expired.pop(key, False) is None:  # it had one: say that its state is gone
                session.calls = 1
                session.restart_note = (f"[This conversation's interpreter was stopped after "
                                        f"{duration(self.idle_timeout)} without a call: variables and files "
                                        "from earlier calls are gone.]\n")
        session.touch()
        return session

    async def run(self, key: str, code: str) -> PythonResult:
        return await self.session(key).run(code)

    async def make_room(self, keep: "PythonSession") -> None:
        """Stop the longest-idle interpreters past max_interpreters (never one in a call)."""
        alive = [s for s in self.sessions.values() if s.process is not None and s is not keep]
        while len(alive) + 1 > self.max_interpreters:
            idle = [s for s in alive if not s.lock.locked()]
            if not idle:
                raise Stopped(f"{self.max_interpreters} conversations are running python at this moment; "
                              "try again later")
            oldest = min(idle, key=lambda s: s.last_used)
            log.info("python: stopping %s's interpreter to make room (max_interpreters = %d)",
                     oldest.key, self.max_interpreters)
            await oldest.close()
            alive.remove(oldest)

    async def close(self) -> None:
        """Stop every interpreter and remove every working directory (the server is stopping)."""
        for session in list(self.sessions.values()):
            await session.close()

    def workdir(self) -> Path:
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        found = os.lstat(self.base)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():  # someone else's, in a shared /tmp
            raise Stopped(f"{self.base} is not a directory of this server's user; python can't keep files there")
        os.chmod(self.base, 0o711)  # the sandbox's user (nobody, under root) passes through, can't list
        path = Path(tempfile.mkdtemp(prefix="conversation-", dir=self.base))
        self.sandbox.prepare(path)
        return path


class PythonSession:
    """One conversation's interpreter: a process in the sandbox, its working directory."""

    def __init__(self, tool: PythonTool, key: str):
        self.tool = tool
        self.key = key
        self.lock = asyncio.Lock()  # one call at a time
        self.process: asyncio.subprocess.Process | None = None
        self.workdir: Path | None = None
        self.pending = bytearray()  # output read past the last call's end
        self.calls = 0  # calls this interpreter has run (0: the next starts it)
        self.last_used = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_task: asyncio.Task | None = None
        self.reaping: asyncio.Task | None = None
        self.restart_note = RESTARTED

    def touch(self) -> None:
        self.last_used = time.monotonic()
        if self.idle_timer:
            self.idle_timer.cancel()
            self.idle_timer = None

    async def run(self, code: str) -> PythonResult:
        async with self.lock:
            self.touch()
            try:
                return await self._run(code)
            finally:
                self.touch()
                loop = asyncio.get_running_loop()
                self.idle_timer = loop.call_later(self.tool.idle_timeout, self._start_idle_check, loop)

    async def _run(self, code: str) -> PythonResult:
        limits = self.tool.limits
        restarted = False
        try:
            if self.process is None or self.process.returncode is not None:
                restarted = self.calls > 0
                await self._start()
            token = secrets.token_hex(16)
            self.process.stdin.write(json.dumps({"code": code, "token": token}).encode() + b"\n")
            await self.process.stdin.drain()
            output, cut = await asyncio.wait_for(self._collect(token), limits.timeout + self.tool.grace)
        except asyncio.CancelledError:  # the request went away mid-call: the code must not run on
            process = self._kill()
            if process is not None:
                self.reaping = asyncio.get_running_loop().create_task(reap(process))
            raise
        except TimeoutError:
            await self._stop()
            error = (f"the code ran past {limits.timeout:g} s and did not stop when interrupted; the interpreter "
                     "was stopped, and its variables are gone (the files remain)")
            return PythonResult(self._note(b"", error), error, restarted)
        except Stopped as e:
            await self._stop()
            return PythonResult(self._note(e.output, str(e)), str(e), restarted)
        except (ConnectionError, EOFError) as e:  # the process is gone (its pipe closed)
            try:
                status = await asyncio.wait_for(self.process.wait(), 2)
            except TimeoutError:
                status = None
            await self._stop()
            error = (f"the interpreter ended ({describe_exit(status)}); the next call starts a fresh one "
                     "(variables are gone, the files remain)")
            return PythonResult(self._note(getattr(e, "output", b""), error), error, restarted)
        finally:
            self.calls += 1
        text = output.decode("utf-8", "replace")
        if cut:
            text += f"\n[... output cut: past the limit of {limits.max_output_kb} KB]"
        error = None
        if self._disk_used() > limits.max_disk_mb * 1024 * 1024:
            error = (f"the working directory grew past {limits.max_disk_mb} MB; the interpreter was stopped and "
                     "its files removed")
            await self._stop(clear=True)
            text += f"\n[{error}]"
        if restarted:
            text = self.restart_note + text
            self.restart_note = RESTARTED
        return PythonResult(text, error, restarted)

    def _note(self, output: bytes, error: str) -> str:
        text = output.decode("utf-8", "replace")[:self.tool.limits.max_output_chars]
        return (text + "\n" if text else "") + f"[{error}]"

    async def _start(self) -> None:
        tool = self.tool
        await tool.make_room(self)
        if self.workdir is None:
            self.workdir = tool.workdir()
        limits = tool.limits
        config = {"timeout": limits.timeout, "memory_mb": limits.memory_mb, "max_file_mb": limits.max_disk_mb,
                  "max_output": limits.max_output_chars, "kill_others": tool.sandbox.own_processes,
                  "max_processes": limits.max_processes if tool.sandbox.own_processes else 0}
        argv = tool.sandbox.command([tool.interpreter.path, "-E", "-s", "-c", RUNNER, json.dumps(config)],
                                    self.workdir)
        self.process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, limit=READ, **tool.sandbox.spawn_options(self.workdir))
        self.pending.clear()
        log.info("python: started an interpreter for %s (%s, pid %d)", self.key, tool.sandbox.name, self.process.pid)

    async def _collect(self, token: str) -> tuple[bytes, bool]:
        """The call's output, up to the line `<token> {...}` the runner ends it with: (the first
        bytes of it, whether more was cut)."""
        marker = b"\n" + token.encode() + b" "
        limits = self.tool.limits
        # the runner cuts the code's own output at max_output characters (up to 4 bytes each in
        # UTF-8), then may add a traceback; this cut is for what is written below Python
        keep_bytes = 4 * limits.max_output_chars + 16 * 1024
        kept, seen = bytearray(), 0
        buffer, self.pending = self.pending, bytearray()

        def take(data) -> None:
            nonlocal seen
            seen += len(data)
            room = keep_bytes - len(kept)
            if room > 0:
                kept.extend(data[:room])

        while True:
            at = buffer.find(marker)
            if at >= 0:
                take(buffer[:at])
                rest = buffer[at + len(marker):]
                while b"\n" not in rest:
                    chunk = await self.process.stdout.read(READ)
                    if not chunk:
                        raise EOFError
                    rest += chunk
                line, _, self.pending = rest.partition(b"\n")
                self.pending = bytearray(self.pending)
                json.loads(line)  # {"dropped": characters the runner cut}
                return bytes(kept), seen > keep_bytes
            safe = len(buffer) - (len(marker) - 1)  # the tail may be the start of the marker
            if safe > 0:
                take(buffer[:safe])
                del buffer[:safe]
            if seen > limits.flood_bytes:
                raise Stopped(f"the code wrote more than {limits.flood_bytes // (1024 * 1024)} MB of output; "
                              "the interpreter was stopped, and its variables are gone (the files remain)",
                              bytes(kept))
            chunk = await self.process.stdout.read(READ)
            if not chunk:
                take(buffer)
                error = EOFError()
                error.output = bytes(kept)
                raise error
            buffer += chunk

    def _disk_used(self) -> int:
        total = 0
        for root, dirs, files in os.walk(self.workdir):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    pass
        return total

    def _kill(self) -> asyncio.subprocess.Process | None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the sandbox's whole process group
            except ProcessLookupError:
                pass
        return process

    async def _stop(self, clear: bool = False) -> None:
        process = self._kill()
        if process is not None:
            await reap(process)
        if clear and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _start_idle_check(self, loop: asyncio.AbstractEventLoop) -> None:
        self.idle_task = loop.create_task(self._idle())  # held: a task no one holds may be collected

    async def _idle(self) -> None:
        if not self.lock.locked() and time.monotonic() - self.last_used >= self.tool.idle_timeout - 0.5:
            log.info("python: %s idle for %g s: interpreter stopped, files removed", self.key, self.tool.idle_timeout)
            await self.close()
            expired = self.tool.expired
            expired[self.key] = None
            while len(expired) > 10_000:
                del expired[next(iter(expired))]

    async def close(self) -> None:
        """Stop the interpreter and remove the working directory."""
        self.touch()
        await self._stop(clear=True)
        if self.tool.sessions.get(self.key) is self:
            del self.tool.sessions[self.key]


async def reap(process: asyncio.subprocess.Process) -> None:
    """Wait for a killed sandbox to be gone. asyncio's wait() returns only once every pipe is closed,
    and a pipe we stopped reading (a flood) never gets there on its own: read it to its end."""
    process.stdin.close()
    try:
        async with asyncio.timeout(10):
            while await process.stdout.read(READ):
                pass
            await process.wait()
    except TimeoutError:
        log.warning("python: sandbox pid %d did not go away within 10 s of SIGKILL", process.pid)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} seconds"
    return f"{seconds / 60:g} minutes" if seconds < 7200 else f"{seconds / 3600:g} hours"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
