"""`swallow-server convert`: turn a GPT-OSS checkpoint into an MLX directory.

Mirrors ``mlx_lm.convert``'s flags and uses mlx-lm's own loading, casting,
quantization (with the gpt_oss quant predicate: the router stays at 8 bits)
and saving, with ``models.hf_layout`` installed so that transformers' bf16
layout (GPT-OSS-Swallow) loads. The output is a plain MLX checkpoint that
stock mlx-lm loads as well.

    python -m models.convert --hf-path SRC --mlx-path DST [-q] [--q-bits 6] ...
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import sys
import time
from pathlib import Path

DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_BITS = 6
DEFAULT_GROUP_SIZE = 64
# 4-bit conversions of GPT-OSS-Swallow made the analysis channel loop forever
# on some prompts; 6-bit (6.503 bits/weight with the 8-bit router) is the
# lowest quantization known to be stable.
MIN_STABLE_BITS = 6

# Everything a tokenizer / chat template / generation defaults may live in.
TOKENIZER_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
    "tiktoken.model",
    "chat_template*",
    "generation_config.json",
)


class ConvertError(Exception):
    """A problem reported to the user as one line, without a traceback."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--hf-path", "--model", dest="hf_path", required=True,
        help="source checkpoint: a local directory or a Hugging Face hub id "
             "(bf16 transformers layout, original MXFP4, or MLX)")
    parser.add_argument(
        "--mlx-path", dest="mlx_path", default="mlx_model",
        help="directory to write the MLX model to (must not exist or be empty)")
    parser.add_argument(
        "-q", "--quantize", action="store_true",
        help=f"quantize (default {DEFAULT_BITS}-bit, group size {DEFAULT_GROUP_SIZE}; "
             "the router stays at 8 bits)")
    parser.add_argument(
        "--q-bits", type=int, choices=(4, 6, 8), default=None,
        help=f"bits per weight for -q (default {DEFAULT_BITS}; below "
             f"{MIN_STABLE_BITS} is known to make this family loop)")
    parser.add_argument(
        "--q-group-size", type=int, choices=(32, 64, 128), default=None,
        help=f"quantization group size (default {DEFAULT_GROUP_SIZE})")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="dtype of the parameters that are not quantized (default: the "
             "checkpoint's own dtype from config.json)")
    parser.add_argument(
        "--revision", default=None, help="hub revision (branch, tag or commit)")
    return parser


def _log(msg: str) -> None:
    print(msg, flush=True)


