"""Finding a model (demo, local directory or Hugging Face repo) and loading it with mlx-lm."""

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hf_layout
from .errors import ModelError
from .vocab import load_harmony_encoding_offline

logger = logging.getLogger("swallow.models")

# "owner/name" or a bare legacy "name", in the Hub's allowed characters.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_USAGE_HINT = (
    "Pass --model PATH to use a local MLX model directory, or --model demo for a tiny random "
    "model that needs no download."
)


@dataclass
class LoadedModel:
    model: Any  # mlx.nn.Module (mlx-lm's gpt_oss Model for GPT-OSS checkpoints)
    config: dict
    path: Path
    encoding: Any  # openai_harmony.HarmonyEncoding
    model_id: str  # the --model spec as given ("demo" for the demo model)
    context_length: int
    dtype: str  # the floating-point dtype the weights are held in after loading
    weights_bytes: int = 0  # what the loaded parameters take in memory


DEFAULT_CONTEXT = 131072  # gpt-oss's, for a config that doesn't say


def context_length_of(config: dict) -> int:
    """A model's context size, from its config.json."""
    return int(config.get("max_position_embeddings") or DEFAULT_CONTEXT)


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(("/", ".", "~")):
        return True
    return os.sep in spec and not _REPO_ID.match(spec)


def _download(repo_id: str) -> Path:
    """The repo's snapshot in the Hugging Face cache, downloaded (with progress on standard
    error: bars on a terminal, log lines otherwise) when it isn't complete there. Files already
    cached are checked by size, new ones by hash too (models/download.py). When the Hub can't be
    reached, a complete cached copy is used as it is."""
    from huggingface_hub import constants

    from . import download, progress

    if constants.HF_HUB_OFFLINE:  # asked not to ask the Hub
        cached = download.cached_snapshot(repo_id)
        if cached is None:
            raise ModelError(f"'{repo_id}' is not (completely) in the local Hugging Face cache, and HF_HUB_OFFLINE "
                             f"is set. {_USAGE_HINT}")
        return cached
    try:
        with progress.shown(write=logger.info) as show:
            return download.pull(repo_id, on_event=show, verify_all=False)
    except download.HubUnreachable as e:
        cached = download.cached_snapshot(repo_id)
        if cached is None:
            raise ModelError(f"{e} No complete copy of it is in the local Hugging Face cache either. "
                             f"{_USAGE_HINT}") from e
        logger.warning("%s Using the copy in the local Hugging Face cache.", e)
        return cached
    except ModelError as e:
        raise ModelError(f"{e} {_USAGE_HINT}") from e


def resolve_model_path(spec: str) -> Path:
    """The local directory for a --model spec: "demo", a directory, or a Hugging Face repo id."""
    if spec == "demo":
        from .demo import demo_model_dir

        return demo_model_dir()
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} has no config.json, so it is not a model directory. {_USAGE_HINT}")
        return local
    if local.exists():
        raise ModelError(f"{local} is a file; --model takes a model directory. {_USAGE_HINT}")
    if _looks_like_path(spec):
        raise ModelError(f"No such directory: {local}. {_USAGE_HINT}")
    from .catalog import resolve

    return _download(resolve(spec))  # a repo id, or a known short name for one ("swallow:8bit")


def memory_limit() -> tuple[int, str]:
    """(how much memory a model may use here, where the number comes from): Metal's recommended
    working set on Apple Silicon (what the GPU may wire), else the machine's physical memory."""
    import mlx.core as mx

    if mx.metal.is_available():
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        return int(info["max_recommended_working_set_size"]), "Metal's recommended working set"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def memory_limit_bytes() -> int:
    return memory_limit()[0]


# The least context worth serving, for the memory check: one request of the default max_tokens.
MIN_KV_TOKENS = 4096


def _config_of(model_dir: Path) -> dict:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def weights_in_memory(model_dir: Path) -> int:
    """The weights' size once loaded, as well as the files tell: their bytes on disk, twice that for
    16-bit unquantized weights where there is no GPU (they are held in float32 there)."""
    size = sum(f.stat().st_size for f in Path(model_dir).glob("model*.safetensors"))
    config = _config_of(model_dir)
    if not has_gpu() and not config.get("quantization") and config.get("torch_dtype") in ("bfloat16", "float16"):
        size *= 2
    return size


def kv_cache_cost(config: dict) -> tuple[int, int]:
    """(bytes per context token, fixed bytes) of one request's KV cache, from a config.json:
    full-attention layers grow with the context, sliding-window ones stop at their window.
    Elements are 16-bit with a GPU, float32 without (the CPU runs in float32). (0, 0) for a
    config that doesn't say its attention shape. The engine measures the real cost once the
    model is loaded (server/engine/memory.py); this is for deciding before loading."""
    layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else 0)
    if not (layers and kv_heads and head_dim):
        return 0, 0
    per_layer = 2 * kv_heads * head_dim * (2 if has_gpu() else 4)  # keys and values
    kinds = config.get("layer_types") or ["full_attention"] * layers
    sliding = sum(1 for kind in kinds if kind == "sliding_attention")
    return per_layer * (len(kinds) - sliding), per_layer * sliding * int(config.get("sliding_window") or 0)


