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

# What a GPT-OSS MLX repo needs at run time (weights, configs, tokenizer, custom code if any,
# docs); leaves out e.g. the original PyTorch checkpoint some repos also carry.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.jinja", "*.tiktoken", "*.md"]
# Seconds to wait for the Hub to answer a metadata request before falling back to a cached copy.
HUB_ETAG_TIMEOUT_S = 10

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
    import huggingface_hub
    from huggingface_hub import errors

    try:
        path = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=HUB_PATTERNS, etag_timeout=HUB_ETAG_TIMEOUT_S
        )
    except errors.GatedRepoError as e:
        why = "it is gated: accept its terms on huggingface.co and log in with `hf auth login`"
        raise ModelError(f"Could not download '{repo_id}' from Hugging Face: {why}. {_USAGE_HINT}") from e
    except errors.RepositoryNotFoundError as e:
        why = "no such repository (or it is private and you are not logged in)"
        raise ModelError(f"Could not download '{repo_id}' from Hugging Face: {why}. {_USAGE_HINT}") from e
    except errors.LocalEntryNotFoundError as e:
        why = "the Hub could not be reached and no copy is in the local Hugging Face cache"
        raise ModelError(f"Could not download '{repo_id}' from Hugging Face: {why}. {_USAGE_HINT}") from e
    except Exception as e:  # network errors, bad revisions, full disk…: all end the same way
        raise ModelError(f"Could not download '{repo_id}' from Hugging Face: {e}. {_USAGE_HINT}") from e
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"The Hugging Face repository '{repo_id}' has no config.json, so it is not a model. {_USAGE_HINT}")
    return path


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
    return _download(spec)


def memory_limit_bytes() -> int:
    """How much memory a model may use here: Metal's recommended working set on Apple Silicon
    (what the GPU may wire), else the machine's physical memory."""
    import mlx.core as mx

    if mx.metal.is_available():
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        return int(info["max_recommended_working_set_size"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(model_dir: Path, shards: int = 1) -> None:
    """ModelError when the model's weights alone exceed the memory they may use here (`shards`:
    processes splitting the model, each holding about 1/shards of it)."""
    model_dir = Path(model_dir)
    needed = sum(f.stat().st_size for f in model_dir.glob("model*.safetensors")) // max(1, shards)
    limit = memory_limit_bytes()
    if needed > limit:
        split = f" (its share on each of {shards} processes)" if shards > 1 else ""
        raise ModelError(
            f"The model in {model_dir} needs ~{_gb(needed)}{split} of memory for its weights, but this "
            f"machine can give a model only ~{_gb(limit)}. Use a smaller variant (for example a "
            "6-bit conversion, ~17 GB, instead of 8-bit or fp16), or --model demo to try the "
            "server with a tiny random model."
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


def prepare_model(spec: str, *, trust_remote_code: bool = False, shards: int = 1) -> Path:
    """Everything that can fail before loading, and is cheap: find (or download) the model,
    read its config, check trust and memory. Raises ModelError with a message for the user."""
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
    check_memory(path, shards)
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

