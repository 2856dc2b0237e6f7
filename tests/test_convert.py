"""GPT-OSS bf16 (transformers layout) loading and conversion, checked against
transformers' own GptOssForCausalLM on tiny random checkpoints.

Logit error is measured as max|mlx - torch| / max|torch| over every position
and vocabulary entry: per-element relative error is meaningless for logits
near zero, so the error is taken relative to the logit scale.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mx = pytest.importorskip("mlx.core")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mlx.utils import tree_flatten, tree_map  # noqa: E402
from mlx_lm.models.switch_layers import QuantizedSwitchLinear  # noqa: E402
from mlx_lm.utils import compute_bits_per_weight, load_model  # noqa: E402

from models import catalog, convert, hf_layout  # noqa: E402

VOCAB = 1000
SEQ = 40  # > sliding_window, so the sliding-window mask is exercised
EXACT_TOL = 1e-3


def _tokenizer(path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB - 2)}
    vocab["<unk>"], vocab["<eos>"] = VOCAB - 2, VOCAB - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   eos_token="<eos>")
    fast.save_pretrained(path)


def _make_checkpoint(path: Path, hidden: int, intermediate: int, seed: int):
    """Save a random GptOssForCausalLM in bf16; return (path, float32 reference)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
        eos_token_id=VOCAB - 1, attn_implementation="eager")
    torch.manual_seed(seed)
    model = GptOssForCausalLM(cfg)
    # The default init (std 0.02, zero biases) gives near-constant logits and
    # never reaches the SwiGLU clamps (+-7); these scales make routing, the
    # clamps (expert biases of std 3 push ~1-2% of gate/up values past 7) and
    # the gate/up interleaving all visible in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            elif "experts" in name:
                p.normal_(0.0, 3.0 if name.endswith("bias") else 0.1)
            elif "router" in name:
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.05)
    model.to(torch.bfloat16).save_pretrained(path)
    _tokenizer(path)
    # The reference reads the saved checkpoint back in float32 (a model cast
    # to bf16 and back would also carry bf16-rounded RoPE frequencies).
    ref = GptOssForCausalLM.from_pretrained(path, dtype=torch.float32,
                                            attn_implementation="eager")
    return path, ref.eval()


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(0, VOCAB - 2, size=(1, SEQ))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, token_ids):
    """hidden != intermediate: any wrong transpose fails loudly."""
    path, ref = _make_checkpoint(tmp_path_factory.mktemp("bf16") / "ckpt", 64, 128, 0)
    with torch.no_grad():
        logits = ref(torch.tensor(token_ids)).logits[0].numpy()
    return path, logits, ref


@pytest.fixture(scope="module")
def square_ckpt(tmp_path_factory, token_ids):
    """hidden == intermediate, as in gpt-oss-20b: a missing transpose is silent."""
    path, ref = _make_checkpoint(tmp_path_factory.mktemp("sq") / "ckpt", 64, 64, 1)
    with torch.no_grad():
        logits = ref(torch.tensor(token_ids)).logits[0].numpy()
    return path, logits, ref


def _mlx_logits(model, token_ids):
    # MLX's CPU gather_mm is float32-only: run everything in float32.
    model.update(tree_map(
        lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v,
        model.parameters()))
    return np.array(model(mx.array(token_ids))[0])


def _rel_err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _rms_rel_err(got, ref):
    return float(np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2)))


def _load(path):
    hf_layout.install()
    model, config = load_model(Path(path))
    return model, config


def _convert(capsys, *argv):
    rc = convert.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_transformers_saves_the_bf16_layout(ckpt):
    from safetensors import safe_open

    path = ckpt[0]
    with safe_open(path / "model.safetensors", "pt") as f:
        shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                  for k in f.keys()}
    e = "model.layers.0.mlp.experts."
    assert shapes[e + "gate_up_proj"] == ((4, 64, 256), "BF16")
    assert shapes[e + "gate_up_proj_bias"] == ((4, 256), "BF16")
    assert shapes[e + "down_proj"] == ((4, 128, 64), "BF16")
    assert shapes[e + "down_proj_bias"] == ((4, 64), "BF16")
    assert not any("_blocks" in k for k in shapes)
    assert hf_layout.checkpoint_layout(path) == hf_layout.LAYOUT_HF_BF16


