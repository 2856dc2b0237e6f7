"""`swallow-server pull / ls / ps / rm` and the server's first start, against a local stand-in for
the Hugging Face Hub (tests/fake_hub.py) serving the demo model: the real CLI and the real server in
subprocesses, the real huggingface_hub downloading over HTTP, its real cache on disk.

One fake hub serves the whole module; each test has a cache (HF_HOME) of its own.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.fake_hub import FakeHub

REPO = "test/tiny-gpt-oss"
CORRUPT = "test/corrupt-weights"
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def demo_files(cache_dir) -> Path:
    from models.demo import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="module")
def hub(demo_files):
    hub = FakeHub()
    hub.add_repo(REPO, demo_files)
    hub.add_repo(CORRUPT, demo_files)
    yield hub
    hub.close()


@pytest.fixture(autouse=True)
def fresh_requests(hub):
    hub.reset()


def cli(*args, env: dict, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          input=input, timeout=timeout, env={**os.environ, **env})


def plain(text: str) -> str:
    """Terminal output without its escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(home: Path, repo_id: str) -> Path:
    return home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / _commit(home, repo_id)


def _commit(home: Path, repo_id: str) -> str:
    return (home / "hub" / f"models--{repo_id.replace('/', '--')}" / "refs" / "main").read_text()


def test_pull_draws_bars_resumes_a_dropped_connection_and_verifies(hub, demo_files, tmp_path):
    env = {**hub.env(tmp_path), "TTY_COMPATIBLE": "1", "COLUMNS": "120"}  # rich draws its bars
    hub.faults.drop.add(f"{REPO}/{WEIGHTS}")  # the connection closes half-way through the weights, once

    done = cli("pull", REPO, env=env)
    assert done.returncode == 0, done.stderr
    shown = plain(done.stderr)
    weights_sha = hub.repos[REPO].files[WEIGHTS].sha256
    assert re.search(rf"{WEIGHTS}\s+✓ sha256 {weights_sha[:12]}\s+━+ 100%", shown), shown
    assert "✓ git-sha1" in shown
    assert "success" in shown and f"{REPO} is ready in" in done.stdout
    # huggingface_hub asked for the rest of the file where the dropped connection had left it
    first, resumed = hub.gets(REPO, WEIGHTS)
    assert first is None and re.fullmatch(r"bytes=[1-9]\d*-", resumed)
    folder = snapshot(tmp_path, REPO)
    assert {p.name for p in folder.iterdir()} == {p.name for p in demo_files.iterdir()}
    assert all(sha256(folder / p.name) == sha256(p) for p in demo_files.iterdir())

    # A file damaged on disk is found by the next pull and downloaded again, and only it; --json
    # prints the progress as Ollama's pull fields.
    blob = (folder / WEIGHTS).resolve()
    damaged = bytearray(blob.read_bytes())
    damaged[1000] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    gets = len(hub.requests)
    again = cli("pull", REPO, "--json", env=env)
    assert again.returncode == 0, again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines()]
    size = (demo_files / WEIGHTS).stat().st_size
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    assert {"status": "pulling tokenizer.json", "digest": f"sha256:{hub.repos[REPO].files['tokenizer.json'].sha256}",
            "total": (demo_files / "tokenizer.json").stat().st_size,
            "completed": (demo_files / "tokenizer.json").stat().st_size} in events  # already there
    corrupt = [e["status"] for e in events if e["status"].startswith(f"{WEIGHTS} is corrupt")]
    assert corrupt and corrupt[0].startswith(f"{WEIGHTS} is corrupt (its sha256 is ")
    assert corrupt[0].endswith(f"the Hub publishes {weights_sha}): downloading it again")
    assert {"status": f"pulling {WEIGHTS}", "digest": f"sha256:{weights_sha}", "total": size, "completed": size} in events
    assert events[-2] == {"status": f"verified {WEIGHTS}", "digest": f"sha256:{weights_sha}"}
    assert [r[1] for r in hub.requests[gets:] if r[0] == "GET" and "/api/" not in r[1]] == [
        hub.repos[REPO].files[WEIGHTS].cdn_path]
    assert sha256(folder / WEIGHTS) == weights_sha


