"""Load GPT-OSS checkpoints whose experts are in transformers' bf16 layout.

mlx-lm's gpt_oss ``Model.sanitize`` understands two checkpoint layouts; the
GPT-OSS-Swallow fine-tunes (re-trained in bf16, saved by transformers) use a
third one. All three use the same names for everything outside the experts
(embed_tokens, q/k/v/o_proj + biases, sinks, the norms, mlp.router, lm_head),
so only the experts need rewriting. Per layer, with E experts, H = hidden and
I = intermediate:

* MXFP4 (the original openai/gpt-oss release; stock mlx-lm handles it):
  ``experts.gate_up_proj_blocks`` / ``_scales`` packed 4-bit, laid out
  (E, out, in) like a Linear, gate and up interleaved on the *rows*
  (out axis), plus ``gate_up_proj_bias`` (E, 2I), ``down_proj_blocks`` /
  ``_scales`` and ``down_proj_bias`` (E, H).
* transformers bf16 (Swallow; stock mlx-lm fails with "parameters not in
  model", and if the names were simply fixed it would slice the wrong axis):
  ``experts.gate_up_proj`` (E, H, 2I) laid out (in, out) -- the forward is
  ``x @ gate_up_proj`` -- with gate = ``[..., ::2]`` and up = ``[..., 1::2]``
  interleaved on the *last* axis; ``gate_up_proj_bias`` (E, 2I) interleaved
  the same way; ``experts.down_proj`` (E, I, H), also (in, out);
  ``down_proj_bias`` (E, H).
* MLX (already converted): ``experts.{gate,up,down}_proj.{weight,bias}``,
  weights (E, out, in) -- gate/up (E, I, H), down (E, H, I) -- which is what
  mlx-lm's SwitchGLU holds. Stock sanitize passes these through.

So the bf16 layout needs de-interleaving on the last axis *and* a transpose
of every expert weight. In gpt-oss-20b H == I == 2880, so a missing transpose
loads without any shape error and produces garbage: the layout is therefore
decided once per checkpoint from its key names, never per tensor from shapes.

The math matches: transformers computes ``(clamp(up, -7, 7) + 1) *
g * sigmoid(1.702 * g)`` with ``g = min(gate, 7)``, which is exactly
mlx-lm's ``swiglu_oai`` used by SwitchGLU(activation=SwigluOAI()).

``install()`` hooks this into mlx-lm's own loading (no fork of its model file):

1. ``gpt_oss.Model.sanitize``: bf16 expert tensors are rewritten to the MLX
   names/shapes; MXFP4 and MLX checkpoints go to the stock sanitize untouched.
2. ``gpt_oss.ModelArgs.from_dict``: transformers >= 5 writes ``rope_parameters``
   (with ``rope_theta`` inside) instead of ``rope_scaling`` / ``rope_theta``;
   mlx-lm's gpt_oss only reads the latter and would silently drop YaRN.
3. ``gpt_oss.initialize_rope``: gpt-oss configs say ``"truncate": false`` for
   YaRN (the openai reference and transformers do not round the correction
   range); mlx-lm's YarnRoPE always rounds it (floor/ceil), which shifts a few
   rotary frequencies. Honour the flag.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Iterable, Optional

LAYOUT_MXFP4 = "mxfp4"
LAYOUT_HF_BF16 = "transformers-bf16"
LAYOUT_MLX = "mlx"

_INSTALLED_MARK = "_swallow_hf_layout"


def detect_layout(keys: Iterable[str]) -> Optional[str]:
    """Decide a checkpoint's expert layout from its weight names alone.

    Returns LAYOUT_MXFP4, LAYOUT_HF_BF16, LAYOUT_MLX, or None when the keys
    hold no expert weights at all. Raises ValueError on a mix of layouts.
    """
    found = set()
    for k in keys:
        if ".experts." not in k:
            continue
        name = k.rsplit(".experts.", 1)[1]
        if name.endswith(("_blocks", "_scales")) and name.startswith(
            ("gate_up_proj", "down_proj")
        ):
            found.add(LAYOUT_MXFP4)
        elif name in ("gate_up_proj", "down_proj"):
            found.add(LAYOUT_HF_BF16)
        elif name.split(".")[0] in ("gate_proj", "up_proj", "down_proj"):
            found.add(LAYOUT_MLX)
    if len(found) > 1:
        raise ValueError(
            f"GPT-OSS checkpoint mixes expert layouts {sorted(found)}; "
            "refusing to guess"
        )
    return found.pop() if found else None


def _safetensors_keys(path: Path) -> list[str]:
    """Tensor names from a .safetensors header, without reading the tensors."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


