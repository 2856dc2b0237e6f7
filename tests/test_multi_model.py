"""Several models from one server: routing by name, loading on demand within a memory budget,
keep-alive, explicit load / unload, and the models found in the Hugging Face cache.

Two small real models: the demo model (random gpt_oss weights, ~104 MB in float32) and a
scripted one whose weights file is padded to 60 MB and whose every step takes a moment, so a
stream of it lasts while a test does something beside it.
"""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from models.scripted import build_scripted_model
from tests.conftest import ROOT

HELLO = "Hello from the scripted model, one slow token after another."
SCRIPTS = {"Say hello": f"<|channel|>final<|message|>{HELLO}<|return|>"}
STEP = 0.05  # seconds per scripted step
BUDGET_MB = 150  # the demo model (~99 MiB) or the scripted one (60 MiB), never both


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory, cache_dir) -> Path:
    return build_scripted_model(tmp_path_factory.mktemp("multi") / "scripted", SCRIPTS, weights_mb=60,
                                step_delay=STEP)


def cache_repo(hub: Path, repo_id: str) -> None:
    """The demo model's files as a GPT-OSS repo in a Hugging Face hub cache, as `hf download`
    leaves it: blobs, a snapshot of links to them, refs/main."""
    from models.demo import demo_model_dir

    repo = hub / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for i, source in enumerate(sorted(demo_model_dir().iterdir())):
        blob = repo / "blobs" / f"{i:040d}"
        shutil.copy(source, blob)
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory, cache_dir) -> Path:
    """A Hugging Face hub cache holding one GPT-OSS repo."""
    hub = tmp_path_factory.mktemp("hub")
    cache_repo(hub, "example/tiny-gpt-oss")
    return hub


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def budget_server(start_server, scripted_dir, tmp_path_factory):
    """demo (the default) and scripted, in a budget that holds one of them at a time."""
    config = write_config(tmp_path_factory.mktemp("cfg") / "config.toml", f"""
models_memory_mb = {BUDGET_MB}

[[models]]
alias = "demo"
model = "demo"
default = true

[[models]]
alias = "scripted"
model = "{scripted_dir}"
trust_remote_code = true

[[models]]
alias = "too-big"
model = "{build_scripted_model(tmp_path_factory.mktemp('big'), {}, weights_mb=BUDGET_MB + 10)}"
trust_remote_code = true
""")
    return start_server(["--config", str(config)], env={"SWALLOW_TEMPERATURE": "0", "HF_HUB_CACHE": "/nonexistent"})


@pytest.fixture(scope="module")
def roomy_server(start_server, scripted_dir, hf_cache, tmp_path_factory):
    """demo from the command line (the default), scripted from config.toml with a 1 s keep-alive,
    the Hugging Face cache's GPT-OSS repo, and unknown names refused."""
    config = write_config(tmp_path_factory.mktemp("cfg") / "config.toml", f"""
strict_model_names = true

[[models]]
alias = "scripted"
aliases = ["scripted:60m"]
model = "{scripted_dir}"
trust_remote_code = true
keep_alive = "1s"
""")
    return start_server(["--config", str(config), "--model", "demo"],
                        env={"SWALLOW_TEMPERATURE": "0", "HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1"})


def models(server) -> dict:
    return {m["id"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]}


def loaded(server) -> set:
    return {name for name, card in models(server).items() if card["loaded"]}


def say_hello(client, model: str) -> str:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}],
                                          max_tokens=32)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return value


def test_requests_go_to_the_model_they_name(budget_server):
    client = budget_server.client()
    assert say_hello(client, "scripted").choices[0].message.content == HELLO
    demo = say_hello(client, "demo")
    assert demo.model == "demo" and demo.choices[0].message.content != HELLO
    cards = models(budget_server)
    assert cards["demo"]["default"] and not cards["scripted"]["default"]
    assert cards["scripted"]["context_length"] == 8192 and cards["demo"]["context_length"] == 131072
    assert cards["scripted"]["size_bytes"] >= 60 * 2**20


