"""The served models in Ollama's shapes: /api/tags (every model this server serves), /api/show (one
model's details), /api/ps (the loaded ones).

What Ollama reads from a GGUF file comes here from the model directory's config.json: the family
(`gptoss` for gpt_oss models, as Ollama names that architecture), the parameter count (computed
from the architecture: 20.9B for gpt-oss-20b and its Swallow conversions), the quantization (MLX's
bits, `MXFP4`, or the unquantized dtype) and the context length this server gives it. A model's
`digest` is a sha256 of its config.json and the names and sizes of its weight files: it changes
when the files do. A model listed but not downloaded yet has size 0.
"""

import datetime
import hashlib
import json
import time
from pathlib import Path

from models.loading import has_gpu
from server.registry.registry import Registry, Slot

FAMILY_OF = {"gpt_oss": "gptoss"}  # config.json's model_type -> Ollama's family name
CAPABILITIES = ["completion", "tools", "thinking"]
FOREVER = 2**63 / 1e9  # seconds: what Ollama shows for a model kept loaded forever (keep_alive -1)
WEIGHTS = "*.safetensors"
STARTED = time.time()
TEMPLATE_NOTE = ("swallow-server renders every prompt in OpenAI's harmony format (openai-harmony) and parses the "
                 "reply with harmony's parser; there is no Go template to show or to change.")


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat().replace("+00:00", "Z")


def _directory(slot: Slot) -> Path | None:
    return slot.listed.local_dir()


def _config(directory: Path | None) -> dict:
    if directory is None:
        return {}
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def parameter_count(config: dict) -> int | None:
    """The parameters of a gpt_oss model, from its architecture (biases, sinks and norms included)."""
    try:
        hidden, inter = config["hidden_size"], config["intermediate_size"]
        heads, kv, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
        experts, layers, vocab = config["num_local_experts"], config["num_hidden_layers"], config["vocab_size"]
    except (KeyError, TypeError):
        return None
    attention = (hidden * heads * head_dim + heads * head_dim  # q
                 + 2 * (hidden * kv * head_dim + kv * head_dim)  # k, v
                 + heads * head_dim * hidden + hidden  # o
                 + heads)  # sinks
    router = hidden * experts + experts
    mlp = experts * (hidden * 2 * inter + 2 * inter + inter * hidden + hidden)
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + router + mlp + 2 * hidden) + embeddings + hidden


def quantization(config: dict) -> str:
    quantized = config.get("quantization") or config.get("quantization_config") or {}
    mode = str(quantized.get("mode") or quantized.get("quant_method") or "affine")
    if mode.lower() != "affine":
        return mode.upper()  # mxfp4
    if quantized.get("bits"):
        return f"{quantized['bits']}-bit"
    return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(config.get("torch_dtype"), "")


def details(config: dict) -> dict:
    family = FAMILY_OF.get(config.get("model_type"), config.get("model_type") or "")
    count = parameter_count(config)
    return {"parent_model": "", "format": "safetensors", "family": family, "families": [family] if family else None,
            "parameter_size": f"{count / 1e9:.1f}B" if count else "", "quantization_level": quantization(config)}


def _files(directory: Path | None) -> list[Path]:
    return sorted(directory.glob(WEIGHTS)) if directory is not None else []


def digest(slot: Slot, directory: Path | None) -> str:
    hashed = hashlib.sha256(slot.listed.spec.encode())
    if directory is not None:
        try:
            hashed.update((directory / "config.json").read_bytes())
        except OSError:
            pass
        for path in _files(directory):
            hashed.update(f"{path.name}:{path.stat().st_size}".encode())
    return hashed.hexdigest()


def _modified(directory: Path | None) -> str:
    try:
        return iso((directory / "config.json").stat().st_mtime) if directory is not None else iso(STARTED)
    except OSError:
        return iso(STARTED)


def context_length(slot: Slot) -> int | None:
    return slot.state.context_length if slot.state is not None else slot.listed.context_length()


def tag(slot: Slot) -> dict:
    """One entry of /api/tags."""
    directory = _directory(slot)
    return {"name": slot.name, "model": slot.name, "modified_at": _modified(directory),
            "size": sum(path.stat().st_size for path in _files(directory)), "digest": digest(slot, directory),
            "details": details(_config(directory)), "capabilities": CAPABILITIES}


def show(slot: Slot) -> dict:
    """/api/show of one model."""
    directory = _directory(slot)
    config = _config(directory)
    settings = slot.listed.settings
    family = details(config)["family"] or "unknown"
    context = context_length(slot)
    info = {"general.architecture": family, "general.basename": slot.name,
            "general.parameter_count": parameter_count(config), f"{family}.context_length": context}
    for key, field in (("block_count", "num_hidden_layers"), ("embedding_length", "hidden_size"),
                       ("feed_forward_length", "intermediate_size"), ("attention.head_count", "num_attention_heads"),
                       ("attention.head_count_kv", "num_key_value_heads"), ("attention.key_length", "head_dim"),
                       ("attention.sliding_window", "sliding_window"), ("expert_count", "num_local_experts"),
                       ("expert_used_count", "num_experts_per_tok")):
        if field in config:
            info[f"{family}.{key}"] = config[field]
    parameters = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k,
                  "min_p": settings.min_p, "num_predict": settings.max_tokens, "num_ctx": context}
    return {
        "license": "",
        "modelfile": f"# served by swallow-server\nFROM {slot.listed.spec}\n",
        "parameters": "\n".join(f"{name:<30} {value}" for name, value in parameters.items() if value is not None),
        "template": TEMPLATE_NOTE,
        "details": details(config),
        "model_info": {k: v for k, v in info.items() if v is not None},
        "capabilities": CAPABILITIES,
        "modified_at": _modified(directory),
    }


def expires_at(slot: Slot) -> str:
    """When the model will be unloaded for idleness: its keep-alive after the last request (a busy
    model: after now)."""
    if slot.keep_alive is None or slot.keep_alive >= FOREVER:  # a keep-alive of 1e300 s is forever too
        return iso(time.time() + FOREVER)
    idle_since = time.monotonic() if slot.busy else slot.last_used
    return iso(time.time() + idle_since + slot.keep_alive - time.monotonic())


def running(registry: Registry) -> list[dict]:
    """/api/ps: the loaded models, the memory their weights take (all of it the GPU's on a Mac's
    unified memory or with CUDA; none without a GPU), when they will be unloaded."""
    models = []
    for slot in registry.loaded:
        state = slot.state  # None once it is unloaded, which may happen while this runs
        if state is None:
            continue
        size = registry.size(slot)
        directory = _directory(slot)
        models.append({"name": slot.name, "model": slot.name, "size": size, "digest": digest(slot, directory),
                       "details": details(_config(directory)), "expires_at": expires_at(slot),
                       "size_vram": size if has_gpu() else 0, "context_length": state.context_length})
    return models