def _resolve_source(hf_path: str, revision: str | None) -> Path:
    path = Path(hf_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConvertError(f"{path} has no config.json: not a model checkpoint")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    try:
        validate_repo_id(hf_path)
    except HFValidationError:
        raise ConvertError(
            f"{hf_path!r} is neither an existing directory nor a hub id") from None
    _log(f"Fetching {hf_path} from the Hugging Face hub (or the local cache)...")
    try:
        return Path(snapshot_download(
            hf_path, revision=revision, allow_patterns=DEFAULT_ALLOW_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, disk full...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConvertError(
            f"could not get {hf_path} from the Hugging Face hub "
            f"({type(e).__name__}: {first}). Check the name and your connection, "
            "or download it first and pass the local directory.") from None


def _check_group_size(config: dict, group_size: int) -> None:
    """mlx-lm silently skips layers whose input dim the group size doesn't
    divide; for gpt-oss-20b (2880 = 45 * 64) group size 128 would leave
    nearly every weight unquantized. Refuse instead."""
    dims = {
        "hidden_size": config.get("hidden_size"),
        "intermediate_size": config.get("intermediate_size"),
    }
    if config.get("num_attention_heads") and config.get("head_dim"):
        dims["num_attention_heads * head_dim"] = (
            config["num_attention_heads"] * config["head_dim"])
    bad = {k: v for k, v in dims.items() if isinstance(v, int) and v % group_size}
    if bad:
        desc = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise ConvertError(
            f"group size {group_size} does not divide {desc}: those weights "
            "would stay unquantized. Use a group size that divides them "
            "(64 for GPT-OSS).")


def _copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for pattern in TOKENIZER_PATTERNS:
        for f in sorted(glob.glob(str(src / pattern))):
            name = Path(f).name
            if Path(f).is_file() and name not in copied:
                shutil.copy(f, dst / name)
                copied.append(name)
    return copied


def _save_weights(dst: Path, model) -> None:
    """mlx_lm.utils.save_model, with a progress bar: each shard is computed
    tensor by tensor (loading, re-layout, casting, quantizing all happen
    here, lazily) and written before the next one, so memory stays about
    one shard (5 GB) above the source's."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.utils import get_total_parameters, make_shards
    from tqdm import tqdm

    weights = dict(tree_flatten(model.parameters()))
    shards = make_shards(weights)
    index = {
        "metadata": {
            "total_size": sum(v.nbytes for v in weights.values()),
            "total_parameters": get_total_parameters(model),
        },
        "weight_map": {},
    }
    model.update(tree_map(lambda _: mx.array([]), model.parameters()))
    weights.clear()
    name_fmt = ("model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1
                else "model.safetensors")
    with tqdm(total=index["metadata"]["total_size"], unit="B", unit_scale=True,
              desc="Writing", file=sys.stdout, mininterval=1.0) as bar:
        for i in range(len(shards)):
            shard, shards[i] = shards[i], None
            for v in shard.values():
                mx.eval(v)
                bar.update(v.nbytes)
            name = name_fmt.format(i + 1, len(shards))
            mx.save_safetensors(str(dst / name), shard, metadata={"format": "mlx"})
            index["weight_map"].update({k: name for k in shard})
            del shard
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))


def convert(hf_path: str, mlx_path: str, quantize: bool = False,
            q_bits: int | None = None, q_group_size: int | None = None,
            dtype: str | None = None, revision: str | None = None) -> float:
    """Convert; returns the bits per weight of the written model."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import (
        compute_bits_per_weight,
        dequantize_model,
        load_config,
        load_model,
        quantize_model,
        save_config,
    )

    from models import hf_layout

    hf_layout.install()
    start = time.monotonic()
    dst = Path(mlx_path).expanduser()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConvertError(f"{dst} already exists and is not empty; "
                           "remove it or pick another --mlx-path")
    if not quantize and (q_bits is not None or q_group_size is not None):
        raise ConvertError("--q-bits/--q-group-size need -q")
    bits = q_bits or DEFAULT_BITS
    group_size = q_group_size or DEFAULT_GROUP_SIZE

    src = _resolve_source(hf_path, revision)
    raw_config = load_config(src)
    model_type = raw_config.get("model_type")
    is_gpt_oss = model_type == "gpt_oss"
    if quantize:
        _check_group_size(raw_config, group_size)
        if is_gpt_oss and bits < MIN_STABLE_BITS:
            _log(f"WARNING: {bits}-bit GPT-OSS(-Swallow) conversions made the "
                 "analysis channel loop forever on some prompts; "
                 f"{MIN_STABLE_BITS}-bit is the lowest known to be stable.")

    try:
        layout = hf_layout.checkpoint_layout(src) if is_gpt_oss else None
        _log(f"[1/4] Loading {src} (model_type {model_type}"
             + (f", expert layout: {layout}" if layout else "") + ")")
        model, config = load_model(src, lazy=True)
    except (ValueError, FileNotFoundError) as e:  # mixed layouts, no weights...
        raise ConvertError(f"cannot load {src}: {e}") from None
    if is_gpt_oss:
        config = hf_layout.normalize_config(config)
    if layout == hf_layout.LAYOUT_HF_BF16 and (
            "quantization" in config or "quantization_config" in config):
        # A fine-tune of gpt-oss may keep the MXFP4 quantization_config of the
        # model it started from while its weights are plain bf16.
        _log("      Ignoring the config's quantization_config: the weights are bf16")
        config.pop("quantization", None)
        config.pop("quantization_config", None)

    if quantize and "quantization" in config:  # e.g. the original MXFP4 release
        _log("      Dequantizing the source's own quantization first")
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)

    dtype = dtype or config.get("torch_dtype") or config.get("dtype")
    if dtype in DTYPES:
        _log(f"[2/4] Casting unquantized parameters to {dtype}")
        mx_dtype = getattr(mx, dtype)
        cast_predicate = getattr(model, "cast_predicate", lambda _: True)

        def cast(k, v):
            if cast_predicate(k) and mx.issubdtype(v.dtype, mx.floating):
                return v.astype(mx_dtype)
            return v

        model.update(tree_map_with_path(cast, model.parameters()))
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = dtype
    else:
        _log("[2/4] Keeping the checkpoint's dtypes")

    if quantize:
        _log(f"[3/4] Quantizing to {bits}-bit, group size {group_size}"
             + (" (router at 8-bit)" if is_gpt_oss else ""))
        model, config = quantize_model(model, config, group_size, bits)
    else:
        _log("[3/4] No quantization (-q not given)")

    bpw = compute_bits_per_weight(model)
    _log(f"[4/4] Writing {dst}")
    dst.mkdir(parents=True, exist_ok=True)
    _save_weights(dst, model)
    save_config(config, config_path=dst / "config.json")
    copied = _copy_tokenizer_files(src, dst)
    if not any(n.startswith("tokenizer") for n in copied):
        _log("WARNING: the source has no tokenizer files; none were copied")
    else:
        _log(f"      Copied {', '.join(copied)}")
    _log(f"Done in {time.monotonic() - start:.0f} s: {dst}")
    _log(f"Bits per weight: {bpw:.3f}")
    return bpw


def run(args: argparse.Namespace) -> int:
    try:
        convert(args.hf_path, args.mlx_path, quantize=args.quantize,
                q_bits=args.q_bits, q_group_size=args.q_group_size,
                dtype=args.dtype, revision=getattr(args, "revision", None))
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="swallow-server convert",
        description="Convert a GPT-OSS checkpoint (incl. GPT-OSS-Swallow's bf16 "
                    "layout) to MLX, optionally quantized.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
