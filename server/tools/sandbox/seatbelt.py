"""Seatbelt (macOS's `sandbox-exec -p PROFILE`), the sandbox Codex CLI and Chrome use there.

The profile is fixed text; the paths come as parameters (`-D WORK_DIR=…`), so what it allows can
be read here in full. Seatbelt matches real paths (/private/var/…, not /var/…), so every path
passed is resolved first. Nothing here runs on Linux: its tests check the profile and the command.
"""

import os
from pathlib import Path

SANDBOX_EXEC = "/usr/bin/sandbox-exec"  # by full path: a PATH entry can't stand in for it

PROFILE = """\
(version 1)
(deny default)

; the interpreter runs; it can't start other processes or reach the network
(allow process-exec)
(deny process-fork)
(deny network*)
(allow signal (target self))
(allow sysctl-read)
(allow mach-lookup (global-name "com.apple.system.opendirectoryd.libinfo"))

; it reads the system and its own files, and may stat any path (not read it)
(allow file-read-metadata)
(allow file-read*
  (subpath "/usr") (subpath "/System") (subpath "/Library") (subpath "/private/etc")
  (subpath "/private/var/db/timezone") (subpath "/dev")
  (subpath (param "PYTHON_DIR_1")) (subpath (param "PYTHON_DIR_2")) (subpath (param "PYTHON_DIR_3")))

; it writes only in the conversation's working directory
(allow file-read* file-write* (subpath (param "WORK_DIR")))
(allow file-write-data (literal "/dev/null"))
"""

ENVIRONMENT = {
    "PATH": "/usr/bin:/bin",
    "LANG": "en_US.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "Agg",
}


class Seatbelt:
    name = "seatbelt"
    workdir_shown = None  # the real path of each conversation's directory
    own_processes = False
    can_fork = False

    def __init__(self, readable: list[str], sandbox_exec: str = SANDBOX_EXEC):
        self.sandbox_exec = sandbox_exec
        dirs = [os.path.realpath(d) for d in readable][:3]
        self.python_dirs = dirs + [dirs[0] if dirs else "/usr"] * (3 - len(dirs))  # the profile names three

    def command(self, argv: list[str], workdir: Path) -> list[str]:
        params = {"WORK_DIR": os.path.realpath(workdir)}
        params.update({f"PYTHON_DIR_{i}": d for i, d in enumerate(self.python_dirs, 1)})
        return [self.sandbox_exec, "-p", PROFILE,
                *(arg for key, value in params.items() for arg in ("-D", f"{key}={value}")), *argv]

    def spawn_options(self, workdir: Path) -> dict:
        home = os.path.realpath(workdir)
        return {"cwd": home, "env": {**ENVIRONMENT, "HOME": home, "TMPDIR": home}}

    def prepare(self, workdir: Path) -> None:
        os.chmod(workdir, 0o700)
