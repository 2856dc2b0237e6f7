"""Smoke test of the benchmark (`python -m bench`): its quick path end to end on the demo model,
a few tokens, without mlx_lm.server. The figures of a random tiny model mean nothing; this only
checks that the bench starts the server and raw mlx-lm, measures both, and reports."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_quick_on_demo(cache_dir, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--model", "demo", "--quick", "--skip-mlx-server", "--skip-near-free",
         "--tokens", "4", "--stream-tokens", "4", "--streams", "1,2", "--prefix-tokens", "200", "--reply-tokens", "6",
         "--log-dir", str(tmp_path / "logs"), "--json", str(out)],
        cwd=ROOT, env={**os.environ, "SWALLOW_CACHE_DIR": str(cache_dir)},
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| metric" in done.stdout and "Targets:" in done.stdout
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    swallow, raw = result["results"]["swallow"], result["results"]["raw"]
    for figures in (swallow, raw):
        assert set(figures["streams"]) == {"1", "2"}
        assert figures["cold_ttft_s"] > 0 and figures["warm_ttft_s"] > 0
        assert figures["peak_rss_mb"] > 0
    assert raw["decode_tps"] > 0
    assert swallow["client_cpu_ms_per_token"] > 0  # the streaming client's own share of the machine
    assert "mlx" not in result["results"]  # skipped
    assert result["quantized"] == {}  # the demo model is not quantized
    tools = result["tools"]  # the built-in tools, measured at the end
    assert tools["browser"]["open"]["median_ms"] > 0 and "Built-in tools (python -m bench.builtin_tools):" in done.stdout
    assert "skipped" in tools["python"] or tools["python"]["warm"]["median_ms"] > 0
    assert result["batch"]["ratio"] > 0 and "batch ≥ 0.9× raw BatchGenerator" in done.stdout  # [6] the Batch API


def run_bench(module: str, args: list, cache_dir) -> str:
    done = subprocess.run([sys.executable, "-m", module, "--model", "demo", "--skip-mlx-server", *args],
                          cwd=ROOT, env={**os.environ, "SWALLOW_CACHE_DIR": str(cache_dir)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_prefill_bench_measures_the_gap_for_each_chunk_size(cache_dir):
    out = run_bench("bench.prefill", ["--chunks", "64,512", "--prompt-tokens", "600", "--streams", "2",
                                      "--reply-tokens", "150"], cache_dir)
    assert "| swallow-server, chunk 64 |" in out and "| swallow-server, chunk 512 |" in out
    assert "Targets: gap" in out


def test_restart_bench_compares_turn_1_after_a_restart(cache_dir):
    out = run_bench("bench.restart", ["--prefix-tokens", "1200"], cache_dir)
    row = next(line for line in out.splitlines() if line.startswith("| swallow-server |"))
    cached = int(row.rstrip(" |").split("|")[-1])
    assert cached > 1000  # the prefix came back from disk


def test_contention_bench_runs_raw_mlx_lm_beside_a_burnt_share_of_a_core(cache_dir):
    done = subprocess.run([sys.executable, "-m", "bench.contention", "--model", "demo", "--streams", "1,2",
                           "--load", "0,20", "--tokens", "8", "--repeat", "1"],
                          cwd=ROOT, env={**os.environ, "SWALLOW_CACHE_DIR": str(cache_dir)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all("(1.00×)" in row and row.count("tok/s") == 2 for row in rows)


def test_tool_loop_bench_runs_a_round_trip_both_ways(cache_dir, tmp_path):
    """bench.tool_loop: the server's loop and a client's round trip, each against the same MCP tool."""
    out = tmp_path / "tools.json"
    done = subprocess.run([sys.executable, "-m", "bench.tool_loop", "--repeat", "1", "--prefix-tokens", "300",
                           "--json", str(out)],
                          cwd=ROOT, env={**os.environ, "SWALLOW_CACHE_DIR": str(cache_dir)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| server-run (its loop) |" in done.stdout and "Target: the server's loop costs less" in done.stdout
    rounds = json.loads(out.read_text())["rounds"]
    server, client = rounds["server"][0], rounds["client"][0]
    assert server["tool"] > 0 and client["tool"] > 0
    assert client["prompt"] > server["prompt"] > 300  # the client sent the conversation twice


def test_soak_runs_rounds_of_mixed_load_and_reports_memory(cache_dir, tmp_path):
    numbers = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--model", "demo", "--rounds", "2", "--clients", "8",
                           "--max-tokens", "8", "--plot", str(tmp_path / "soak.png"), "--json", str(numbers)],
                          cwd=ROOT, env={**os.environ, "SWALLOW_CACHE_DIR": str(cache_dir)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| round | seconds | ok | failed | walked away | RSS MiB | MLX MiB | prompt cache MiB |" in out
    rounds = json.loads(numbers.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # every client of the mix was served or walked away as planned
        assert (r["ok"], r["failed"], r["left"]) == (6, 0, 2)
        assert r["rss_mb"] > 0 and r["mlx_mb"] > 0 and r["prompt_cache_mb"] > 0
    # the plot, or why there is none
    assert (tmp_path / "soak.png").exists() or "matplotlib is not installed" in out


def test_overhead_bench_measures_the_servers_own_cpu_and_turns(cache_dir, tmp_path):
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.overhead", "--skip-mlx-server", "--rounds", "1", "--tokens", "24",
         "--stream-tokens", "6", "--streams", "2", "--system-tokens", "300", "--agent-turns", "1",
         "--json", str(out)],
        cwd=ROOT, env={**os.environ, "SWALLOW_CACHE_DIR": str(cache_dir)}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| server CPU per token, 1 stream (ms)" in done.stdout and "Targets (near-free model):" in done.stdout
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    swallow, raw = result["results"]["swallow"], result["results"]["raw"]
    for figures in (swallow, raw):
        assert figures["cpu_ms_per_token_1"] > 0 and figures["cpu_ms_per_token_2"] > 0
        assert figures["agent_ttft_s"] > 0 and figures["continued_ttft_s"] > 0
    # the agent's turns were taken from the cache: its previous prompt, then its previous reply too
    assert 0 < swallow["agent_cached_tokens"] < swallow["agent_prompt_tokens"]
    assert swallow["agent_prompt_tokens"] <= swallow["continued_cached_tokens"] < swallow["continued_prompt_tokens"]
