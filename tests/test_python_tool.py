"""The python tool: a stateful interpreter per conversation, in the platform's sandbox.

Every escape a model's code might try is run for real in bubblewrap and must be contained, and
each test checks the words the model would read. Seatbelt can't run on Linux: its profile and the
command built from it are checked as text."""

import asyncio
import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from server.config import load_settings
from server.tools import python as python_tool
from server.tools.python import PythonLimits, PythonTool, inspect
from server.tools.sandbox import Bubblewrap, Seatbelt, Unsandboxed, find_sandbox
from server.tools.sandbox.seatbelt import PROFILE

LIMITS = PythonLimits(timeout=2, memory_mb=256, max_processes=16, max_output_kb=4, max_disk_mb=8)


def sandbox_python() -> str:
    """The interpreter to run in the sandbox: this one, unless tests run as root (bubblewrap then
    runs as nobody) and this one lives where nobody can't go, like pyenv under /root."""
    if Bubblewrap.unreachable(inspect(sys.executable).dirs):
        return "/usr/bin/python3"
    return sys.executable


@pytest.fixture(scope="module")
def sandboxed():
    if not sys.platform.startswith("linux") or shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt install bubblewrap; .ci/run installs it)")
    interpreter = inspect(sandbox_python())
    sandbox, why = find_sandbox(interpreter.path, interpreter.dirs)
    if sandbox is None:  # e.g. in Docker, whose seccomp profile refuses user namespaces
        pytest.skip(f"bubblewrap can't run here: {why}")
    return sandbox, interpreter