def test_an_unknown_name_goes_to_the_default_model(budget_server):
    reply = budget_server.client().chat.completions.create(
        model="gpt-5-codex", messages=[{"role": "user", "content": "Say hello"}], max_tokens=3)
    assert reply.model == "demo"
    message = httpx.post(f"{budget_server.url}/v1/messages", timeout=60, json={
        "model": "claude-sonnet-4-5", "max_tokens": 3, "messages": [{"role": "user", "content": "Say hello"}]})
    assert message.status_code == 200 and message.json()["model"] == "demo"


def test_a_budget_for_one_model_swaps_them_on_demand(budget_server):
    client = budget_server.client()
    for model in ("scripted", "demo", "scripted", "demo"):
        reply = say_hello(client, model)
        assert reply.model == model
        assert loaded(budget_server) == {model}  # the other one made room
    health = budget_server.health()
    assert health["models_memory"]["budget_bytes"] == BUDGET_MB * 2**20
    assert health["models_memory"]["loaded_bytes"] <= BUDGET_MB * 2**20
    unloads = [line for line in httpx.get(f"{budget_server.url}/metrics").text.splitlines()
               if line.startswith('swallow_model_unloads_total{model="scripted",reason="room"}')]
    assert unloads and float(unloads[0].split()[-1]) >= 1


def test_a_busy_model_is_not_unloaded_under_its_stream(budget_server):
    """A request for demo while scripted streams waits for the stream to end, then swaps."""
    client = budget_server.client()
    say_hello(client, "scripted")
    streamed, finished = [], {}

    def stream_scripted():
        for chunk in client.chat.completions.create(model="scripted", stream=True, max_tokens=64,
                                                    messages=[{"role": "user", "content": "Say hello"}]):
            if chunk.choices and chunk.choices[0].delta.content:
                streamed.append(chunk.choices[0].delta.content)
        finished["scripted"] = time.monotonic()

    streaming = threading.Thread(target=stream_scripted)
    streaming.start()
    wait_for(lambda: streamed, 30, "the scripted stream's first token")
    reply = say_hello(client, "demo")  # must wait: scripted is busy and both don't fit
    finished["demo"] = time.monotonic()
    streaming.join(60)
    assert "".join(streamed) == HELLO  # the whole stream, uninterrupted
    assert finished["scripted"] <= finished["demo"]
    assert reply.model == "demo" and loaded(budget_server) == {"demo"}


def test_requests_waiting_for_a_model_are_counted(budget_server):
    client = budget_server.client()
    say_hello(client, "scripted")
    done = threading.Event()

    def long_scripted_stream():
        for _ in client.chat.completions.create(model="scripted", stream=True, max_tokens=64,
                                                messages=[{"role": "user", "content": "Say hello"}]):
            pass
        done.set()

    threading.Thread(target=long_scripted_stream).start()
    waiting = threading.Thread(target=say_hello, args=(client, "demo"))
    time.sleep(0.3)
    waiting.start()
    health = wait_for(lambda: (h := budget_server.health())["waiting_for_model"] and h, 20,
                      "the demo request counted as waiting for its model")
    assert health["models"]["demo"]["waiting_for_load"] == 1
    waiting.join(60)
    assert done.is_set() and budget_server.health()["waiting_for_model"] == 0


def test_a_model_that_cannot_fit_alone_is_a_clear_error(budget_server):
    with pytest.raises(openai.BadRequestError) as error:
        say_hello(budget_server.client(), "too-big")
    body = error.value.body
    assert body["code"] == "model_too_large" and body["param"] == "model"
    assert f"{BUDGET_MB} MiB" in body["message"] and "too-big" in body["message"]
    assert say_hello(budget_server.client(), "scripted").choices[0].message.content == HELLO  # still serving


def test_strict_names_refuse_an_unknown_model_in_each_api_shape(roomy_server):
    with pytest.raises(openai.NotFoundError) as error:
        roomy_server.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert error.value.body["code"] == "model_not_found" and "scripted" in error.value.body["message"]
    anthropic = httpx.post(f"{roomy_server.url}/v1/messages", timeout=30, json={
        "model": "claude-opus-4", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]})
    assert anthropic.status_code == 404
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "not_found_error"
    aliased = roomy_server.client().chat.completions.create(
        model="scripted:60m", messages=[{"role": "user", "content": "Say hello"}])
    assert aliased.model == "scripted"  # another name of the same model


