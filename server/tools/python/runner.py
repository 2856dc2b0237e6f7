"""The interpreter loop that runs inside the sandbox (standard library only; its source is passed
with `python -c`, so nothing of the server's tree needs to be visible in there).

    python -E -s -c "<this file>" '{"timeout": 30, "memory_mb": 1024, ...}'

It reads one request per line on stdin, `{"code": "...", "token": "..."}`, runs the code in one
namespace kept across requests (the conversation's state), and writes the output to stdout; then a
last line `<token> {"dropped": N, "stopped": "..."}` that tells the server the call is over. The
token is random per call, so the code's own output can't end a call early by accident.

Limits, set here on itself (they pass to every process the code starts): address space, file size,
open files, core dumps; the number of processes when the sandbox has its own user namespace (set
from inside, so it counts only the sandbox's processes); per call, CPU time and a wall-clock alarm
that stop the code with an exception, keeping the namespace. The server kills the whole sandbox
when a call runs past its limit anyway. Output past `max_output` characters is dropped here,
before it reaches the pipe. After each call every other process in the sandbox is killed, so
nothing the code started outlives it.
"""

import ast
import io
import json
import math
import os
import resource
import signal
import sys
import time
import traceback


class TimeLimit(BaseException):
    """Raised into the code when its time is up (BaseException: `except Exception` won't eat it)."""


class CappedOutput(io.TextIOBase):
    """sys.stdout / sys.stderr: written through to fd 1 up to a budget per call, then counted."""

    def __init__(self):
        self.budget = self.left = self.dropped = 0

    def reset(self, budget: int):
        self.budget = self.left = budget
        self.dropped = 0

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.left <= 0:
            self.dropped += len(text)
            return len(text)
        kept = text[:self.left]
        self.left -= len(kept)
        self.dropped += len(text) - len(kept)
        if self.dropped:  # the budget ran out here: say so where it happened
            kept += f"\n[... output cut here: past the limit of {self.budget // 1024} KB]\n"
        data = kept.encode("utf-8", "replace")
        while data:
            data = data[os.write(1, data):]
        return len(text)

    @property
    def encoding(self):
        return "utf-8"

    def notice(self, text: str, most: int = 4000) -> None:
        """An error or a limit reached: shown even past the budget (its end, when it is long)."""
        if len(text) > most:
            text = "...\n" + text[-most:]
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(1, data):]


OUTPUT = CappedOutput()


def limit(kind: int, value: int) -> None:
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass  # not lowerable here (macOS refuses some): the sandbox and the server's kill remain


def run_cell(code: str, namespace: dict) -> None:
    """Like a notebook cell: run the statements; if the last is an expression, show its value."""
    try:
        tree = ast.parse(code, "<python>", "exec")
    except SyntaxError as e:
        OUTPUT.notice("".join(traceback.format_exception_only(type(e), e)))
        return
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    try:
        exec(compile(tree, "<python>", "exec"), namespace)
        if last is not None:
            value = eval(compile(last, "<python>", "eval"), namespace)
            if value is not None:
                print(repr(value))
    except TimeLimit as e:
        OUTPUT.notice(f"TimeoutError: {e}\n")
    except SystemExit:
        OUTPUT.notice("SystemExit: exit() ends nothing here; the interpreter keeps running\n")
    except BaseException as e:
        # the code's frames only: drop this function's own
        OUTPUT.notice("".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)))


def kill_others() -> None:
    """Every process in this sandbox's PID namespace but its init and this one: kill(-1) signals
    them all at once (forks wait meanwhile); then ours are reaped, and the rest (reaped by init)
    waited for, up to a second, so the next call starts with the process count back down."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        return  # there were none
    while True:
        try:
            os.waitpid(-1, 0)
        except OSError:  # ChildProcessError: no child left
            break
    me = str(os.getpid())
    for _ in range(100):
        others = [p for p in os.listdir("/proc") if p.isdigit() and p not in ("1", me)]
        if not others:
            return
        time.sleep(0.01)


def main() -> None:
    config = json.loads(sys.argv[1])
    timeout = config["timeout"]
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the code's stdin is empty, not our requests
    sys.stdin = open(os.devnull)

    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_AS, config["memory_mb"] * 1024 * 1024)
    limit(resource.RLIMIT_FSIZE, config["max_file_mb"] * 1024 * 1024)
    limit(resource.RLIMIT_NOFILE, 256)
    if config.get("max_processes"):
        limit(resource.RLIMIT_NPROC, config["max_processes"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file too big: an OSError, not death

    def stop(signum, frame):
        what = "CPU time" if signum == signal.SIGXCPU else "time"
        raise TimeLimit(f"the code ran past its {what} limit of {timeout:g} s and was stopped "
                        "(variables defined before are kept)")

    signal.signal(signal.SIGALRM, stop)
    signal.signal(signal.SIGXCPU, stop)

    output = OUTPUT
    sys.stdout = sys.stderr = output
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    me = os.getpid()
    for line in requests:
        request = json.loads(line)
        output.reset(config["max_output"])
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft_cpu = math.ceil(used.ru_utime + used.ru_stime + timeout)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            run_cell(request["code"], namespace)
        except TimeLimit as e:  # the alarm rang just after the code ended
            output.notice(f"TimeoutError: {e}\n")
        finally:
            if os.getpid() != me:  # a process the code forked, back here: it has no call to finish
                os._exit(0)
            signal.setitimer(signal.ITIMER_REAL, 0)
        if config.get("kill_others"):
            kill_others()
        done = json.dumps({"dropped": output.dropped})
        data = f"\n{request['token']} {done}\n".encode()
        while data:
            data = data[os.write(1, data):]


main()