def check_memory(model_dir: Path, shards: int = 1, kv_memory_mb: int = 0) -> None:
    """ModelError, with the numbers, when the model's weights and the least KV cache it can serve
    with don't fit in the memory a model may use here (`shards`: processes splitting the model,
    each holding about 1/shards of it). That least cache is kv_memory_mb when it is set (the
    engine reserves that much), else one request of MIN_KV_TOKENS tokens."""
    from .download import format_size as _size

    model_dir = Path(model_dir)
    config = _config_of(model_dir)
    shards = max(1, shards)
    weights = weights_in_memory(model_dir) // shards
    if kv_memory_mb:
        kv, kv_for = kv_memory_mb * 2**20, f"kv_memory_mb = {kv_memory_mb}"
    else:
        tokens = min(MIN_KV_TOKENS, context_length_of(config))
        per_token, fixed = kv_cache_cost(config)
        kv, kv_for = (tokens * per_token + fixed) // shards, f"one {tokens:,}-token request, the least it can serve"
    limit, limit_from = memory_limit()
    if weights + kv > limit:
        split = f" (its share on each of {shards} processes)" if shards > 1 else ""
        lower = "lower kv_memory_mb, " if kv_memory_mb else ""
        raise ModelError(
            f"The model in {model_dir} needs ~{_size(weights)} of memory for its weights{split} + ~{_size(kv)} "
            f"for its KV cache ({kv_for}) = ~{_size(weights + kv)}, but this machine can give a model only "
            f"~{_size(limit)} ({limit_from}). Loading it would swap or crash, so it is not loaded: {lower}use a "
            "smaller variant (for example a 6-bit conversion, ~17 GB, instead of 8-bit or fp16), or "
            "--model demo to try the server with a tiny random model."
        )


def has_gpu() -> bool:
    import mlx.core as mx

    cuda = getattr(mx, "cuda", None)
    return mx.metal.is_available() or bool(cuda and cuda.is_available())


def _to_float32(model) -> None:
    # On the CPU, MLX's gather_mm (the MoE expert matmul) only runs in float32, so a bf16 MoE
    # crashes; bf16 quantized matmuls are also ~8-10x slower than float32 there. Packed
    # quantized weights (uint32) stay as they are; their scales and biases are floats and follow.
    import mlx.core as mx

    model.apply(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) and a.dtype != mx.float32 else a)


def _weights_summary(model) -> tuple[str, int]:
    # The float dtype holding the most bytes, and the total bytes of all parameters.
    import mlx.core as mx
    from mlx.utils import tree_flatten

    by_dtype: dict[str, int] = {}
    total = 0
    for _, a in tree_flatten(model.parameters()):
        total += a.nbytes
        if mx.issubdtype(a.dtype, mx.floating):
            name = str(a.dtype).removeprefix("mlx.core.")
            by_dtype[name] = by_dtype.get(name, 0) + a.nbytes
    return (max(by_dtype, key=by_dtype.get) if by_dtype else "unknown"), total


def prepare_model(spec: str, *, trust_remote_code: bool = False, shards: int = 1, kv_memory_mb: int = 0) -> Path:
    """Everything that can fail before loading, and is cheap: find (or download) the model,
    read its config, check trust and memory (check_memory). Raises ModelError with a message for
    the user."""
    path = resolve_model_path(spec)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not read {path / 'config.json'}: {e}. {_USAGE_HINT}") from e
    if config.get("model_file") and not trust_remote_code:
        raise ModelError(
            f"The model in {path} builds its architecture with its own Python code "
            f"({config['model_file']}). That code runs on your machine with your permissions, so it "
            "is off by default: pass --trust-remote-code if you trust this model's author."
        )
    check_memory(path, shards, kv_memory_mb)
    return path


def load_model(spec: str, *, trust_remote_code: bool = False, path: Path | None = None,
               group=None) -> LoadedModel:
    """Find, check and load a model, ready to run (`path`: what prepare_model already found).

    `group`: an mx.distributed group of more than one process (tensor parallelism): the model is
    split with its own `shard(group)` before any weight is read, so this process holds only its
    part of the sharded weights (attention heads and the experts' hidden units) plus the parts
    every rank keeps whole (embeddings, norms, router, output head).

    Runs on the server's generation thread (MLX streams belong to the thread that made them), so
    it must not start threads of its own."""
    import mlx.core as mx
    from mlx_lm.utils import load_model as mlx_load_model

    if path is None:
        path = prepare_model(spec, trust_remote_code=trust_remote_code)
    config = json.loads((path / "config.json").read_text())
    encoding = load_harmony_encoding_offline(path)

    # GPT-OSS checkpoints come in three layouts (MLX, MXFP4, transformers' bf16); mlx-lm reads
    # only the first two without the patch.
    hf_layout.install()
    if config.get("model_type") == "gpt_oss":
        logger.info("Checkpoint layout: %s", hf_layout.checkpoint_layout(path))
    try:
        model, config = mlx_load_model(path, lazy=True, trust_remote_code=trust_remote_code)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ModelError(
            f"mlx-lm could not load the model in {path}: {e}. swallow-server needs a GPT-OSS model "
            f"in MLX format (safetensors with config.json). {_USAGE_HINT}"
        ) from e
    if group is not None and group.size() > 1:
        if not hasattr(model, "shard"):
            raise ModelError(f"The model in {path} ({config.get('model_type')}) cannot be split across "
                             "processes: its mlx-lm architecture has no shard().")
        model.shard(group)  # still lazy: only this rank's slices are read below
    if not has_gpu():
        _to_float32(model)
    mx.eval(model.parameters())

    dtype, size = _weights_summary(model)
    quant = config.get("quantization")
    quant_text = f", {quant['bits']}-bit quantized" if isinstance(quant, dict) and "bits" in quant else ""
    logger.info("Loaded %s from %s (%s%s, %s in memory)", spec, path, dtype, quant_text, _gb(size))
    return LoadedModel(
        model=model,
        config=config,
        path=path,
        encoding=encoding,
        model_id=spec,
        context_length=context_length_of(config),
        dtype=dtype,
        weights_bytes=size,
    )

