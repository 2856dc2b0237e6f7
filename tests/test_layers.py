"""The layers contract (pyproject.toml's [tool.importlinter]): api -> turn -> engine -> mlx-lm,
with harmony and plumbing below, and each API's folder on its own. No server needed."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=tree, env={"PYTHONPATH": str(tree)},
                          capture_output=True, text=True, timeout=120)


def test_no_layer_imports_one_above_it():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_or_one_across_apis_breaks_it(tmp_path):
    """The contract can fail: a copy of the tree where the engine imports an API, and the Messages
    API imports the Responses API, is refused for both."""
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("server", "models"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "server" / "engine" / "memory.py", "a") as f:
        f.write("\nfrom server.api.chat import routes  # noqa\n")
    with open(tmp_path / "server" / "api" / "messages" / "output.py", "a") as f:
        f.write("\nfrom server.api.responses import output  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "server.engine is not allowed to import server.api" in result.stdout
    assert "server.api.messages is not allowed to import server.api.responses" in result.stdout
