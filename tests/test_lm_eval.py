"""lm-evaluation-harness against the real server, as the README's recipe runs it: a
log-likelihood task through `local-completions` (echo + logprobs on /v1/completions) on a local
task file (tests/data/lm_eval), no dataset download. Skipped when lm_eval isn't installed."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm_eval is not installed (pip install 'lm_eval[api]') — "
                                          "the lm-evaluation-harness run is NOT tested")


@needs_lm_eval
def test_lm_eval_loglikelihood_through_local_completions(demo_server, tmp_path):
    from models.demo import DEMO_NAME
    from models.paths import cache_dir

    args = ",".join([f"base_url={demo_server.url}/v1/completions", "model=demo", "tokenizer_backend=huggingface",
                     f"tokenizer={cache_dir() / DEMO_NAME}", "num_concurrent=1", "max_retries=1"])
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
         "--include_path", "tests/data/lm_eval", "--tasks", "swallow_mc", "--output_path", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (results,) = tmp_path.glob("**/results_*.json")
    acc = json.loads(results.read_text())["results"]["swallow_mc"]["acc,none"]
    assert 0 <= acc <= 1  # random weights: any score; the run itself is the test
