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
        [sys.executable, "-m", "bench", "--model", "demo", "--quick", "--skip-mlx-server", "--tokens", "4",
         "--stream-tokens", "4", "--streams", "1,2", "--prefix-tokens", "200", "--reply-tokens", "6",
         "--log-dir", str(tmp_path / "logs"), "--json", str(out)],
        cwd=ROOT, env={**os.environ, "SWALLOW_CACHE_DIR": str(cache_dir)},
        capture_output=True, text=True, timeout=120,
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
    assert "mlx" not in result["results"]  # skipped
    assert result["quantized"] == {}  # the demo model is not quantized