def test_layout_is_decided_from_names():
    p = "model.layers.3.mlp.experts."
    mxfp4 = [p + "gate_up_proj_blocks", p + "gate_up_proj_scales",
             p + "gate_up_proj_bias", p + "down_proj_blocks",
             p + "down_proj_scales", p + "down_proj_bias"]
    bf16 = [p + "gate_up_proj", p + "gate_up_proj_bias", p + "down_proj",
            p + "down_proj_bias"]
    mlx = [p + f"{n}_proj.{w}" for n in ("gate", "up", "down")
           for w in ("weight", "bias")]
    other = ["model.embed_tokens.weight", "model.layers.3.mlp.router.weight"]
    assert hf_layout.detect_layout(mxfp4 + other) == hf_layout.LAYOUT_MXFP4
    assert hf_layout.detect_layout(bf16 + other) == hf_layout.LAYOUT_HF_BF16
    assert hf_layout.detect_layout(mlx + other) == hf_layout.LAYOUT_MLX
    assert hf_layout.detect_layout(mlx + [p + "gate_proj.scales"]) == hf_layout.LAYOUT_MLX
    assert hf_layout.detect_layout(other) is None
    with pytest.raises(ValueError, match="mixes"):
        hf_layout.detect_layout(bf16 + [p.replace("3", "4") + "down_proj_blocks"])


def test_install_is_idempotent():
    from mlx_lm.models import gpt_oss

    hf_layout.install()
    hooks = (gpt_oss.Model.sanitize, gpt_oss.ModelArgs.from_dict, gpt_oss.initialize_rope)
    hf_layout.install()
    assert (gpt_oss.Model.sanitize, gpt_oss.ModelArgs.from_dict,
            gpt_oss.initialize_rope) == hooks


@pytest.mark.parametrize("which", ["ckpt", "square_ckpt"])
def test_direct_load_matches_transformers(which, request, token_ids):
    path, ref = request.getfixturevalue(which)[:2]
    model, _ = _load(path)
    got = _mlx_logits(model, token_ids)
    assert _rel_err(got, ref) <= EXACT_TOL
    assert (got.argmax(-1) == ref.argmax(-1)).all()

    if which == "square_ckpt":
        # Teeth: what a shape-based loader does when hidden == intermediate
        # (no transpose, no error) must be caught by this comparison.
        for layer in model.layers:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                lin = getattr(layer.mlp.experts, proj)
                lin.weight = lin.weight.swapaxes(-1, -2)
        assert _rel_err(_mlx_logits(model, token_ids), ref) > 0.05


def test_direct_load_generates(ckpt):
    from mlx_lm import load, stream_generate

    path = ckpt[0]
    hf_layout.install()
    model, tokenizer = load(str(path))
    _mlx_logits(model, np.zeros((1, 1), dtype=np.int64))  # cast to float32
    out = list(stream_generate(model, tokenizer, "t1 t2 t3", max_tokens=5))
    assert 1 <= len(out) <= 5 and out[-1].generation_tokens == len(out)


