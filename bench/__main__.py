"""python -m bench: swallow-server against raw mlx-lm and mlx_lm.server, on the same model.

    python -m bench                      # the built-in bench model (built once), ~10 min on 2 cores
    python -m bench --quick              # the same, shorter (~2-3 min)
    python -m bench --model PATH         # any GPT-OSS MLX directory (or a hub id in the cache)
    python -m bench --skip-mlx-server --json results.json

Measures decode tokens/s for one stream; aggregate tokens/s for 1, 4, 8 and 16 concurrent
streams; time to first token for a conversation with a ~2,000-token shared prefix, cold (turn 1)
and warm (turn 2, after a turn-1 reply longer than the 128-token sliding window); peak memory;
and, on a quantized model, decode speed against mlx-lm's default (bf16 activations). Then, on the
near-free model (bench/overhead.py: a model that costs almost nothing, so the server's own work
shows, as it does on a fast Mac), the server's CPU per token at 1 and 16 streams, one stream's
decode, and an agent's warm turn and continued turn; then the built-in tools (bench.builtin_tools:
the python sandbox's start and a warm call, a browser open). Prints tables of absolute figures and
ratios, and which targets were met.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import batch, builtin_tools, models, overhead, prompts, report, runs, system


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bench-small",
                   help="bench-small (default: a random float32 gpt_oss built once, plus a 6-bit copy), "
                        "demo, or a GPT-OSS MLX model directory")
    p.add_argument("--streams", default=None, help="concurrent stream counts (default 1,4,8,16; --quick 1,8)")
    p.add_argument("--tokens", type=int, default=None, help="single-stream decode length (default 64; --quick 24)")
    p.add_argument("--stream-tokens", type=int, default=None,
                   help="tokens per stream in the concurrency runs (default 32; --quick 12)")
    p.add_argument("--prefix-tokens", type=int, default=None,
                   help="shared prefix of the conversation, in tokens (default 2000; --quick 1000)")
    p.add_argument("--reply-tokens", type=int, default=None,
                   help="turn-1 reply length; above the sliding window (128) is the point (default 200; --quick 136)")
    p.add_argument("--quant-tokens", type=int, default=None,
                   help="decode length on the quantized model for mlx-lm's default, slow on CPU "
                        "(default 12; --quick 6)")
    p.add_argument("--repeat", type=int, default=None,
                   help="rounds of each decode and stream measurement, each system keeping its best; the "
                        "conversation gets up to 2 (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="shorter runs (~2-3 min on 2 cores)")
    p.add_argument("--skip-mlx-server", action="store_true", help="don't run mlx_lm.server")
    p.add_argument("--skip-raw", action="store_true", help="don't run raw mlx-lm")
    p.add_argument("--skip-quant", action="store_true", help="skip the quantized-model comparison")
    p.add_argument("--skip-batch", action="store_true",
                   help="skip the Batch API against raw BatchGenerator (python -m bench.batch has more)")
    p.add_argument("--openblas", choices=("auto", "on", "off"), default="auto",
                   help="preload Debian's OpenBLAS (libopenblas0-pthread) into every process (auto: when installed)")
    p.add_argument("--compare-blas", action=argparse.BooleanOptionalAction, default=None,
                   help="also run swallow-server without OpenBLAS, 1 and 8 streams (default: on unless --quick)")
    p.add_argument("--skip-near-free", action="store_true",
                   help="skip the server-overhead figures on the near-free model (bench/overhead.py)")
    p.add_argument("--skip-tools", action="store_true",
                   help="don't measure the built-in tools (python sandbox, browser: bench.builtin_tools)")
    p.add_argument("--json", help="also write all results to this file")
    p.add_argument("--log-dir", help="where server logs go (default: a temporary directory)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(streams="1,8" if quick else "1,4,8,16", tokens=24 if quick else 64,
                    stream_tokens=12 if quick else 32, prefix_tokens=1000 if quick else 2000,
                    reply_tokens=136 if quick else 200, quant_tokens=6 if quick else 12,
                    compare_blas=not quick, repeat=1 if quick else 3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.streams = [int(n) for n in str(args.streams).split(",") if n.strip()]
    if max(args.streams, default=0) > 16:
        p.error("--streams: at most 16 (the bench has 16 distinct prompts; the servers batch 16)")
    return args


def pick_openblas(choice: str) -> str | None:
    found = system.find_openblas()
    if choice == "on" and not found:
        sys.exit(f"--openblas on: no {system.OPENBLAS_GLOB} (apt-get install libopenblas0-pthread)")
    return found if choice != "off" else None


def on_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu


def can_run_stock(model: models.BenchModel) -> str | None:
    """Why stock mlx-lm (mlx_lm.server, raw default) cannot run this model here, or None."""
    if on_cpu() and not model.quantized and model.dtype != "float32":
        return (f"{model.dtype} unquantized MoE: MLX's CPU gather_mm runs only in float32, so stock mlx-lm "
                "crashes on it")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    openblas = pick_openblas(args.openblas)
    machine = system.machine_info()
    machine["load_before"] = system.load_average()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="swallow-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM; mlx {machine['mlx']}, "
          f"mlx-lm {machine['mlx_lm']} ({machine['device']}); load average {machine['load_before']:.2f}")
    print(f"BLAS: {'OpenBLAS preloaded (' + openblas + ')' if openblas else 'the reference BLAS the mlx wheel ships'}")
    if machine["load_before"] > 0.5 * (machine["cores"] or 1):
        print("WARNING: the machine is busy; figures will be lower and noisier than on an idle machine.")

    main_model, quant_model = models.resolve(args.model)
    if args.skip_quant:
        quant_model = None
    print(f"Model: {main_model.label} ({main_model.path})"
          + (f"; quantized: {quant_model.label}" if quant_model else ""))
    blocked = can_run_stock(main_model)
    if blocked:
        print(f"Note: {blocked}; raw mlx-lm runs it cast to float32 only, mlx_lm.server is skipped.")
    if args.model == "demo":
        print("Note: the demo model's random replies have no harmony header; swallow-server holds such text back "
              "(up to 48 tokens) before showing it, so its TTFT here means little.")

    plan = runs.Plan(args.tokens, args.streams, args.stream_tokens, args.reply_tokens, turn2_tokens=8,
                     repeat=args.repeat)
    if args.reply_tokens <= 128:
        print("Note: --reply-tokens ≤ 128 does not overflow the sliding window; the warm turn is then the easy case.")
    renderer = prompts.Renderer(main_model.path)
    workload = prompts.build(renderer, args.prefix_tokens, ["raw", "swallow", "mlx"], rounds=min(args.repeat, 2))

    results, quant, errors, blas = {}, {}, {}, None
    started_systems = {}

    def start(key, make):
        try:
            started_systems[key] = make()
        except Exception as e:
            errors[key] = f"start: {e}"

    # On CPU swallow-server computes in float32 whatever the checkpoint's dtype; on a GPU it keeps it.
    raw_mode = "float32" if on_cpu() else "default"
    print(f"\n[1] {main_model.label}: swallow-server, raw mlx-lm ({raw_mode}), mlx_lm.server", flush=True)
    start("swallow", lambda: runs.HttpSystem(system.Swallow, main_model.path, openblas, log_dir, workload))
    if not args.skip_raw:
        start("raw", lambda: runs.RawSystem(main_model.path, raw_mode, openblas, log_dir, workload))
    if not args.skip_mlx_server and not blocked:
        start("mlx", lambda: runs.HttpSystem(system.MlxLmServer, main_model.path, openblas, log_dir, workload))
    results = runs.measure(started_systems, plan, workload, errors=errors)

    if quant_model is not None:
        print(f"\n[2] {quant_model.label}: decode, one stream", flush=True)
        started_systems = {}
        start("swallow", lambda: runs.HttpSystem(system.Swallow, quant_model.path, openblas, log_dir, workload))
        if not args.skip_raw and on_cpu():
            start("raw_float32", lambda: runs.RawSystem(quant_model.path, "float32", openblas, log_dir, workload))
        if not args.skip_raw:
            start("raw_default", lambda: runs.RawSystem(quant_model.path, "default", openblas, log_dir, workload))
        if not args.skip_mlx_server:
            start("mlx", lambda: runs.HttpSystem(system.MlxLmServer, quant_model.path, openblas, log_dir, workload))
        quant_errors = {}
        quant = runs.measure(started_systems, plan, workload, what=("decode",), errors=quant_errors,
                             slow={"raw_default": args.quant_tokens, "mlx": args.quant_tokens})
        errors.update({f"{quant_model.bits}-bit {k}": v for k, v in quant_errors.items()})

    if args.compare_blas and openblas and 8 in args.streams:
        print("\n[3] swallow-server with and without OpenBLAS: 1 and 8 streams", flush=True)
        started_systems = {}
        start("with", lambda: runs.HttpSystem(system.Swallow, main_model.path, openblas, log_dir, workload,
                                              name="swallow-server (OpenBLAS)"))
        start("without", lambda: runs.HttpSystem(system.Swallow, main_model.path, None, log_dir, workload,
                                                 name="swallow-server (reference BLAS)"))
        plain = runs.Plan(args.tokens, [1, 8], args.stream_tokens, 0, 0, repeat=min(args.repeat, 2))
        blas_errors = {}
        pair = runs.measure(started_systems, plain, workload, what=("streams",), errors=blas_errors)
        errors.update({f"OpenBLAS comparison, {k}": v for k, v in blas_errors.items()})
        if all("streams" in pair.get(k, {}) for k in ("with", "without")):
            blas = {"with": pair["with"]["streams"][8], "without": pair["without"]["streams"][8],
                    "with_1": pair["with"]["streams"][1], "without_1": pair["without"]["streams"][1],
                    "blas": {k: pair[k].get("blas") for k in pair}}

    near_free, near_free_errors, near_plan = {}, {}, overhead.default_plan(args.quick, args.repeat)
    if not args.skip_near_free:
        print("\n[4] near-free model: the server's own work per token and per turn", flush=True)
        near_free, near_free_errors = overhead.run(near_plan, log_dir, args.skip_mlx_server, args.skip_raw)
    tools = None
    if not args.skip_tools:
        print("\n[5] built-in tools: the python sandbox's start and a warm call, a browser open", flush=True)
        try:
            tools = builtin_tools.measure(rounds=3)
        except Exception as e:  # the tools' own failure, reported; the model figures stand
            tools = {"error": f"{type(e).__name__}: {e}"}

    batched = None
    if not args.skip_batch:
        lines, tokens = (32, args.stream_tokens) if args.quick else (64, 2 * args.stream_tokens)
        print(f"\n[6] the Batch API: {lines} lines of {tokens} tokens, against raw BatchGenerator", flush=True)
        try:
            batched = batch.measure(main_model.path, raw_mode, openblas, log_dir, renderer, lines, tokens,
                                    min(args.repeat, 2))
            batched.update(lines=lines, tokens=tokens)
        except Exception as e:
            errors["batch"] = f"{type(e).__name__}: {e}".splitlines()[0]

    machine["load_after"] = system.load_average()
    elapsed = time.perf_counter() - started
    print_report(args, machine, openblas, main_model, quant_model, results, quant, blas, errors, elapsed, batched)
    if not args.skip_near_free:
        print("\n" + "=" * 100 + "\nThe server's own work, on the near-free model\n")
        overhead.print_section(near_free, near_free_errors, near_plan)
    if tools is not None:
        print("\nBuilt-in tools (python -m bench.builtin_tools):")
        print(f"FAILED: {tools['error']}" if "error" in tools else builtin_tools.report(tools))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine, "openblas": openblas, "model": str(main_model.path), "args": vars(args),
            "results": results, "quantized": quant, "blas_comparison": blas, "batch": batched, "errors": errors,
            "elapsed_s": elapsed, "near_free": {"results": near_free, "errors": near_free_errors, "plan": vars(near_plan)},
            "tools": tools,
        }, indent=2, default=str))
    return 1 if "swallow" in errors or "swallow" in near_free_errors else 0


def print_report(args, machine, openblas, main_model, quant_model, results, quant, blas, errors, elapsed,
                 batched=None):
    print("\n" + "=" * 100)
    print(f"swallow-server benchmark: {main_model.label}; {machine['cpu']}, {machine['cores']} cores, "
          f"{machine['ram_gb']} GB RAM; mlx {machine['mlx']}, mlx-lm {machine['mlx_lm']}, {machine['device']}; "
          f"{'OpenBLAS' if openblas else 'reference BLAS'}; load average {machine['load_before']:.2f} → "
          f"{machine['load_after']:.2f}; {elapsed / 60:.1f} min")
    print(f"Greedy; decode {args.tokens} tokens; {args.stream_tokens} tokens per stream; conversation: "
          f"{args.prefix_tokens}-token shared prefix, {args.reply_tokens}-token turn-1 reply, TTFT = time to the "
          "first visible text of the reply's body. Aggregate = every stream's tokens over the time from the "
          "first stream's first token to the last one's end; 'while all N decode' = only the span when all "
          "streams are decoding (no arrivals, prefills or finished streams in it).\n")
    rows = report.main_rows(results)
    if quant_model is not None:
        rows += report.quant_rows(quant, quant_model.bits)
    print(report.table(rows, report.COLUMNS))
    print("\nraw mlx-lm: generate_step / BatchGenerator in-process, " + (
        "model cast to float32 (what swallow-server runs on CPU)" if on_cpu() else "model as mlx-lm loads it")
        + "; warm turn = the same prompt cache carried on. mlx_lm.server: /v1/completions with the "
        "harmony-rendered prompt text (same token ids); decode 16 / prefill 8 at once, like swallow-server. "
        "Each figure is the best of its rounds, the systems measured in turn.")
    if quant_model is not None:
        print(f"{quant_model.bits}-bit rows: mlx-lm's default keeps the checkpoint's {quant_model.dtype} scales, "
              "so it computes in bf16; mlx_lm.server does the same. An unquantized bf16 MoE cannot run in stock "
              "mlx-lm on CPU at all (gather_mm is float32-only), so 'mlx-lm default' is only measured on a "
              "quantized model.")
    for name, (served, rendered) in sorted(
            ((f"{k}/{what}", v) for k, r in results.items() for what, v in r.get("prompt_tokens", {}).items())):
        if served != rendered:
            print(f"Note: {name}: the server counted {served} prompt tokens, the rendering has {rendered}.")
    print("BLAS each process mapped: " + "; ".join(
        f"{k} {r['blas']}" for k, r in results.items() if "blas" in r))
    retried = {k: r["retries"] for k, r in results.items() if r.get("retries")}
    if retried:
        print("Connections reset and retried (mlx_lm.server listens with a backlog of 5): "
              + ", ".join(f"{k} {n}" for k, n in retried.items()))
    cached = {k: (r.get("turn2_cached_tokens"), r.get("turn2_prompt_tokens")) for k, r in results.items()
              if "turn2_prompt_tokens" in r}
    if cached:
        print("Turn 2 prompt cache: " + "; ".join(f"{k} {c} of {n} tokens cached" for k, (c, n) in cached.items()))
    if blas:
        print(f"OpenBLAS effect on swallow-server: 1 stream {blas['with_1']:.1f} vs {blas['without_1']:.1f} tok/s, "
              f"8 streams {blas['with']:.1f} vs {blas['without']:.1f} tok/s (with vs without; the processes mapped "
              f"{blas['blas']['with']} and {blas['blas']['without']}).")
    for key, why in errors.items():
        print(f"FAILED {key}: {why}")
    if batched:
        print(f"Batch API ({batched['lines']} lines of {batched['tokens']} tokens, batch 16): "
              f"{batched['batch']['tps']:.1f} tok/s vs raw BatchGenerator {batched['raw']['tps']:.1f} tok/s, "
              f"from the start to the last token, prefill included; {batched['cpu_ratio']:.2f}× raw's tokens per "
              "CPU-second (python -m bench.batch: also a live request beside a batch).")
    print("\nTargets:")
    print(report.format_targets(report.targets(results, quant if quant_model else None, blas,
                                                decode_target=0.95 if args.model == "demo" else 0.98)))
    if batched:
        met = batched["ratio"] >= batch.GOAL
        print(f"- [{'MET' if met else 'MISSED'}] batch ≥ {batch.GOAL}× raw BatchGenerator: {batched['ratio']:.2f}×")


if __name__ == "__main__":
    sys.exit(main())
