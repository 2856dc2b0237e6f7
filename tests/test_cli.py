"""The command line: settings precedence, clear failures, and the demo model end to end."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError, load_settings
from tests.conftest import ROOT


def run_cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_settings_precedence(tmp_path, monkeypatch):
    config = tmp_path / "settings.toml"
    config.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\n[generation]\ntemperature = 0.2\ntop_k = 5\n')
    monkeypatch.setenv("SWALLOW_PORT", "9002")
    monkeypatch.setenv("SWALLOW_TOP_K", "7")
    settings = load_settings(str(config), {"port": 9003, "host": None})
    assert settings.port == 9003            # command line beats environment
    assert settings.top_k == 7              # environment beats the file
    assert settings.host == "0.0.0.0"       # the file beats the defaults
    assert settings.temperature == 0.2
    assert settings.top_p == 0.95           # the default (the model card's)


def test_repository_config_file_is_valid_and_matches_the_defaults():
    from server.config import Settings

    assert load_settings(str(ROOT / "config.toml")) == Settings()


def test_a_setting_under_the_wrong_table_is_a_warning_naming_its_own(tmp_path, caplog):
    config = tmp_path / "moved.toml"
    config.write_text('[server]\nport = 9001\ntemperature = 0.2\n'
                      '[model_registry]\n[[model_registry.models]]\nmodel = "demo"\n')
    settings = load_settings(str(config))
    assert settings.temperature == 0.2 and settings.models[0].model == "demo"  # read all the same
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{config}: temperature is under [server]; it belongs in [generation]",
        f"{config}: [[models]] is under [model_registry]; it belongs at the top level, as [[models]]",
    ]
    # as a user sees it: on standard error, before the settings are used (here, refused)
    config.write_text("[limits]\nreasoning_effort = 'medium'\n[generation]\ntop_p = 7\n")
    result = run_cli("--config", str(config))
    assert result.returncode == 2 and "top_p" in result.stderr
    assert "reasoning_effort is under [limits]; it belongs in [generation]" in result.stderr


def test_bad_settings_are_reported(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[generation]\ntemperature = 9\n")
    with pytest.raises(ConfigError, match="temperature"):
        load_settings(str(config))
    config.write_text("port = [\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(str(config))
    result = run_cli("--config", str(config))
    assert result.returncode == 2 and "cannot read" in result.stderr


@pytest.mark.parametrize("model", ["/no/such/model/dir", "nobody-here/no-such-model-xyz"])
def test_unavailable_model_exits_with_one_clear_message(model, cache_dir):
    result = run_cli("--model", model, "--port", "0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "--model demo" in result.stderr and "--model PATH" in result.stderr


def test_model_file_needs_trust_remote_code(scripted_model):
    result = run_cli("--model", str(scripted_model), "--port", "0")
    assert result.returncode == 1
    assert "--trust-remote-code" in result.stderr and "Traceback" not in result.stderr


def test_a_model_that_cant_fit_is_refused_before_loading_with_the_numbers(scripted_model):
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 + 1
    result = run_cli("--model", str(scripted_model), "--trust-remote-code", "--port", "0",
                     env={"SWALLOW_KV_MEMORY_MB": str(memory_mb)}, timeout=30)  # a KV budget larger than the machine
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(rf"needs ~[\d.]+ k?B of memory for its weights \+ ~[\d.]+ GB for its KV cache \(kv_memory_mb = "
                     rf"{memory_mb}\) = ~[\d.]+ GB, but this machine can give a model only ~[\d.]+ GB \((this machine's "
                     r"memory|Metal's recommended working set)\)", result.stderr), result.stderr


def test_demo_model_serves_the_whole_api(demo_server):
    client = demo_server.client()
    assert [m.id for m in client.models.list().data] == ["demo"]
    reply = client.chat.completions.create(model="demo", max_tokens=20,
                                           messages=[{"role": "user", "content": "Hello!"}])
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 20
    chunks = list(client.chat.completions.create(model="demo", max_tokens=20, stream=True,
                                                 messages=[{"role": "user", "content": "Hello!"}]))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "random noise" in demo_server.log()
    maps = Path(f"/proc/{demo_server.process.pid}/maps")
    if maps.exists():  # torch (the test extra installs it) is kept out of the server: ~2 s of every start
        assert "/torch/lib/" not in maps.read_text()


def test_seed_makes_sampling_reproducible(demo_server):
    client = demo_server.client()

    def sample(seed):
        reply = client.chat.completions.create(model="demo", max_tokens=24, temperature=1.0, seed=seed,
                                               messages=[{"role": "user", "content": "Pick words."}])
        message = reply.choices[0].message
        return (message.content, getattr(message, "reasoning_content", None))

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_seed_is_reproducible_inside_a_busy_batch(demo_server):
    import asyncio

    client = demo_server.async_client()

    async def sample(seed):
        reply = await client.chat.completions.create(model="demo", max_tokens=24, temperature=1.0, seed=seed,
                                                     messages=[{"role": "user", "content": "Pick words."}])
        return reply.choices[0].message.content

    async def alone_then_together():
        alone = await sample(11)
        together = await asyncio.gather(sample(11), sample(None), sample(None), sample(11))
        return alone, together

    alone, together = asyncio.run(alone_then_together())
    assert together[0] == alone and together[3] == alone


# ---- SIGTERM, and the Linux CPU fast path (server/blas.py) ----------------------------------

def test_sigterm_after_serving_exits_0_with_openblas_preloaded_and_not(start_server):
    """After requests, SIGTERM is a clean exit 0 (native thread pools used to abort the
    interpreter's teardown about half the time: status 134 to a supervisor), on each BLAS: Debian's
    OpenBLAS, preloaded when it is installed on Linux, and the wheel's own with --no-openblas."""
    from server.blas import find_openblas

    linux = sys.platform.startswith("linux")
    env = {"SWALLOW_TEMPERATURE": "0"}
    fast = start_server(["--model", "demo"], env=env)
    plain = start_server(["--model", "demo", "--no-openblas"], env=env)
    if linux:
        assert "/openblas-pthread/" not in open(f"/proc/{plain.process.pid}/maps").read()
        assert "BLAS: the reference BLAS" in plain.log()
    if linux and find_openblas():
        assert "/openblas-pthread/" in open(f"/proc/{fast.process.pid}/maps").read()
        assert "BLAS: OpenBLAS" in fast.log()
    for server in (fast, plain):  # both answer, streamed and not
        client = server.client()
        for stream in (False, True):
            reply = client.chat.completions.create(model="m", max_tokens=8, stream=stream,
                                                   messages=[{"role": "user", "content": "hi"}])
            chunks = list(reply) if stream else [reply]
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    for server in (fast, plain):
        server.stop()  # SIGTERM
        assert server.process.returncode == 0, server.log()[-2000:]
        assert "terminate called" not in server.log()
    if linux and not find_openblas():
        pytest.skip("OPENBLAS NOT TESTED (SIGTERM was): libopenblas0-pthread is not installed "
                    "(apt install libopenblas0-pthread)")