def test_convert_unquantized_matches_transformers(ckpt, token_ids, tmp_path, capsys):
    path, ref = ckpt[:2]
    dst = tmp_path / "fp32"
    rc, out, err = _convert(capsys, "--hf-path", path, "--mlx-path", dst,
                            "--dtype", "float32")
    assert rc == 0, err
    assert "expert layout: transformers-bf16" in out
    # float32 everywhere (mlx-lm also counts the RoPE frequency table: 32.00x).
    assert float(re.search(r"Bits per weight: ([\d.]+)", out).group(1)) == pytest.approx(32, abs=0.01)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (dst / name).is_file()
    config = json.loads((dst / "config.json").read_text())
    assert "quantization" not in config
    # transformers 5 writes rope_parameters; the output must carry YaRN in the
    # names stock mlx-lm reads.
    assert config["rope_scaling"]["rope_type"] == "yarn"
    assert config["rope_scaling"]["truncate"] is False
    assert config["rope_theta"] == 150000
    assert hf_layout.checkpoint_layout(dst) == hf_layout.LAYOUT_MLX

    model, _ = _load(dst)
    got = _mlx_logits(model, token_ids)
    assert _rel_err(got, ref) <= EXACT_TOL
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def _to_transformers(model, ref):
    """A copy of the transformers reference holding `model`'s (dequantized)
    weights: the inverse of models.hf_layout's re-layout."""
    import copy

    from mlx_lm.utils import dequantize_model

    weights = dict(tree_flatten(dequantize_model(model).parameters()))
    state = {}
    for k, v in weights.items():
        v = torch.from_numpy(np.array(v.astype(mx.float32)))
        prefix, sep, name = k.rpartition(".experts.")
        if not sep:
            state[k] = v
        elif name == "down_proj.weight":
            state[prefix + sep + "down_proj"] = v.transpose(-1, -2)
        elif name == "down_proj.bias":
            state[prefix + sep + "down_proj_bias"] = v
        elif name.startswith("gate_proj."):
            up = torch.from_numpy(np.array(
                weights[k.replace("gate_proj", "up_proj")].astype(mx.float32)))
            if name.endswith("weight"):
                v, up = v.transpose(-1, -2), up.transpose(-1, -2)
            both = torch.stack([v, up], dim=-1).flatten(-2)  # gate, up interleaved
            state[prefix + sep + ("gate_up_proj" if name.endswith("weight")
                                  else "gate_up_proj_bias")] = both
    twin = copy.deepcopy(ref)
    twin.load_state_dict(state, strict=True)
    return twin.eval()


def _convert_quantized(capsys, path, dst, bits):
    rc, out, err = _convert(capsys, "--hf-path", path, "--mlx-path", dst, "-q",
                            *(["--q-bits", bits] if bits != 6 else []))
    assert rc == 0, err
    model, _ = _load(dst)
    return model, out


def test_stale_mxfp4_config_on_bf16_weights(ckpt, token_ids, tmp_path, capsys):
    """A fine-tune may keep gpt-oss's MXFP4 quantization_config with bf16
    weights: the names decide, the config's claim is ignored."""
    import shutil

    path, ref = ckpt[:2]
    src = tmp_path / "stale"
    shutil.copytree(path, src)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (src / "config.json").write_text(json.dumps(config))
    model, _ = _load(src)
    assert _rel_err(_mlx_logits(model, token_ids), ref) <= EXACT_TOL
    rc, out, err = _convert(capsys, "--hf-path", src, "--mlx-path", tmp_path / "out")
    assert rc == 0, err
    assert "Ignoring the config's quantization_config" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    model, _ = _load(tmp_path / "out")
    assert _rel_err(_mlx_logits(model, token_ids), ref) <= EXACT_TOL


