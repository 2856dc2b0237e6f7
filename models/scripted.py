"""Build deterministic test models: a model directory whose replies are written in advance.

The architecture lives in scripted_arch.py (copied into the directory as its `model_file`);
this module writes the directory: config.json with the scripts as harmony token ids, the
o200k_harmony tokenizer files, and a one-value weights file.

    build_scripted_model(path, {
        "What is 2+2?": "<|channel|>analysis<|message|>Add.<|end|>"
                        "<|start|>assistant<|channel|>final<|message|>4<|return|>",
    })

A reply is a whole assistant turn in harmony markup (what follows `<|start|>assistant`);
a list of replies scripts successive turns of a tool loop. The trigger is matched as the
token ids of its text, so make it a whole message (or the start of one).

A reply may contain DIE: when generation gets there, the model raises SystemExit, which no
step handler catches (for tests of the engine thread dying).
A reply may contain FAIL: when generation gets there, the model raises an exception inside the
batch step, as a real model failing mid-generation would (for tests of errors mid-stream).
"""

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx

from models import vocab

ARCH_FILE = Path(__file__).with_name("scripted_arch.py")
FAIL = "<|scripted_failure|>"  # stored as the id -1, which scripted_arch.py raises on
DIE = "<|scripted_engine_death|>"  # stored as the id -2: an error no step handler catches
MARKERS = {FAIL: -1, DIE: -2}


def build_scripted_model(
    dst: Path,
    scripts: dict,
    default_reply: str = "<|channel|>final<|message|>I have no script for that.<|return|>",
    *,
    context_length: int = 8192,
    weights_mb: float = 0,
    step_delay: float = 0.0,
    kv_width: int = 1,
) -> Path:
    """`weights_mb`: the size of its weights file (and of the model in memory), for tests of
    memory budgets; `step_delay`: seconds each forward pass takes, for tests of long streams;
    `kv_width`: its KV cache costs 8 * kv_width bytes per token, for tests of KV budgets."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    vocab.write_tokenizer_files(dst)
    encoding = vocab.load_harmony_encoding_offline(dst)

    def reply_ids(text: str) -> list:
        ids = []
        pieces = re.split(f"({'|'.join(map(re.escape, MARKERS))})", text)
        for piece in pieces:
            ids += [MARKERS[piece]] if piece in MARKERS else encoding.encode(piece, allowed_special="all")
        return ids

    config = {
        "model_type": "scripted",
        "model_file": "scripted_model.py",
        "vocab_size": 201088,
        "max_position_embeddings": context_length,
        "eos_token_id": [200002, 200012],
        "scripts": [
            {
                "trigger": encoding.encode(trigger, allowed_special=set()),
                "replies": [reply_ids(r) for r in ([replies] if isinstance(replies, str) else replies)],
            }
            for trigger, replies in scripts.items()
        ],
        "default_reply": reply_ids(default_reply),
        "anchor_size": max(1, int(weights_mb * 2**20 / 4)),
        "step_delay": step_delay,
        "kv_width": kv_width,
    }
    (dst / "config.json").write_text(json.dumps(config))
    shutil.copyfile(ARCH_FILE, dst / "scripted_model.py")
    mx.save_safetensors(str(dst / "model.safetensors"), {"anchor": mx.zeros((config["anchor_size"],))})
    return dst
