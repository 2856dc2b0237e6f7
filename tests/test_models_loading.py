"""models.vocab / models.demo / models.loading, against the real mlx, mlx-lm, harmony and tokenizers.

Building tokenizer.json (~10 s) and importing mlx-lm (~4 s) dominate; both happen once per session.
"""

import hashlib
import json
import os
import time

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from models import vocab
from models.errors import ModelError
from models.loading import (
    check_memory,
    load_model,
    memory_limit_bytes,
    resolve_model_path,
)
from models.paths import cache_dir

TEXTS = {
    "english": "The quick brown fox doesn't jump over 1,234,567 lazy dogs.\n\n  def f(x):\treturn x",
    "japanese": "吾輩は猫である。名前はまだ無い。東京科学大学のSwallowは日本語が得意です！",
    "emoji": "Party 🎉🥳, swan 🦢, family 👩‍👩‍👧‍👦, flag 🇯🇵, skin tone 👍🏽.",
}


@pytest.fixture(scope="session", autouse=True)
def swallow_cache(tmp_path_factory):
    """One cache directory for this whole test session, so the slow builds run once."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("swallow-cache")
        mp.setenv("SWALLOW_CACHE_DIR", str(path))
        # load_harmony_encoding_offline sets it; restore whatever it was for other test files
        mp.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
        yield path


@pytest.fixture(scope="session")
def tokenizer_dir(swallow_cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    start = time.perf_counter()
    vocab.write_tokenizer_files(path)
    print(f"\nbuilding tokenizer.json took {time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture(scope="session")
def demo_dir(tokenizer_dir):
    from models.demo import demo_model_dir

    start = time.perf_counter()
    path = demo_model_dir()
    print(f"\nbuilding the demo model (tokenizer cached) took {time.perf_counter() - start:.1f} s")
    return path


def test_cache_dir_follows_env(swallow_cache):
    assert cache_dir() == swallow_cache


def test_tokenizer_json_rebuilds_o200k_base_tiktoken(tokenizer_dir):
    data = vocab.tiktoken_from_tokenizer_json(tokenizer_dir)
    assert hashlib.sha256(data).hexdigest() == vocab.O200K_BASE_SHA256
    assert data.count(b"\n") == vocab.N_RANKS


def test_tokenizer_files_second_call_copies_from_cache(tokenizer_dir, tmp_path):
    start = time.perf_counter()
    vocab.write_tokenizer_files(tmp_path)
    assert time.perf_counter() - start < 3
    assert (tmp_path / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()


def test_encodings_agree_between_tokenizers_harmony_and_toktok(tokenizer_dir):
    import toktok
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    harmony = vocab.load_harmony_encoding_offline(tokenizer_dir)
    ref = toktok._encoding("o200k_harmony")
    for name, text in TEXTS.items():
        ids = ref.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, name
        assert harmony.encode(text) == ids, name
        assert hf.decode(ids) == text, name
    markup = "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>yo<|return|>"
    assert hf.encode(markup, add_special_tokens=False).ids == harmony.encode(markup, allowed_special="all")


def test_special_tokens_at_their_ids(tokenizer_dir):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    expected = {
        "<|startoftext|>": 199998,
        "<|endoftext|>": 199999,
        "<|return|>": 200002,
        "<|constrain|>": 200003,
        "<|channel|>": 200005,
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|call|>": 200012,
        "<|endofprompt|>": 200018,
        "<|reserved_200019|>": 200019,
        "<|reserved_201087|>": 201087,
    }
    for name, token_id in expected.items():
        assert hf.token_to_id(name) == token_id, name
    assert hf.get_vocab_size(with_added_tokens=True) == 201088
    specials = vocab.harmony_special_tokens()
    assert len(specials) == 1090 and all(hf.token_to_id(n) == i for i, n in specials.items())


def test_tokenizer_config_loads_in_transformers(tokenizer_dir):
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (200002, 199999, 199998)
    assert bytes_to_unicode() == vocab.byte_to_unicode()


def test_harmony_encoding_needs_tokenizer_json(tmp_path):
    with pytest.raises(ModelError, match="tokenizer.json"):
        vocab.load_harmony_encoding_offline(tmp_path)


def test_harmony_encoding_rejects_other_vocabularies(tmp_path):
    other = {"added_tokens": [], "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(other))
    with pytest.raises(ModelError, match="GPT-OSS"):
        vocab.load_harmony_encoding_offline(tmp_path)


def test_resolve_missing_paths(tmp_path):
    for spec in [str(tmp_path / "nope"), "./no-such-model-dir", "~/no/such/model", "a/b/c"]:
        with pytest.raises(ModelError, match="No such directory"):
            resolve_model_path(spec)
    with pytest.raises(ModelError, match="config.json"):
        resolve_model_path(str(tmp_path))


def test_resolve_unknown_hub_repo_fails_fast():
    repo = "swallow-server-tests/this-repo-does-not-exist"
    start = time.perf_counter()
    with pytest.raises(ModelError) as info:
        resolve_model_path(repo)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert repo in message and "--model PATH" in message and "--model demo" in message


def test_demo_model_builds_once(demo_dir):
    from models.demo import demo_model_dir

    stamp = (demo_dir / "model.safetensors").stat().st_mtime_ns
    assert demo_model_dir() == demo_dir == resolve_model_path("demo")
    assert (demo_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert "random noise" in (demo_dir / "README.md").read_text()
    cfg = json.loads((demo_dir / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss" and cfg["vocab_size"] == 201088
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"]
    assert cfg["eos_token_id"] == [200002, 199999, 200012]
    assert not list(demo_dir.parent.glob(".*building*"))


def test_demo_model_loads_and_runs(demo_dir):
    loaded = load_model("demo")
    assert loaded.model_id == "demo" and loaded.path == demo_dir
    assert loaded.context_length == 131072
    ids = loaded.encoding.encode("こんにちは, world 🎉")
    logits = loaded.model(mx.array([ids]))
    assert logits.shape == (1, len(ids), 201088)
    assert mx.all(mx.isfinite(logits)).item()
    assert logits[0, -1].std().item() > 1.0  # not flat: sampling is not uniform over 201088 ids
    if not (mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())):
        assert loaded.dtype == "float32"
        assert {str(a.dtype) for _, a in tree_flatten(loaded.model.parameters())} == {"mlx.core.float32"}


def test_quantized_model_keeps_packed_weights_and_casts_scales(demo_dir, tmp_path):
    from mlx_lm.utils import load_model as mlx_load_model
    from mlx_lm.utils import quantize_model, save_config, save_model

    model, config = mlx_load_model(demo_dir)
    model, config = quantize_model(model, config, group_size=32, bits=6)
    dst = tmp_path / "demo-6bit"
    save_model(dst, model)
    save_config(config, dst / "config.json")
    vocab.write_tokenizer_files(dst)

    loaded = load_model(str(dst))
    proj = loaded.model.layers[0].mlp.experts.gate_proj
    assert proj.weight.dtype == mx.uint32
    if not (mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())):
        assert proj.scales.dtype == mx.float32 and proj.biases.dtype == mx.float32
    logits = loaded.model(mx.array([[200006, 1428, 200008]]))
    assert logits.shape == (1, 3, 201088) and mx.all(mx.isfinite(logits)).item()


def test_model_file_needs_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "custom", "model_file": "arch.py"}))
    with pytest.raises(ModelError, match="--trust-remote-code"):
        load_model(str(tmp_path))


def test_check_memory(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "model.safetensors").write_bytes(b"\0" * 1024)
    check_memory(small)

    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "model-00001-of-00002.safetensors", "wb") as f:
        os.truncate(f.fileno(), memory_limit_bytes() + 2 * 10**9)  # sparse: takes no disk
    with pytest.raises(ModelError) as info:
        check_memory(huge)
    assert str(info.value).count(" GB") >= 2 and "--model demo" in str(info.value)


def test_check_memory_counts_the_least_kv_cache_and_says_the_numbers(tmp_path):
    from models.download import format_size as _size
    from models.loading import has_gpu, kv_cache_cost

    # gpt-oss-20b's attention: 12 full-attention layers and 12 with a 128-token window, 8 KV heads of 64
    config = {"model_type": "gpt_oss", "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8,
              "head_dim": 64, "sliding_window": 128, "max_position_embeddings": 131072, "quantization": {"bits": 6},
              "layer_types": ["sliding_attention", "full_attention"] * 12}
    element = 2 if has_gpu() else 4
    assert kv_cache_cost(config) == (12 * 2 * 8 * 64 * element, 12 * 2 * 8 * 64 * element * 128)
    per_token, fixed = kv_cache_cost(config)
    kv = 4096 * per_token + fixed

    tight = tmp_path / "tight"
    tight.mkdir()
    (tight / "config.json").write_text(json.dumps(config))
    weights = memory_limit_bytes() - kv // 2  # the weights fit alone, not with one request's cache
    with open(tight / "model.safetensors", "wb") as f:
        os.truncate(f.fileno(), weights)  # sparse: takes no disk
    with pytest.raises(ModelError) as info:
        check_memory(tight)
    assert (f"needs ~{_size(weights)} of memory for its weights + ~{_size(kv)} for its KV cache (one 4,096-token "
            f"request, the least it can serve) = ~{_size(weights + kv)}, but this machine can give a model only "
            f"~{_size(memory_limit_bytes())} (") in str(info.value)
    check_memory(tight, shards=2)  # half of it on each of two processes fits

    (tight / "model.safetensors").unlink()
    budget_mb = memory_limit_bytes() // 2**20 + 1
    with pytest.raises(ModelError, match=rf"\(kv_memory_mb = {budget_mb}\) = .* lower kv_memory_mb"):
        check_memory(tight, kv_memory_mb=budget_mb)  # a KV budget larger than the machine