def test_convert_6bit(ckpt, token_ids, tmp_path, capsys):
    path, ref_logits, ref = ckpt
    dst = tmp_path / "q6"
    model, out = _convert_quantized(capsys, path, dst, 6)
    assert "WARNING" not in out

    config = json.loads((dst / "config.json").read_text())
    q = config["quantization"]
    assert (q["group_size"], q["bits"], q.get("mode", "affine")) == (64, 6, "affine")
    assert config["quantization_config"] == q
    for i in range(2):
        assert q[f"model.layers.{i}.mlp.router"] == {"group_size": 64, "bits": 8}

    for layer in model.layers:
        assert layer.mlp.router.bits == 8
        for proj in ("gate_proj", "up_proj", "down_proj"):
            lin = getattr(layer.mlp.experts, proj)
            assert isinstance(lin, QuantizedSwitchLinear) and lin.bits == 6
        assert layer.self_attn.q_proj.bits == 6
    # Scales/biases stay in the checkpoint's bf16, as in the published 6.503.
    assert model.layers[0].mlp.experts.gate_proj.scales.dtype == mx.bfloat16
    bpw = compute_bits_per_weight(model)
    printed = float(re.search(r"Bits per weight: ([\d.]+)", out).group(1))
    assert printed == pytest.approx(bpw, abs=1e-3)
    # 6.5 for the 6-bit weights, more for the 8.5-bit router and the bf16
    # norms/sinks/biases, which weigh far more in a tiny model than in the 20B.
    assert 6.5 < bpw < 8.0

    got = _mlx_logits(model, token_ids)
    # 1. Exact: transformers running the same 6-bit-rounded weights must agree
    # to float32 precision. Any layout, axis, grouping or naming mistake in
    # the conversion shows up here at >> 1e-3; only rounding noise is left out.
    with torch.no_grad():
        twin = _to_transformers(model, ref)(torch.tensor(token_ids)).logits[0].numpy()
    assert _rel_err(got, twin) <= EXACT_TOL
    assert (got.argmax(-1) == twin.argmax(-1)).all()

    # 2. Close to the bf16 original. Affine 6-bit rounds each weight to 1/63
    # of its 64-weight group's range (~4.8 sigma for Gaussian weights): RMS
    # error range/63/sqrt(12) ~ 2.2% of sigma, so each quantized matmul adds
    # ~2.2% relative noise. This model has ~18 of them between a token and its
    # logits (embedding, q/k/v/o, router, gate/up/down per layer, lm_head);
    # independent noise adds in quadrature: sqrt(18) * 2.2% ~ 9% RMS of the
    # logit scale (measured: 10%). Bound: 2x the prediction, and >= 75% same
    # argmax (measured 85%; a flip needs a top-2 gap below the noise). A tiny random model
    # is much more sensitive than the trained 20B, where each layer adds a
    # small update to the residual stream.
    rms6 = _rms_rel_err(got, ref_logits)
    assert rms6 <= 0.18
    assert (got.argmax(-1) == ref_logits.argmax(-1)).mean() >= 0.75
    # ...and it is rounding noise: 8 bits (4x finer steps) shrink it ~4x
    # (measured 6x here: a few routing flips at 6 bits, none at 8).
    model8, _ = _convert_quantized(capsys, path, tmp_path / "q8", 8)
    rms8 = _rms_rel_err(_mlx_logits(model8, token_ids), ref_logits)
    assert rms8 <= rms6 / 2


