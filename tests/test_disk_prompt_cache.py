"""Prompt-cache snapshots on disk: a long shared prefix is warm on the first turn after a restart."""

import time

import httpx

from models.scripted import build_scripted_model
from tests.scripts import JAPANESE_ANSWER, SCRIPTS

SYSTEM = " ".join(f"Rule {i}: answer carefully and kindly." for i in range(220))  # ~1,500 tokens


def ask(server, question: str) -> dict:
    reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]})
    assert reply.status_code == 200, reply.text
    return reply.json()


def snapshots(data_dir):
    return sorted(p for p in (data_dir / "prompt-cache").glob("*/*.safetensors") if not p.name.startswith("."))


def wait_for_snapshot(data_dir, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = snapshots(data_dir)
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("no snapshot was written")


def test_a_long_prefix_is_warm_after_a_restart_and_only_for_its_model(start_server, scripted_model, tmp_path,
                                                                       tmp_path_factory):
    env = {"SWALLOW_DATA_DIR": str(tmp_path)}
    args = ["--model", str(scripted_model), "--trust-remote-code"]
    first = start_server(args, env=env)
    cold = ask(first, "What is 2+2?")
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert len(wait_for_snapshot(tmp_path)) == 1  # written while the engine had nothing to do
    first.stop()

    second = start_server(args, env=env)
    assert "prompt cache: 1 snapshot(s) loaded" in second.log()
    warm = ask(second, "What is 2+2? Once more, please.")
    prompt, cached = warm["usage"]["prompt_tokens"], warm["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 1000 and prompt - cached < 40  # all but the user's question came from disk
    assert warm["choices"][0]["message"]["content"] == JAPANESE_ANSWER
    second.stop()

    # another model never reuses the snapshot (damaged snapshots: tests/test_data_dir.py)
    other_model = build_scripted_model(tmp_path_factory.mktemp("other"), {**SCRIPTS, "Another": "x"})
    other = start_server(["--model", str(other_model), "--trust-remote-code"], env=env)
    assert "0 snapshot(s) loaded" in other.log()
    assert ask(other, "What is 2+2?")["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    other.stop()


def test_the_disk_budget_keeps_the_newest(start_server, tmp_path):
    """The demo model's snapshot of one of these prefixes is ~570 KB: 1 MiB holds one."""
    env = {"SWALLOW_DATA_DIR": str(tmp_path), "SWALLOW_PROMPT_CACHE_DISK_MB": "1", "SWALLOW_TEMPERATURE": "0"}
    server = start_server(["--model", "demo"], env=env)
    sizes = []
    for i in range(4):  # four different long prefixes
        httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={"messages": [
            {"role": "system", "content": f"Variant {i}. {SYSTEM}"}, {"role": "user", "content": "Hi"}],
            "max_tokens": 2})
        wait_for_snapshot(tmp_path)
        time.sleep(0.5)
        sizes.append(sum(p.stat().st_size for p in snapshots(tmp_path)))
    assert max(sizes) <= 2**20  # never over the budget
    assert 1 <= len(snapshots(tmp_path)) < 4  # the oldest went
    server.stop()
