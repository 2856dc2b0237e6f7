"""What the interpreter run in the sandbox is: its version, the directories it runs from (shown to
it read-only in the sandbox), and which of the usual scientific packages it has (the tool's
description names them, so the model knows what it can import)."""

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("numpy", "sympy", "scipy", "pandas", "matplotlib")
FACTS = f"""
import importlib.util, json, sys
print(json.dumps({{"version": "%d.%d" % sys.version_info[:2], "dirs": [sys.prefix, sys.base_prefix],
                  "packages": [p for p in {list(PACKAGES)!r} if importlib.util.find_spec(p)]}}))
"""


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str  # "3.11"
    dirs: list[str]
    packages: list[str]


def inspect(python: str) -> Interpreter:
    """OSError when `python` doesn't run."""
    try:
        done = subprocess.run([python, "-E", "-s", "-c", FACTS], capture_output=True, text=True, timeout=60, env={},
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise OSError(f"{python} did not answer within 60 s") from e
    if done.returncode != 0:
        raise OSError(f"{python} does not run: {done.stderr.strip()[-300:]}")
    facts = json.loads(done.stdout)
    dirs = {os.path.realpath(d) for d in facts["dirs"]}
    dirs.add(str(Path(python).resolve().parent.parent))  # where the binary really is
    return Interpreter(path=python, version=facts["version"], dirs=sorted(dirs), packages=facts["packages"])
