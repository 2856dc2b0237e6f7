"""bubblewrap (Debian's `bubblewrap`): Linux namespaces, no setuid helper.

What the code inside sees: a fresh root with /usr, /bin, /lib*, /sbin and /etc read-only, the
interpreter's own directories read-only (a virtualenv, wherever it lives), a private /proc, a
minimal /dev, a /tmp of its own (in memory, `tmp_mb` at most, gone with the interpreter), and the
conversation's working directory at /mnt/data, the only place on disk it can write. No /home,
/root, /run (no sockets of the host's), /sys or /var. New user, PID, network, IPC, UTS and cgroup
namespaces: no network interface but its own loopback, no process of the host in sight, and the
whole sandbox dies with its parent.

As root, bubblewrap is started as `nobody`: root is exempt from the process limit (RLIMIT_NPROC),
and `nobody` has nothing to find on the host anyway. The interpreter must then be where `nobody`
can reach it (not under /root).
"""

import os
import shutil
from pathlib import Path

WORKDIR = "/mnt/data"
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
NOBODY = 65534
ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORKDIR,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "Agg",  # matplotlib draws to files
    "OPENBLAS_NUM_THREADS": "1",  # each thread counts against the process limit
    "OMP_NUM_THREADS": "1",
}


class Bubblewrap:
    name = "bubblewrap"
    workdir_shown = WORKDIR
    own_processes = True
    can_fork = True

    def __init__(self, bwrap: str, readable: list[str] = (), disable_userns: bool = True, tmp_mb: int = 64):
        self.bwrap = bwrap
        self.tmp_mb = tmp_mb  # /tmp is the sandbox's own, in memory: this size at most
        self.readable = [d for d in readable if not any(d == s or d.startswith(s + "/") for s in SYSTEM)]
        self.disable_userns = disable_userns

    @staticmethod
    def find() -> str | None:
        return shutil.which("bwrap")

    def command(self, argv: list[str], workdir: Path) -> list[str]:
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--hostname", "sandbox", "--clearenv"]
        if self.disable_userns:  # no nested user namespaces (bubblewrap 0.8+)
            args.append("--disable-userns")
        for key, value in ENVIRONMENT.items():
            args += ["--setenv", key, value]
        for path in SYSTEM:
            if os.path.islink(path):  # merged /usr: /bin -> usr/bin
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in self.readable:
            args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp",
                 "--bind", str(workdir), WORKDIR, "--chdir", WORKDIR, "--", *argv]
        return args

    def spawn_options(self, workdir: Path) -> dict:
        options = {"env": {}}  # the sandbox's environment is set by --setenv alone
        if os.geteuid() == 0:
            # not Popen's user/group/extra_groups: uvloop's subprocesses (the server's event loop) refuse them
            options["preexec_fn"] = become_nobody
        return options

    @staticmethod
    def unreachable(paths: list[str]) -> list[str]:
        """The paths bubblewrap won't reach: under root it runs as nobody, who must be able to pass
        through every directory above them (o+x); /root, where pyenv puts Pythons, is 0700."""
        if os.geteuid() != 0:
            return []
        return [p for p in paths if not reachable_by_others(p)]

    def prepare(self, workdir: Path) -> None:
        """Make the working directory the sandbox's own (nobody's, when the server is root)."""
        if os.geteuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)  # its parents must let nobody pass (o+x)
        os.chmod(workdir, 0o700)


def reachable_by_others(path: str) -> bool:
    parts = Path(path).parts
    return all(os.stat(Path(*parts[:i])).st_mode & 0o001 for i in range(1, len(parts) + 1))


def become_nobody() -> None:
    """In the child, before bubblewrap starts: no groups, then nobody's group and user (in that order:
    once it is nobody, it may no longer change them)."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