@pytest.fixture(scope="module")
def mxfp4_ckpt(ckpt, token_ids):
    """The original gpt-oss layout: random MXFP4 experts (the other tensors
    from the bf16 checkpoint); the reference gets transformers' own
    dequantization of the same blocks."""
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    path, _, ref = ckpt
    dst = path.parent / "mxfp4"
    dst.mkdir()
    gen = torch.Generator().manual_seed(0)
    tensors, state = {}, {}
    for k, v in load_file(path / "model.safetensors").items():
        if k.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            E, n_in, n_out = v.shape  # transformers' (in, out); MXFP4 is (out, in)
            blocks = torch.randint(0, 256, (E, n_out, n_in // 32, 16),
                                   generator=gen, dtype=torch.uint8)
            scales = torch.randint(122, 126, (E, n_out, n_in // 32),
                                   generator=gen, dtype=torch.uint8)
            tensors[k + "_blocks"], tensors[k + "_scales"] = blocks, scales
            state[k] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
        else:
            tensors[k], state[k] = v, v.float()
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(config))
    import copy

    ref = copy.deepcopy(ref)
    ref.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = ref.eval()(torch.tensor(token_ids)).logits[0].numpy()
    return dst, logits, ref


def test_mxfp4_still_loads_and_converts(mxfp4_ckpt, token_ids, tmp_path, capsys):
    path, ref_logits, ref = mxfp4_ckpt
    assert hf_layout.checkpoint_layout(path) == hf_layout.LAYOUT_MXFP4
    model, _ = _load(path)  # stock sanitize, via the hook
    assert model.layers[0].mlp.experts.gate_proj.mode == "mxfp4"
    got = _mlx_logits(model, token_ids)
    assert _rel_err(got, ref_logits) <= EXACT_TOL
    assert (got.argmax(-1) == ref_logits.argmax(-1)).all()

    # -q from MXFP4: dequantize, then 6-bit affine (same exact twin check).
    model, out = _convert_quantized(capsys, path, tmp_path / "q6", 6)
    assert "expert layout: mxfp4" in out and "Dequantizing" in out
    lin = model.layers[0].mlp.experts.down_proj
    assert (lin.mode, lin.bits, lin.group_size) == ("affine", 6, 64)
    got = _mlx_logits(model, token_ids)
    with torch.no_grad():
        twin = _to_transformers(model, ref)(torch.tensor(token_ids)).logits[0].numpy()
    assert _rel_err(got, twin) <= EXACT_TOL


def test_stock_mlx_lm(ckpt, tmp_path, capsys):
    """Without the hook, mlx-lm 0.32 cannot load the bf16 layout (the bug
    this module works around); the converted output needs no hook."""
    path = ckpt[0]
    dst = tmp_path / "q8"
    assert _convert(capsys, "--hf-path", path, "--mlx-path", dst, "-q", "--q-bits", 8)[0] == 0
    script = (
        "import sys; from pathlib import Path; from mlx_lm.utils import load_model\n"
        "try:\n"
        "    load_model(Path(sys.argv[1]))\n"
        "except ValueError as e:\n"
        "    print('bf16:', e)\n"
        "m, c = load_model(Path(sys.argv[2]))\n"
        "print('converted:', m.layers[0].mlp.experts.gate_proj.bits)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"bf16: .*parameters not in model", proc.stdout)
    assert "converted: 8" in proc.stdout


def test_low_bits_warn(ckpt, tmp_path, capsys):
    path = ckpt[0]
    rc, out, err = _convert(capsys, "--hf-path", path, "--mlx-path", tmp_path / "q4",
                            "-q", "--q-bits", "4", "--q-group-size", "32")
    assert rc == 0, err
    assert "WARNING" in out and "loop" in out
    q = json.loads((tmp_path / "q4" / "config.json").read_text())["quantization"]
    assert (q["bits"], q["group_size"]) == (4, 32)


def test_refusals(ckpt, tmp_path, capsys):
    path = ckpt[0]
    # 128 doesn't divide hidden 64: mlx-lm would silently skip those layers.
    rc, out, err = _convert(capsys, "--hf-path", path, "--mlx-path", tmp_path / "x",
                            "-q", "--q-group-size", "128")
    assert rc == 2 and "group size 128 does not divide" in err
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    rc, out, err = _convert(capsys, "--hf-path", path, "--mlx-path", tmp_path / "full")
    assert rc == 2 and "not empty" in err
    rc, out, err = _convert(capsys, "--hf-path", tmp_path / "nowhere" / "x",
                            "--mlx-path", tmp_path / "y")
    assert rc == 2 and "neither an existing directory nor a hub id" in err


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "models.convert", "--hf-path",
         "swallow-test/does-not-exist", "--mlx-path", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "could not get swallow-test/does-not-exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_models_lists_variants_and_cache(tmp_path, capsys):
    cache = tmp_path / "hub"
    snap = cache / "models--tocchitocchi--GPT-OSS-Swallow-20B-RL-v0.1-8bit-mlx"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    (snap / "blobs").mkdir()
    (snap / "blobs" / "abc").write_text("{}")
    (snap / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (snap / "snapshots" / ("0" * 40) / "config.json").symlink_to(snap / "blobs" / "abc")

    assert catalog.main(["--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0] if not line.startswith("*") else line.split()[1]: line
             for line in out.splitlines() if "/" in line and "GPT-OSS" in line}
    six = "tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-6bit-mlx"
    eight = "tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-8bit-mlx"
    fp16 = "tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-fp16-mlx"
    orig = "tokyotech-llm/GPT-OSS-Swallow-20B-RL-v0.1"
    assert set(lines) >= {six, eight, fp16, orig}
    assert lines[six].startswith("*") and "6.503" in lines[six] and "17 GB" in lines[six]
    assert "8.5" in lines[eight] and "22 GB" in lines[eight]
    assert "40 GB" in lines[fp16] and "bf16" in lines[orig]
    assert "yes" in lines[eight]
    assert all(lines[r].rstrip().endswith("no") for r in (six, fp16, orig))

    assert catalog.main(["--cache-dir", str(tmp_path / "none"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["cached"] for r in rows] == [False] * 4
