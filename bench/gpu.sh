#!/usr/bin/env bash
# bench/gpu.sh: swallow-server, raw mlx-lm and mlx_lm.server on a Linux machine with an NVIDIA GPU,
# in one prepared run that finishes in under 8 minutes (docs/performance-server.md).
#
#   bench/gpu.sh                      # the GPU: mlx's CUDA build, a full-size gpt-oss-20b (random, 6-bit)
#   bench/gpu.sh --size small         # a bench-small-sized stand-in, when time is short
#   bench/gpu.sh --download DIR       # (where pip reaches PyPI) the wheels a machine without network needs
#   bench/gpu.sh --wheels DIR         # then, on that machine: install from them instead of PyPI
#   bench/gpu.sh --cpu --size small --python PY --quick   # its CPU path, to try the script without a GPU
#
# Steps, each timed:
#   1. the machine: nvidia-smi's GPU and CUDA version -> mlx[cuda13] (CUDA 13 or later) or mlx[cuda12]
#   2. python: a virtualenv (.gpu-venv) with swallow-server's dependencies and mlx's CUDA build instead
#      of mlx[cpu]; with --wheels, the wheels installed into $OUT/site for the machine's python3;
#      with --python PY, an interpreter that has them already
#   3. the model: gpt-oss-20b's architecture with random weights in the 6-bit layout real conversions
#      have, built in memory once (bench/models.py random_gpt_oss; ~16 GB on disk), or --model DIR
#   4. python -m bench: decode, 1/8/16 streams, an 8k-token prompt (cold and warm), server CPU per token,
#      then the near-free model's figures (the server's own work per token and per turn)
# Results: the tables on stdout, and everything in $OUT (default bench-gpu-out/): bench.json, logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

CPU=0 SIZE=full WHEELS="" PY="" MODEL="" QUICK=0 DOWNLOAD="" MLX_VERSION=0.32.4
# What a CUDA 13 machine with PyTorch's usual stack (numpy, transformers, tiktoken, httpx, uvloop, the
# nvidia-* CUDA 13 libraries...) lacks of swallow-server's dependencies, for --download.
MISSING=("mlx==$MLX_VERSION" "mlx-cuda-13==$MLX_VERSION" mlx-lm==0.32.2 openai-harmony fastapi starlette uvicorn
         httptools pydantic pydantic-core annotated-types typing-inspection toktok-rs llguidance prompt-toolkit wcwidth)
OUT=${OUT:-bench-gpu-out}
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --size) SIZE=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --python) PY=$2; shift ;;
    --model) MODEL=$2; shift ;;
    --quick) QUICK=1 ;;
    --download) DOWNLOAD=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench/gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$SIZE" in full|small) ;; *) echo "bench/gpu.sh: --size full or small" >&2; exit 2 ;; esac
if [ -n "$DOWNLOAD" ]; then  # Python 3.12, x86-64 Linux wheels, each without its dependencies
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DOWNLOAD" "${MISSING[@]}"
  ls -la "$DOWNLOAD"
  exit 0
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STARTED=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - STARTED ))s] $*"; }
die() { echo "bench/gpu.sh: $*" >&2; exit 1; }

step "1. the machine"
uname -srm
if [ "$CPU" = 1 ]; then
  EXTRA=cpu
  echo "CPU path (--cpu): mlx[cpu]"
else
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: no NVIDIA GPU here (--cpu runs the CPU path)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "nvidia-smi failed"
  CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -1)
  [ -n "$CUDA" ] || die "nvidia-smi does not say the driver's CUDA version"
  if [ "$CUDA" -ge 13 ]; then EXTRA=cuda13; else EXTRA=cuda12; fi
  echo "driver's CUDA: $CUDA -> mlx[$EXTRA]==$MLX_VERSION"
fi

step "2. python"
if [ -n "$WHEELS" ] && [ -z "$PY" ]; then  # no network: the wheels, beside the machine's own packages
  PY=python3
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$OUT/site" "$WHEELS"/*.whl
  export PYTHONPATH=$OUT/site
elif [ -z "$PY" ]; then
  VENV=${VENV:-.gpu-venv}
  [ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
  PY=$VENV/bin/python
  PIP=("$PY" -m pip install -q --disable-pip-version-check)
  # swallow-server's dependencies but mlx (pyproject.toml names mlx[cpu] on Linux), then mlx's build
  "$PY" - > "$OUT/requirements.txt" <<'EOF'
import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if not dep.split(";")[0].strip().startswith("mlx["):
        print(dep)
EOF
  "${PIP[@]}" -r "$OUT/requirements.txt"
  "$PY" -m pip uninstall -y -q mlx-cpu mlx-cuda-12 mlx-cuda-13 2>/dev/null || true  # one libmlx.so only
  "${PIP[@]}" "mlx[$EXTRA]==$MLX_VERSION"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<EOF || die "mlx does not run here (see above)"
import mlx.core as mx, mlx_lm
print("mlx", mx.__version__, "mlx-lm", mlx_lm.__version__, "device", mx.default_device())
if "$CPU" != "1" and mx.default_device() != mx.gpu:
    raise SystemExit("mlx's default device is not the GPU: its CUDA build did not load")
x = mx.random.normal((512, 512))
mx.eval(x @ x)
EOF

step "3. the model"
if [ -z "$MODEL" ]; then
  MODEL=$("$PY" -c "
from bench import models
m = models.random_gpt_oss('$SIZE', 6)
print(m.path)" | tail -1)
fi
[ -f "$MODEL/config.json" ] || die "no model at $MODEL"
du -sh "$MODEL"
"$PY" -c "
from bench import models
ok = models.follows_the_chain('$MODEL')
print('greedy replies follow the bench chain (harmony):', ok)
if not ok:
    print('NOTE: they do not: swallow-server holds a reply back while it may still be a header, so its TTFT and '
          'first-token figures mean less on this model; throughput and CPU per token are unaffected.')"

step "4. python -m bench"
ARGS=(--model "$MODEL" --streams 1,8,16 --prefix-tokens 8000 --reply-tokens 200 --skip-quant --repeat 2
      --json "$OUT/bench.json" --log-dir "$OUT/logs")
[ "$CPU" = 1 ] || ARGS+=(--openblas off)
if [ "$QUICK" = 1 ]; then  # a try of the script (its CPU path): a few tokens of each, one round
  ARGS+=(--quick --streams 1,2 --tokens 8 --stream-tokens 6 --prefix-tokens 600 --reply-tokens 24 --repeat 1)
fi
PYTHONUNBUFFERED=1 "$PY" -m bench "${ARGS[@]}" 2>&1 | tee "$OUT/bench.txt"
status=${PIPESTATUS[0]}

step "done in $(( $(date +%s) - STARTED ))s: $OUT/bench.txt, $OUT/bench.json (exit $status)"
exit "$status"