def checkpoint_layout(model_dir: str | Path) -> Optional[str]:
    """The expert layout of a local checkpoint directory (see detect_layout)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        keys = json.loads(index.read_text())["weight_map"].keys()
    else:
        keys = [k for f in sorted(model_dir.glob("model*.safetensors"))
                for k in _safetensors_keys(f)]
    return detect_layout(keys)


def hf_bf16_to_mlx(weights: dict) -> dict:
    """Rewrite transformers-layout expert tensors to mlx-lm's SwitchGLU names.

    Everything that is not an expert tensor is passed through unchanged.
    """
    import mlx.core as mx

    out = {}
    for k, v in weights.items():
        prefix, sep, name = k.rpartition(".experts.")
        if not sep:
            out[k] = v
            continue
        p = prefix + ".experts."
        if name == "gate_up_proj":  # (E, H, 2I), x @ W, interleaved columns
            out[p + "gate_proj.weight"] = mx.contiguous(v[..., ::2].swapaxes(-1, -2))
            out[p + "up_proj.weight"] = mx.contiguous(v[..., 1::2].swapaxes(-1, -2))
        elif name == "gate_up_proj_bias":  # (E, 2I), interleaved
            out[p + "gate_proj.bias"] = mx.contiguous(v[..., ::2])
            out[p + "up_proj.bias"] = mx.contiguous(v[..., 1::2])
        elif name == "down_proj":  # (E, I, H) -> (E, H, I)
            out[p + "down_proj.weight"] = mx.contiguous(v.swapaxes(-1, -2))
        elif name == "down_proj_bias":  # (E, H)
            out[p + "down_proj.bias"] = v
        else:
            raise ValueError(f"unexpected expert tensor {k!r} in a bf16 checkpoint")
    return out


def normalize_config(config: dict) -> dict:
    """Return a copy of a gpt_oss config that mlx-lm's ModelArgs reads fully.

    transformers >= 5 saves ``rope_parameters`` ({"rope_type": "yarn",
    "rope_theta": ..., "factor": ...}); mlx-lm reads ``rope_scaling`` and a
    top-level ``rope_theta``. Older configs are returned unchanged.
    """
    config = dict(config)
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and "rope_type" in rp:  # not a per-layer-type dict
        if "rope_theta" in rp and "rope_theta" not in config:
            config["rope_theta"] = rp["rope_theta"]
        if config.get("rope_scaling") is None and rp.get("rope_type") != "default":
            config["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    return config


def _untruncated_yarn(rope, dims: int, base: float, scaling: dict) -> None:
    """Recompute a YarnRoPE's frequencies without rounding the correction range."""
    import mlx.core as mx

    factor = scaling["factor"]
    orig = scaling.get("original_max_position_embeddings", 4096)
    beta_fast = scaling.get("beta_fast", 32)
    beta_slow = scaling.get("beta_slow", 1)

    def corr_dim(rot):
        return dims * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(corr_dim(beta_fast), 0), min(corr_dim(beta_slow), dims - 1)
    if low == high:
        high += 0.001
    ramp = mx.clip((mx.arange(dims // 2, dtype=mx.float32) - low) / (high - low), 0, 1)
    mask = 1.0 - ramp
    freq_extra = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    freq_inter = factor * freq_extra
    rope._freqs = (freq_inter * freq_extra) / (
        freq_inter * mask + freq_extra * (1 - mask)
    )


def install() -> None:
    """Hook the bf16 layout (and the config/RoPE fixes) into mlx-lm. Idempotent."""
    from mlx_lm.models import gpt_oss

    if getattr(gpt_oss, _INSTALLED_MARK, False):
        return

    stock_sanitize = gpt_oss.Model.sanitize

    def sanitize(self, weights):
        if detect_layout(weights.keys()) == LAYOUT_HF_BF16:
            return hf_bf16_to_mlx(weights)
        return stock_sanitize(self, weights)

    sanitize.__doc__ = "bf16-layout aware sanitize (models.hf_layout)"
    gpt_oss.Model.sanitize = sanitize

    stock_from_dict = gpt_oss.ModelArgs.from_dict.__func__

    def from_dict(cls, params):
        return stock_from_dict(cls, normalize_config(params))

    gpt_oss.ModelArgs.from_dict = classmethod(from_dict)

    stock_initialize_rope = gpt_oss.initialize_rope

    def initialize_rope(dims, base, traditional, scaling_config=None,
                        max_position_embeddings=None):
        rope = stock_initialize_rope(dims, base, traditional,
                                     scaling_config=scaling_config,
                                     max_position_embeddings=max_position_embeddings)
        if (scaling_config
                and scaling_config.get("rope_type", scaling_config.get("type")) == "yarn"
                and scaling_config.get("truncate", True) is False
                and hasattr(rope, "_freqs")):
            _untruncated_yarn(rope, dims, base, scaling_config)
        return rope

    gpt_oss.initialize_rope = initialize_rope
    setattr(gpt_oss, _INSTALLED_MARK, True)
