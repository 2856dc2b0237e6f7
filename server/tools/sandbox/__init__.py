"""The platform's own sandboxes, as command builders: bubblewrap on Linux, Seatbelt on macOS.

A sandbox wraps a command (the interpreter) so that, inside it, there is no network, the system
is read-only, the user's home is not there, and the only writable place is one working directory.

    sandbox, why = find_sandbox(python, dirs)  # None, "why not" when there is none that works
    argv = sandbox.command([python, ...], workdir)

`find_sandbox` runs the interpreter once in it (a probe), so a sandbox that is installed but can't
start here (no user namespaces, an AppArmor rule) is found at startup, with bubblewrap's own
words in the reason, not at the model's first call.
"""

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from server.tools.sandbox.bubblewrap import Bubblewrap
from server.tools.sandbox.seatbelt import Seatbelt

log = logging.getLogger("swallow.tools.sandbox")

__all__ = ["Bubblewrap", "Sandbox", "Seatbelt", "Unsandboxed", "find_sandbox"]


class Sandbox(Protocol):
    name: str
    workdir_shown: str | None  # the working directory's path as the code sees it, when it is always the same
    own_processes: bool  # a PID and user namespace of its own: its processes can be counted and killed
    can_fork: bool  # the code may start processes

    def command(self, argv: list[str], workdir: Path) -> list[str]: ...

    def spawn_options(self, workdir: Path) -> dict: ...  # subprocess options: env, cwd, user

    def prepare(self, workdir: Path) -> None: ...


class Unsandboxed:
    """No sandbox: only the interpreter's own limits. Used only when the setting whose name says
    the risk is on."""

    name = "none"
    workdir_shown = None
    own_processes = False
    can_fork = True

    def command(self, argv: list[str], workdir: Path) -> list[str]:
        return list(argv)

    def spawn_options(self, workdir: Path) -> dict:
        # never the server's own environment: it may hold keys (SWALLOW_API_KEY, HF_TOKEN)
        return {"cwd": str(workdir), "env": {"PATH": os.defpath, "HOME": str(workdir), "TMPDIR": str(workdir),
                                             "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}}

    def prepare(self, workdir: Path) -> None:
        pass


def probe(sandbox: Sandbox, python: str) -> str | None:
    """Run the interpreter in the sandbox once; None if it worked, else why not."""
    with tempfile.TemporaryDirectory(prefix="swallow-probe-") as workdir:
        path = Path(workdir)
        sandbox.prepare(path)
        try:
            done = subprocess.run(sandbox.command([python, "-E", "-s", "-c", "print('ok')"], path),
                                  capture_output=True, text=True, timeout=30, check=False,
                                  **sandbox.spawn_options(path))
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{sandbox.name} could not start: {e}"
        if done.returncode != 0 or done.stdout.strip() != "ok":
            return f"{sandbox.name} could not run {python}: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def find_sandbox(python: str, dirs: list[str]) -> tuple[Sandbox | None, str]:
    """The platform's sandbox, checked by running `python` in it (`dirs`: the directories it runs
    from, shown to it read-only); or None and why."""
    if sys.platform == "darwin":
        sandbox = Seatbelt(dirs)
        if not Path(sandbox.sandbox_exec).exists():
            return None, f"{sandbox.sandbox_exec} is missing"
        why = probe(sandbox, python)
        return (None, why) if why else (sandbox, "Seatbelt (sandbox-exec)")
    if sys.platform.startswith("linux"):
        bwrap = Bubblewrap.find()
        if bwrap is None:
            return None, "bubblewrap is not installed (Debian/Ubuntu: apt install bubblewrap)"
        hidden = Bubblewrap.unreachable(dirs)
        if hidden:
            return None, (f"the server runs as root, so bubblewrap runs as nobody, who can't reach {', '.join(hidden)}; "
                          "set python_executable to an interpreter outside it (e.g. /usr/bin/python3)")
        sandbox = Bubblewrap(bwrap, dirs)
        why = probe(sandbox, python)
        if why and "disable-userns" in why:  # bubblewrap before 0.8: without that extra fence
            sandbox = Bubblewrap(bwrap, dirs, disable_userns=False)
            why = probe(sandbox, python)
        return (None, why) if why else (sandbox, f"bubblewrap ({bwrap})")
    return None, f"no sandbox is known for {sys.platform}"