def test_an_idle_model_unloads_after_its_keep_alive(roomy_server):
    client = roomy_server.client()
    assert say_hello(client, "scripted").choices[0].message.content == HELLO
    assert "scripted" in loaded(roomy_server)
    wait_for(lambda: "scripted" not in loaded(roomy_server), 15, "scripted unloaded after its 1 s keep-alive")
    assert "demo" in loaded(roomy_server)  # no keep-alive: it stays


def test_keep_alive_per_request(roomy_server):
    client = roomy_server.client()
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                   extra_body={"keep_alive": 0})
    wait_for(lambda: "demo" not in loaded(roomy_server), 15, "demo unloaded after a keep_alive 0 request")
    client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                   extra_body={"keep_alive": "1h"})
    time.sleep(2)  # past its configured 1 s
    assert "scripted" in loaded(roomy_server)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"keep_alive": "soon"})
    assert error.value.body["param"] == "keep_alive"
    httpx.post(f"{roomy_server.url}/v1/models/scripted/unload", timeout=30)
    httpx.post(f"{roomy_server.url}/v1/models/demo/load", timeout=60).raise_for_status()
    httpx.post(f"{roomy_server.url}/v1/chat/completions", timeout=60, json={
        "model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "keep_alive": -1})


COUNT = " ".join(f"n{i}" for i in range(60))


def test_loaded_models_share_one_kv_budget(start_server, tmp_path_factory):
    """Two models in a 1 MiB KV budget (512 bytes per token each): each alone could take 1 MiB, so
    with a budget each, both requests below would run at once. Shared, the second model's request
    waits while the first one's running request holds more than half of it, and runs when it ends."""
    root = tmp_path_factory.mktemp("kv")
    slow = build_scripted_model(root / "slow", {"Count slowly": f"<|channel|>final<|message|>{COUNT}<|return|>"},
                                kv_width=64, step_delay=STEP)
    quick = build_scripted_model(root / "quick", SCRIPTS, kv_width=64)
    config = write_config(root / "config.toml", f"""
kv_memory_mb = 1

[[models]]
alias = "slow"
model = "{slow}"
trust_remote_code = true
default = true

[[models]]
alias = "quick"
model = "{quick}"
trust_remote_code = true
""")
    server = start_server(["--config", str(config)], env={"SWALLOW_TEMPERATURE": "0", "HF_HUB_CACHE": "/nonexistent"})
    httpx.post(f"{server.url}/v1/models/quick/load", timeout=60).raise_for_status()
    client = server.client()
    assert server.health()["kv_memory"]["budget_bytes"] == 2**20

    ended = {}

    def ask(model: str, question: str):
        reply = client.chat.completions.create(model=model, max_tokens=1200,  # ~0.65 MiB at worst
                                               messages=[{"role": "user", "content": question}])
        ended[model] = (time.monotonic(), reply.choices[0].message.content)

    counting = threading.Thread(target=ask, args=("slow", "Count slowly"))
    counting.start()
    wait_for(lambda: server.health()["models"]["slow"]["running"] == 1, 30, "the slow model's request running")
    greeting = threading.Thread(target=ask, args=("quick", "Say hello"))
    greeting.start()
    wait_for(lambda: server.health()["models"]["quick"]["memory"]["waiting_for_memory"] == 1, 30,
             "the quick model's request waiting for memory")
    health = server.health()
    assert "slow" not in ended and health["kv_memory"]["reserved_bytes"] > 2**19
    counting.join(60)
    greeting.join(60)
    assert ended["slow"][1] == COUNT and ended["quick"][1] == HELLO
    assert ended["quick"][0] > ended["slow"][0]  # it ran once the other's request was done
    # one that could never fit, not even alone, is still a clear 400
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="quick", max_tokens=3000, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.code == "kv_memory_exceeded"
    server.stop()


def test_streams_of_one_model_go_on_while_another_loads(roomy_server):
    client = roomy_server.client()
    if "demo" in loaded(roomy_server):
        assert httpx.post(f"{roomy_server.url}/v1/models/demo/unload", timeout=30).json()["loaded"] is False
    arrivals = []

    def stream_scripted():
        for chunk in client.chat.completions.create(model="scripted", stream=True, max_tokens=64,
                                                    messages=[{"role": "user", "content": "Say hello"}]):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())

    streaming = threading.Thread(target=stream_scripted)
    streaming.start()
    wait_for(lambda: arrivals, 30, "the scripted stream's first token")
    started = time.monotonic()
    card = httpx.post(f"{roomy_server.url}/v1/models/demo/load", timeout=60).json()
    ended = time.monotonic()
    streaming.join(60)
    assert card["loaded"] is True
    during = [t for t in arrivals if started < t < ended]
    assert len(during) >= 2, f"{len(during)} tokens of the scripted stream came while demo loaded"


def test_unload_of_a_busy_model_waits_for_its_requests(roomy_server):
    client = roomy_server.client()
    chunks = client.chat.completions.create(model="scripted", stream=True, max_tokens=64,
                                            messages=[{"role": "user", "content": "Say hello"}])
    first = next(iter(chunks))
    answer = httpx.post(f"{roomy_server.url}/v1/models/scripted/unload", timeout=30)
    assert answer.status_code == 202 and answer.json()["loaded"] is True
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (first.choices[0].delta.content or "") + text == HELLO
    wait_for(lambda: "scripted" not in loaded(roomy_server), 15, "scripted unloaded once its stream ended")
    assert httpx.post(f"{roomy_server.url}/v1/models/nope/load", timeout=30).status_code == 404


def test_models_of_the_hugging_face_cache_are_listed_and_served(roomy_server):
    cards = models(roomy_server)
    cached = cards["example/tiny-gpt-oss"]
    assert cached["source"] == "Hugging Face cache" and cached["loaded"] is False
    assert cached["context_length"] == 131072 and cached["size_bytes"] > 0
    reply = roomy_server.client().chat.completions.create(
        model="example/tiny-gpt-oss", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.model == "example/tiny-gpt-oss"
    health = roomy_server.health()
    assert health["models"]["example/tiny-gpt-oss"]["loaded"]
    assert 'model="example/tiny-gpt-oss"' in httpx.get(f"{roomy_server.url}/metrics").text


def test_a_model_downloaded_while_the_server_runs_is_listed(roomy_server, hf_cache):
    cache_repo(hf_cache, "example/downloaded-later")
    card = wait_for(lambda: models(roomy_server).get("example/downloaded-later"), 20,
                    "the new repo listed in /v1/models")
    assert card["source"] == "Hugging Face cache" and card["loaded"] is False


def test_models_command_shows_configured_cached_and_loaded(roomy_server, scripted_dir, hf_cache, tmp_path):
    config = write_config(tmp_path / "config.toml", f"""
[[models]]
alias = "scripted"
model = "{scripted_dir}"
""")
    done = subprocess.run([sys.executable, "-m", "server", "models", "--config", str(config), "--url", roomy_server.url],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HF_HUB_CACHE": str(hf_cache)})
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "scripted" in lines and "config" in lines["scripted"]
    assert "example/tiny-gpt-oss" in lines and "Hugging Face cache" in lines["example/tiny-gpt-oss"]
    assert "loaded" in done.stdout


def test_the_docs_two_model_config_is_what_it_says(tmp_path):
    from server.config import load_settings
    from server.registry import catalog

    section = (ROOT / "docs" / "several-models.md").read_text()
    block = section[section.index("```toml\n") + 8:section.index("```\n", section.index("```toml\n"))]
    listed, default = catalog.build(load_settings(str(write_config(tmp_path / "config.toml", block))))
    by_name = {m.name: m for m in listed}
    assert default.name == "swallow" and by_name["swallow"].spec.endswith("6bit-mlx")
    gpt = by_name["gpt-oss-20b"]
    assert gpt.keep_alive == 1800 and gpt.settings.temperature == 1.0 and gpt.settings.top_k == 0
    assert by_name["swallow"].settings.temperature == 0.6  # the server's default, Swallow's card
    assert "gpt-oss:20b" in gpt.names