def test_interrupted_pull_keeps_finished_files_and_ls_rm(hub, demo_files, tmp_path):
    env = hub.env(tmp_path)
    hub.faults.stall.add(f"{REPO}/{WEIGHTS}")  # the weights stop half-way, so the pull can be interrupted there
    # Ctrl-C as at a terminal: SIGINT not ignored, even when this suite runs in the background (a shell
    # starts background jobs with SIGINT ignored, and children inherit that)
    pulling = subprocess.Popen([sys.executable, "-m", "server", "pull", REPO], cwd=ROOT, env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert hub.stalled.wait(60), "the pull never reached the weights"
        pulling.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = pulling.communicate(timeout=60)
    finally:
        pulling.kill()
        hub.release()
    assert pulling.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert "tokenizer.json: verified" in err

    listed = cli("ls", env=env).stdout
    assert re.search(rf"{REPO}\s+\d+\.\d MB\s+bfloat16\s+\d+s ago\s+incomplete: `swallow-server pull {REPO}` "
                     "finishes it", listed), listed

    resumed = cli("pull", REPO, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "tokenizer.json: already downloaded" in resumed.stderr
    assert hub.gets(REPO, "tokenizer.json") == [None]  # the finished files were kept
    assert hub.gets(REPO, WEIGHTS)[-1] is None  # the cut one starts over (huggingface_hub keeps no partial file)

    rows = json.loads(cli("ls", "--json", env=env).stdout)
    assert [(r["model"], r["complete"], r["servable"], r["format"]) for r in rows] == [(REPO, True, True, "bfloat16")]
    assert rows[0]["size_bytes"] >= sum(p.stat().st_size for p in demo_files.iterdir())

    kept = cli("rm", REPO, env=env, input="n\n")
    size = f"{sum(p.stat().st_size for p in demo_files.iterdir()) / 1e6:.1f} MB"
    assert kept.returncode == 1 and f"Delete {REPO} ({size})" in kept.stdout and f"kept {REPO}" in kept.stdout
    removed = cli("rm", REPO, "nobody/no-such-model", "-y", env=env)
    assert removed.returncode == 1 and f"deleted {REPO} ({size} freed)" in removed.stdout
    assert "'nobody/no-such-model' is not in the Hugging Face cache" in removed.stderr
    assert not (tmp_path / "hub" / f"models--{REPO.replace('/', '--')}").exists()


CANCEL = """
import json, sys, threading
from models.download import pull_events
events = pull_events(sys.argv[1])
for event in events:
    if event.file == "model.safetensors" and event.completed:
        break
events.close()  # what a streamed answer does when its client goes away
pulls = [t for t in threading.enumerate() if t.name.startswith("pull ")]
for t in pulls:
    t.join(30)
print(json.dumps({"stopped": not any(t.is_alive() for t in pulls), "at": event.completed}))
"""


def test_closing_pull_events_stops_the_download(hub, tmp_path):
    hub.faults.slow.add(f"{REPO}/{WEIGHTS}")
    done = subprocess.run([sys.executable, "-c", CANCEL, REPO], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **hub.env(tmp_path)})
    assert done.returncode == 0, done.stderr
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    weights = hub.repos[REPO].files[WEIGHTS]
    stopped = json.loads(done.stdout)
    assert stopped["stopped"] and 0 < stopped["at"] < len(weights.data)
    assert not [p for p in (repo / "blobs").iterdir() if p.name.startswith(weights.sha256)]  # nothing partial kept
    assert (repo / "blobs" / hub.repos[REPO].files["tokenizer.json"].sha256).is_file()  # the files before it are


def test_corrupt_download_is_reported_and_not_kept(hub, tmp_path):
    hub.faults.corrupt.add(f"{CORRUPT}/{WEIGHTS}")  # the Hub's CDN sends bytes that don't match its sha256
    done = cli("pull", CORRUPT, env=hub.env(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{WEIGHTS} is corrupt (its sha256 is " in done.stderr  # seen once, downloaded again ...
    assert f"{WEIGHTS} of '{CORRUPT}' arrived corrupt twice" in done.stderr  # ... and given up on
    assert hub.gets(CORRUPT, WEIGHTS) == [None, None]
    blobs = tmp_path / "hub" / f"models--{CORRUPT.replace('/', '--')}" / "blobs"
    assert hub.repos[CORRUPT].files[WEIGHTS].sha256 not in {p.name for p in blobs.iterdir()}
    assert not [p for p in blobs.iterdir() if p.stat().st_size == len(hub.repos[CORRUPT].files[WEIGHTS].data)]


def test_pull_refuses_when_the_disk_is_too_small(hub, demo_files, tmp_path):
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(small)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"can't mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        before = len(hub.requests)
        done = cli("pull", REPO, env=hub.env(small))
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    size, files = sum(f.stat().st_size for f in demo_files.iterdir()) / 1e6, len(list(demo_files.iterdir()))
    assert (f"Not enough disk space for '{REPO}': it needs {size:.1f} MB more ({files} of its {files} files, "
            f"{size:.1f} MB in all), but {small}/hub has only 41.9 MB free") in done.stderr, done.stderr
    assert [r[0] for r in hub.requests[before:]] == ["GET"]  # the manifest, and no file


def test_first_start_downloads_with_progress_then_serves_and_ps_shows_it(hub, start_server, tmp_path):
    server = start_server(["--model", REPO], env=hub.env(tmp_path))
    log = server.log()
    assert "pulling manifest" in log and re.search(rf"{WEIGHTS}: downloaded [\d.]+ MB in [\d.]+ s", log)
    assert f"{WEIGHTS}: verified (sha256 {hub.repos[REPO].files[WEIGHTS].sha256[:12]})" in log

    reply = server.client().chat.completions.create(model=REPO, messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=4, temperature=0)
    assert reply.model == REPO and reply.usage.completion_tokens > 0

    shown = cli("ps", "--url", server.url, env={})
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"{REPO} \*\s+loaded\s+\d+\.\d MB\s+0 B of [\d.]+ [GM]B\s+0 running, 0 waiting\s+forever",
                     shown.stdout), shown.stdout
    assert httpx.get(f"{server.url}/health").json()["models"][REPO]["idle_s"] >= 0
    nobody = cli("ps", "--url", "http://127.0.0.1:9", env={})
    assert nobody.returncode == 1 and "no swallow-server answers at http://127.0.0.1:9" in nobody.stderr


def test_ollamas_pull_streams_progress_and_delete_removes_the_model(hub, start_server, tmp_path):
    """Ollama's POST /api/pull and DELETE /api/delete through the `ollama` library: the same
    download, its steps as Ollama's progress lines, then the model listed, served and deleted."""
    import ollama

    server = start_server(["--model", "demo"], env=hub.env(tmp_path))
    api = ollama.Client(host=server.url)
    progress = list(api.pull(REPO, stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    weights = hub.repos[REPO].files[WEIGHTS]
    pulled = [p for p in progress if p.status == f"pulling {WEIGHTS}"]
    assert {p.digest for p in pulled} == {f"sha256:{weights.sha256}"} and {p.total for p in pulled} == {len(weights.data)}
    assert pulled[-1].completed == len(weights.data)
    assert [p.status for p in progress if p.digest == f"sha256:{weights.sha256}"][-2:] == [f"verifying {WEIGHTS}",
                                                                                          f"verified {WEIGHTS}"]
    assert sha256(snapshot(tmp_path, REPO) / WEIGHTS) == weights.sha256
    assert REPO in [m.model for m in api.list().models]
    fetched = len(hub.gets(REPO, WEIGHTS))
    assert api.pull(REPO).status == "success"  # again: the files are there, checked, not downloaded
    assert len(hub.gets(REPO, WEIGHTS)) == fetched

    with pytest.raises(ollama.ResponseError) as unknown:
        api.pull("llama3.2")
    assert unknown.value.status_code == 400 and "Hugging Face repo id" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as missing:  # the Hub says no: the stream's last line
        list(api.pull("test/no-such-repo", stream=True))
    assert "no such repository" in missing.value.error

    api.generate(model=REPO, prompt="Hi", options={"num_predict": 1})  # loaded: it can't be deleted
    with pytest.raises(ollama.ResponseError) as loaded:
        api.delete(REPO)
    assert loaded.value.status_code == 400 and "unload it first" in loaded.value.error
    api.generate(model=REPO, keep_alive=0)
    assert api.delete(REPO).status == "success"
    assert not (tmp_path / "hub" / f"models--{REPO.replace('/', '--')}").exists()
    assert REPO not in [m.model for m in api.list().models]
    with pytest.raises(ollama.ResponseError) as gone:
        api.delete(REPO)
    assert gone.value.status_code == 404