@pytest.fixture
def work_dir():
    """Where the working directories go: one the sandbox's user can reach. (Under root that is
    nobody, and pytest's tmp_path is private to root; the system's temp dir, the default, is not.)"""
    path = Path(tempfile.mkdtemp(prefix="swallow-test-python-"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_tool(sandboxed, work_dir, **options) -> PythonTool:
    sandbox, interpreter = sandboxed
    return PythonTool(sandbox, interpreter, options.pop("limits", LIMITS), work_dir=work_dir, grace=1, **options)


def run(scenario):
    return asyncio.run(scenario)


def test_state_and_files_last_for_the_conversation(sandboxed, work_dir):
    async def scenario():
        tool = make_tool(sandboxed, work_dir)
        calls = [("a", "x = 41\nx + 1"), ("a", "print(x); import math"), ("a", "math.sqrt(x + 8)"),
                 ("a", "open('notes.txt', 'w').write('覚え書き'); import os; os.getcwd()"),
                 ("b", "x"), ("b", "import os; os.listdir('.')"), ("a", "open('/mnt/data/notes.txt').read()")]
        outputs = [(await tool.run(key, code)).output for key, code in calls]
        workdirs = {key: session.workdir for key, session in tool.sessions.items()}
        await tool.close()
        return outputs, workdirs

    outputs, workdirs = run(scenario())
    assert outputs[:4] == ["42\n", "41\n", "7.0\n", "'/mnt/data'\n"]
    assert outputs[4].endswith("NameError: name 'x' is not defined\n")  # conversation b has its own interpreter
    assert outputs[5] == "[]\n"  # and its own working directory
    assert outputs[6] == "'覚え書き'\n"
    assert all(not path.exists() for path in workdirs.values())  # closed: the files are gone too


def test_escapes_are_contained(sandboxed, work_dir):
    """The network, the disk outside the working directory, the user's home, a fork bomb, an endless
    loop, one that ignores the interrupt, 100 MB of output, memory and disk exhaustion: each stopped,
    with the words the model reads."""
    listener = socket.create_server(("127.0.0.1", 0))  # a port on the host the code must not reach
    port = listener.getsockname()[1]
    host_tmp = Path("/tmp") / f"escape-{uuid.uuid4().hex}"
    home = str(Path.home())

    async def scenario():
        tool = make_tool(sandboxed, work_dir)
        session = tool.session("conversation")
        results = {}
        for name, code in {
            "state": "kept = 'still here'",
            "internet": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
            "host port": f"socket.create_connection(('127.0.0.1', {port}), timeout=2)",
            "etc": "open('/etc/escape', 'w')",
            "usr": "open('/usr/escape', 'w')",
            "host tmp": f"open('{host_tmp}', 'w').write('x'); 'written'",
            "home": f"import os; (os.path.exists({home!r}), os.listdir('/'))",
            "fork bomb": "import os\nwhile True:\n    os.fork()",
            "after the bomb": ("import os\nalive = [p for p in os.listdir('/proc') if p.isdigit() and "
                               "open(f'/proc/{p}/stat').read().split()[2] != 'Z']\nkept, len(alive)"),
            "endless loop": "while True:\n    pass",
            "ignores the interrupt": "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException: pass",
            "after the kill": "kept",
            "100 MB printed": "print('x' * 100_000_000)",
            "100 MB written below Python": "import os\nfor _ in range(1600):\n    os.write(1, b'y' * 65536)",
            "memory": "big = bytearray(2 * 1024 ** 3)",
            "memory, bit by bit": "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
            "memory back": "del chunks; 'freed'",
            "one big file": "open('big.bin', 'wb').write(b'0' * (9 * 1024 * 1024))",
            "many files": "for i in range(10):\n    open(f'part{i}.bin', 'wb').write(b'0' * (1024 * 1024))",
            "after the disk": "import os; os.listdir('.')",
        }.items():
            results[name] = await session.run(code)
        await tool.close()
        return results

    try:
        results = run(scenario())
    finally:
        listener.close()
    out = {name: result.output for name, result in results.items()}
    assert out["internet"].endswith("OSError: [Errno 101] Network is unreachable\n")
    assert out["host port"].endswith("ConnectionRefusedError: [Errno 111] Connection refused\n")  # its own loopback
    assert out["etc"].endswith("OSError: [Errno 30] Read-only file system: '/etc/escape'\n")
    assert out["usr"].endswith("OSError: [Errno 30] Read-only file system: '/usr/escape'\n")
    assert out["host tmp"] == "'written'\n" and not host_tmp.exists()  # its /tmp is its own
    exists, root = eval(out["home"])
    assert exists is False and not {"home", "root", "run", "sys", "var"} & set(root)
    assert "BlockingIOError: [Errno 11] Resource temporarily unavailable" in out["fork bomb"]
    assert out["after the bomb"] == "('still here', 2)\n"  # the bomb's processes are gone, the state is not
    assert out["endless loop"] == ("TimeoutError: the code ran past its time limit of 2 s and was stopped "
                                   "(variables defined before are kept)\n")
    assert results["ignores the interrupt"].error == (
        "the code ran past 2 s and did not stop when interrupted; the interpreter was stopped, and its "
        "variables are gone (the files remain)")
    assert out["after the kill"].startswith("[The interpreter was restarted: variables from earlier calls are gone.]")
    assert out["after the kill"].endswith("NameError: name 'kept' is not defined\n")
    assert len(out["100 MB printed"]) < 5000
    assert out["100 MB printed"].endswith("\n[... output cut here: past the limit of 4 KB]\n")
    assert results["100 MB written below Python"].error == (
        "the code wrote more than 8 MB of output; the interpreter was stopped, and its variables are gone "
        "(the files remain)")
    assert len(out["100 MB written below Python"]) < 5000
    assert out["memory"].endswith("MemoryError\n") and out["memory, bit by bit"].endswith("MemoryError\n")
    assert out["memory back"] == "'freed'\n"  # the interpreter lived through it
    assert out["one big file"].endswith("OSError: [Errno 27] File too large\n")
    assert results["many files"].error == ("the working directory grew past 8 MB; the interpreter was stopped "
                                           "and its files removed")
    assert out["after the disk"].endswith("[]\n")


def test_idle_interpreters_go_and_the_model_is_told(sandboxed, work_dir, caplog):
    async def scenario():
        tool = make_tool(sandboxed, work_dir, idle_timeout=0.5, max_interpreters=2)
        await tool.run("a", "x = 1")
        await tool.run("b", "y = 2")
        await tool.run("c", "z = 3")  # a third: the longest idle one (a) is stopped
        alive = sorted(key for key, s in tool.sessions.items() if s.process is not None)
        await asyncio.sleep(1.0)
        idle_gone = not tool.sessions and not any(work_dir.glob("swallow-python-*/conversation-*"))
        after = await tool.run("b", "y")
        await tool.close()
        return alive, idle_gone, after

    with caplog.at_level(logging.INFO, "swallow.tools.python"):
        alive, idle_gone, after = run(scenario())
    assert alive == ["b", "c"] and idle_gone
    assert after.restarted and after.output.startswith(
        "[This conversation's interpreter was stopped after 0.5 seconds without a call: variables and files "
        "from earlier calls are gone.]\n")
    assert "python: stopping a's interpreter to make room (max_interpreters = 2)" in caplog.text


def test_a_call_cancelled_midway_stops_its_code(sandboxed, work_dir):
    async def scenario():
        tool = make_tool(sandboxed, work_dir, limits=PythonLimits(timeout=30))
        session = tool.session("a")
        await session.run("import time")
        call = asyncio.create_task(session.run("time.sleep(60)"))
        await asyncio.sleep(0.5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        after = await session.run("'fresh'")
        await tool.close()
        return after

    after = run(scenario())
    assert after.restarted and after.output.endswith("'fresh'\n")  # the sleeping interpreter was stopped


def test_the_description_says_what_is_true(sandboxed, work_dir):
    tool = make_tool(sandboxed, work_dir, idle_timeout=600)
    config = tool.namespace()
    assert config.name == "python" and config.tools == []
    text = config.description
    for fact in ("stateful Python 3.", "time out after 2 seconds", "`/mnt/data`", "deleted after 10 minutes",
                 "no internet access", "256 MB of memory", "Processes the code starts are stopped",
                 "Output beyond 4 KB is cut"):
        assert fact in text, fact
    assert "Jupyter" not in text and "120" not in text


def test_settings_turn_it_on_only_with_a_sandbox(work_dir, monkeypatch, caplog):
    assert python_tool.from_settings(load_settings(overrides={})) is None  # off by default
    base = {"python_tool": True, "python_executable": sandbox_python(), "python_work_dir": str(work_dir)}
    if shutil.which("bwrap"):
        tool = python_tool.from_settings(load_settings(overrides=base))
        assert isinstance(tool.sandbox, Bubblewrap) and tool.limits.timeout == 30
        hidden = Bubblewrap.unreachable(inspect(sys.executable).dirs)
        if hidden:  # root, with this interpreter under /root: said, not offered
            with caplog.at_level(logging.WARNING, "swallow.tools.python"):
                assert python_tool.from_settings(load_settings(overrides={**base, "python_executable": ""})) is None
            assert f"bubblewrap runs as nobody, who can't reach {hidden[0]}" in caplog.text
    monkeypatch.setattr(Bubblewrap, "find", staticmethod(lambda: None))  # as on a machine without it
    with caplog.at_level(logging.WARNING, "swallow.tools.python"):
        assert python_tool.from_settings(load_settings(overrides=base)) is None
    assert "python: not offered: no sandbox: bubblewrap is not installed (Debian/Ubuntu: apt install bubblewrap)" \
        in caplog.text
    risky = python_tool.from_settings(load_settings(overrides={**base, "python_unsandboxed_i_understand_the_risk": True}))
    assert isinstance(risky.sandbox, Unsandboxed) and "RUNNING WITHOUT A SANDBOX" in caplog.text

    async def environment():
        result = await risky.run("a", "import os; sorted(os.environ)")
        await risky.close()
        return result.output

    assert run(environment()) == "['HOME', 'LANG', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'TMPDIR']\n"  # none of ours


def test_bubblewrap_and_seatbelt_commands(tmp_path):
    bwrap = Bubblewrap("/usr/bin/bwrap", ["/opt/venv", "/usr"]).command(["python", "-c", "pass"], tmp_path)
    text = " ".join(bwrap)
    for flag in ("--unshare-all --unshare-user --die-with-parent --new-session", "--clearenv", "--disable-userns",
                 "--ro-bind /usr /usr", "--ro-bind /etc /etc", "--ro-bind /opt/venv /opt/venv", "--proc /proc",
                 f"--bind {tmp_path} /mnt/data --chdir /mnt/data -- python -c pass"):
        assert flag in text, flag
    assert "/home" not in text and "/root" not in text and "/run" not in text and "--share-net" not in text

    seatbelt = Seatbelt(["/opt/homebrew/Cellar/python@3.12/3.12.4", "/Users/me/venv"])
    argv = seatbelt.command(["python3", "-c", "pass"], tmp_path)
    assert argv[:3] == ["/usr/bin/sandbox-exec", "-p", PROFILE]
    assert argv[3:11] == ["-D", f"WORK_DIR={os.path.realpath(tmp_path)}",
                          "-D", "PYTHON_DIR_1=/opt/homebrew/Cellar/python@3.12/3.12.4",
                          "-D", "PYTHON_DIR_2=/Users/me/venv", "-D", "PYTHON_DIR_3=/opt/homebrew/Cellar/python@3.12/3.12.4"]
    assert argv[11:] == ["python3", "-c", "pass"]
    # The profile: closed by default, no network, no new processes, writes only in WORK_DIR.
    assert PROFILE.count("(") == PROFILE.count(")")
    assert "(deny default)" in PROFILE and "(deny network*)" in PROFILE and "(deny process-fork)" in PROFILE
    writes = [line for line in PROFILE.splitlines() if "file-write" in line]
    assert writes == ['(allow file-read* file-write* (subpath (param "WORK_DIR")))',
                      '(allow file-write-data (literal "/dev/null"))']
    assert "/Users" not in PROFILE  # no home directory is readable
    options = seatbelt.spawn_options(tmp_path)
    assert options["cwd"] == os.path.realpath(tmp_path) and options["env"]["HOME"] == options["cwd"]
