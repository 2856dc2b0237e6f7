"""The repository as a clone gets it: no merge left half done. A conflict marker once slipped into a
docs page unnoticed; this catches the next one in any tracked text file. No server needed."""

import re
import subprocess

import pytest

from tests.conftest import ROOT

MARKER = re.compile(rb"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def tracked_files() -> list:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to check")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_tracked_file_holds_a_conflict_marker():
    marked = []
    for path in tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" not in data[:8192] and MARKER.search(data):  # text files only
            marked.append(str(path.relative_to(ROOT)))
    assert marked == []
