"""`--model demo`: a tiny GPT-OSS with random weights, built locally in seconds.

It exercises the whole server (harmony prompts, MoE, sliding-window caches, streaming) without a
download or a 17 GB model; what it generates is random noise.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .paths import cache_dir
from .vocab import VOCAB_SIZE, write_tokenizer_files

logger = logging.getLogger("swallow.models")

# Bump when the demo model's config or weights change, so an old cached copy is not reused.
DEMO_NAME = "demo-gpt-oss-v1"

# The logits' standard deviation we aim for: with the default init they come out ~0.6, and
# sampling 201088 near-equal logits picks a uniformly random token (specials included) forever.
_LOGIT_STD = 3.0

_README = """# Demo GPT-OSS model (random weights)

Built by swallow-server for `--model demo`. It has GPT-OSS's architecture (mlx-lm `gpt_oss`:
alternating sliding-window and full attention, mixture of experts, attention sinks, YaRN rope) and
its real tokenizer (o200k_harmony, 201088 ids), but tiny sizes and random weights.

**Its output is random noise.** It exists to try and test the server without downloading a model.
Delete this directory to have it rebuilt.
"""


def _config(**sizes) -> dict:
    # Mirrors gpt-oss-20b's config.json apart from the sizes.
    layers = sizes["num_hidden_layers"]
    return {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        **sizes,
        "experts_per_token": sizes["num_experts_per_tok"],
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        "vocab_size": VOCAB_SIZE,
        "rms_norm_eps": 1e-05,
        "rope_theta": 150000,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
        },
        "initial_context_length": 4096,
        "max_position_embeddings": 131072,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "bos_token_id": 199998,
        "eos_token_id": [200002, 199999, 200012],
        "pad_token_id": 199999,
        "use_cache": True,
    }


def build_gpt_oss(
    dst: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 96,
    num_hidden_layers: int = 2,
    num_local_experts: int = 4,
    num_experts_per_tok: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 16,
    sliding_window: int = 128,
    seed: int = 0,
    dtype: str = "bfloat16",
) -> Path:
    """Write a random-weight gpt_oss model in MLX format to `dst` (which must not exist yet).

    Built in a temporary directory next to `dst` and renamed into place, so a crash midway never
    leaves a directory that looks usable."""
    import mlx.core as mx
    from mlx_lm.models.gpt_oss import Model, ModelArgs
    from mlx_lm.utils import save_config, save_model

    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} already exists")
    config = _config(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_local_experts=num_local_experts,
        num_experts_per_tok=num_experts_per_tok,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        sliding_window=sliding_window,
        torch_dtype=dtype,
    )

    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    # Default init gives flat logits (see _LOGIT_STD); the final norm makes the hidden state's
    # RMS 1, so a head with entries of std s/sqrt(hidden) gives logits of std about s.
    head = model.lm_head.weight
    model.lm_head.weight = mx.random.normal(head.shape, scale=_LOGIT_STD / hidden_size**0.5)
    # Give the attention sinks some spread too (they are zeros at init).
    for layer in model.layers:
        layer.self_attn.sinks = mx.random.normal(layer.self_attn.sinks.shape)
    target = getattr(mx, dtype)
    model.apply(lambda a: a.astype(target) if mx.issubdtype(a.dtype, mx.floating) else a)
    mx.eval(model.parameters())

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.building."))
    try:
        save_model(tmp, model)
        save_config(config, tmp / "config.json")
        write_tokenizer_files(tmp)
        (tmp / "README.md").write_text(_README)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, dst)
        except OSError:
            # Another process finished the same directory first: keep theirs.
            if not (dst / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def built_demo_dir() -> Path | None:
    """The demo model's directory when it has been built (nothing is built or logged)."""
    path = cache_dir() / DEMO_NAME
    return path if (path / "config.json").is_file() else None


def demo_model_dir() -> Path:
    """The demo model's directory in the cache, built on first use and reused afterwards."""
    path = cache_dir() / DEMO_NAME
    if built_demo_dir() is None:
        # Builds are renamed into place complete, so a directory without config.json was left
        # by something else (a hand edit, a full disk): start over.
        if path.is_dir():
            shutil.rmtree(path)
        logger.info("Building the demo model in %s (one time, a few seconds)", path)
        build_gpt_oss(path)
    logger.warning(
        "DEMO MODEL: --model demo has random weights; everything it generates is random noise. "
        "It is for trying the server out; pass --model with a GPT-OSS model for real answers."
    )
    return path

