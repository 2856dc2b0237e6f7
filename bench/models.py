"""The models a benchmark runs on: a --model spec, or the built-in ones.

- `bench-small` (below): the default of `python -m bench`;
- the near-free model (`near_free_model`, bench/nearfree_arch.py): a model that costs almost
  nothing, so the server's own work shows (bench/overhead.py);
- `random_gpt_oss`: gpt-oss-20b's architecture and sizes with random weights, 6-bit (bench/gpu.sh).

`bench-small` is a random-weight gpt_oss big enough that compute, not Python overhead,
dominates a decode step on CPU (the 201088-row lm_head alone is ~200 MB in float32), small
enough that a full run takes minutes on 2 cores. It is built once under the cache directory
in two forms:

- float32 on disk: on CPU, MLX's gather_mm (the MoE expert matmul) runs only in float32, so a
  bf16 unquantized MoE cannot run in stock mlx-lm at all. Stored as float32, raw mlx-lm,
  mlx_lm.server and swallow-server all compute in float32: the same work on all three.
- 6-bit (affine, group 64, router at 8 bits, bf16 scales: what real conversions are), quantized
  from a bf16 copy of the same weights. mlx-lm runs it as loaded (bf16 activations);
  swallow-server casts the floats to float32 on CPU.

Random weights produce random text, which breaks harmony's format (swallow-server's parser
would hold the first tokens back as a possible header) and does not survive a round trip
through the tokenizer (so no server could match a verbatim history against its cache). So the
weights are edited to make greedy decoding follow a fixed chain, like a real GPT-OSS reply:
`<|start|>assistant` → `<|channel|>analysis<|message|>` → ` river garden engine … diamond` (64
words), repeating: each chain token's embedding gets a large direction of its own, and the lm_head row
of the token that must follow points along it. Every other special token's lm_head row is zero
(a logit of 0 never wins against random logits of std 3), so no reply ever stops early. The
layers still do all their work on every token: only the argmax is arranged.
"""

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from models.paths import cache_dir

log = logging.getLogger("bench")

BENCH_NAME = "bench-small-v3"  # bump when the config or the weight edits change
BENCH_SIZES = dict(
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=6,
    num_local_experts=16,
    num_experts_per_tok=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    sliding_window=128,
)
# The chain greedy decoding follows (o200k_harmony ids): "assistant", then the analysis header,
# then 64 distinct words, each one token as the tokenizer splits " word", over and over. The
# period (64) is long enough that swallow-server's loop guard (4 back-to-back copies) only fires
# after 256 tokens of analysis: beyond every default length of the bench.
ASSISTANT, CHANNEL, ANALYSIS, MESSAGE = 173781, 200005, 35644, 200008
CYCLE_WORDS = (
    "river garden engine market signal harbor lantern winter copper meadow ledger orbit canyon violin timber "
    "beacon forest island castle bridge tower valley desert ocean mountain village station factory museum "
    "library theater kitchen window mirror candle pillow blanket basket bottle button carpet ladder hammer "
    "needle pencil rocket silver golden purple orange yellow marble crystal shadow sunset morning evening "
    "journey festival harvest anchor compass feather diamond").split()
WORDS = [20608, 13727, 6018, 2910, 12884, 88835, 111163, 13655, 34855, 194758, 92201, 61353, 128475, 88326,
         63108, 103445, 19458, 18149, 54483, 23273, 35225, 48724, 37603, 25472, 21689, 17769, 11538, 14560,
         29055, 11282, 35297, 10084, 5734, 28026, 54689, 54425, 57041, 17614, 21975, 5057, 32787, 63451, 40905,
         51196, 65895, 58605, 20223, 29000, 37896, 26205, 19691, 60584, 36111, 21884, 57965, 8709, 14456, 12647,
         20057, 34061, 31067, 100618, 87182, 36181]
_CHAIN = [ASSISTANT, CHANNEL, ANALYSIS, MESSAGE, *WORDS]
NEXT = {**dict(zip(_CHAIN, _CHAIN[1:])), WORDS[-1]: WORDS[0]}  # token -> the token that must follow
FIRST_SPECIAL = 199998
EMBED_NORM = 40.0  # far above what 6 random layers add to the residual stream
HEAD_SCALE = 3.0  # logit of the chained token: ~HEAD_SCALE * sqrt(hidden) (48), others ~N(0, 3)


@dataclass
class BenchModel:
    path: Path
    label: str  # what the table calls it
    quantized: bool
    bits: int | None
    dtype: str  # the float dtype mlx-lm keeps it in when loading it as it is


def describe(path: Path, label: str | None = None) -> BenchModel:
    config = json.loads((Path(path) / "config.json").read_text())
    quant = config.get("quantization") or {}
    dtype = config.get("torch_dtype") or config.get("dtype") or "unknown"
    if dtype == "unknown":
        dtype = _stored_float_dtype(Path(path))
    return BenchModel(Path(path), label or Path(path).name, bool(quant), quant.get("bits"), dtype)


def _stored_float_dtype(path: Path) -> str:
    import mlx.core as mx

    for f in sorted(path.glob("*.safetensors")):
        for a in mx.load(str(f)).values():
            if mx.issubdtype(a.dtype, mx.floating):
                return str(a.dtype).removeprefix("mlx.core.")
    return "unknown"


def _chained(embed, head, hidden: int, seed: int):
    """(embed, head) with the chain and the silenced specials (see the module docstring)."""
    import mlx.core as mx

    key = mx.random.key(seed + 1)
    # One direction per token to predict: tokens that lead to the same one share it.
    targets = sorted(set(NEXT.values()))
    directions = mx.random.normal((len(targets), hidden), key=key)
    directions = directions / mx.linalg.norm(directions, axis=-1, keepdims=True)
    head[FIRST_SPECIAL:] = 0
    for i, following in enumerate(targets):
        head[following] = (HEAD_SCALE * directions[i]).astype(head.dtype)
    for token, following in NEXT.items():
        embed[token] = (EMBED_NORM * directions[targets.index(following)]).astype(embed.dtype)
    return embed, head


def _edit_weights(path: Path, sizes: dict, seed: int) -> None:
    """The chain and the silenced specials, in a built model's weights file."""
    import mlx.core as mx

    files = sorted(path.glob("model*.safetensors"))
    weights = {}
    for f in files:
        weights.update(mx.load(str(f)))
    weights["model.embed_tokens.weight"], weights["lm_head.weight"] = _chained(
        weights["model.embed_tokens.weight"], weights["lm_head.weight"], sizes["hidden_size"], seed)
    mx.eval(weights)
    if len(files) != 1:
        raise RuntimeError(f"expected one weights file in {path}, found {len(files)}")
    mx.save_safetensors(str(files[0]), weights, metadata={"format": "mlx"})


def _build_float(dst: Path, sizes: dict) -> None:
    from models.demo import build_gpt_oss

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_gpt_oss(tmp, **sizes, dtype="float32", seed=0)
    _edit_weights(tmp, sizes, seed=0)
    (tmp / "README.md").write_text(
        "# swallow-server bench model (random weights, float32)\n\nBuilt by `python -m bench`; "
        "delete this directory to have it rebuilt.\n")
    tmp.rename(dst)


def _build_quantized(src: Path, dst: Path, bits: int) -> None:
    """bf16 copy of `src`, quantized with mlx-lm's quantize_model and gpt_oss's predicate."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model, config = load_model(src, lazy=True)
    model.update(tree_map(lambda a: a.astype(mx.bfloat16) if mx.issubdtype(a.dtype, mx.floating) else a,
                          model.parameters()))
    config["torch_dtype"] = "bfloat16"
    model, config = quantize_model(model, config, 64, bits)
    tmp.mkdir(parents=True)
    save_model(tmp, model)
    save_config(config, tmp / "config.json")
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".tiktoken") or f.name == "special_tokens_map.json":
            shutil.copy(f, tmp / f.name)
    tmp.rename(dst)


def bench_models(bits: int = 6) -> tuple[BenchModel, BenchModel]:
    """(float32 model, `bits`-bit copy), built on first use under the cache directory."""
    root = cache_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    float_dir = root / BENCH_NAME
    quant_dir = root / f"{BENCH_NAME}-{bits}bit"
    if not (float_dir / "config.json").is_file():
        print(f"Building the bench model in {float_dir} (one time)...", flush=True)
        shutil.rmtree(float_dir, ignore_errors=True)
        _build_float(float_dir, BENCH_SIZES)
    if not (quant_dir / "config.json").is_file():
        print(f"Quantizing it to {bits}-bit in {quant_dir} (one time)...", flush=True)
        shutil.rmtree(quant_dir, ignore_errors=True)
        _build_quantized(float_dir, quant_dir, bits)
    return (describe(float_dir, "bench-small (float32)"),
            describe(quant_dir, f"bench-small ({bits}-bit)"))


# ---- a gpt-oss-20b-shaped model with random weights, quantized (bench/gpu.sh) ----------------

GPT_OSS_20B = dict(  # openai/gpt-oss-20b's config.json
    hidden_size=2880,
    intermediate_size=2880,
    num_hidden_layers=24,
    num_local_experts=32,
    num_experts_per_tok=4,
    num_attention_heads=64,
    num_key_value_heads=8,
    head_dim=64,
    sliding_window=128,
)
RANDOM_SIZES = {"full": GPT_OSS_20B, "small": BENCH_SIZES}


def random_gpt_oss(size: str = "full", bits: int = 6) -> BenchModel:
    """gpt-oss-20b's architecture at `size` ("full": its real sizes, 21B parameters; "small":
    bench-small's) with random weights and bench-small's chain (so that greedy replies are
    harmony), quantized as real conversions are (affine, group 64, router at 8 bits, bf16
    scales). Built once under the cache directory, in memory: the float weights are never
    written (a full-size bf16 copy would be 42 GB), only the quantized model (~16 GB at 6 bits)."""
    root = cache_dir() / "bench"
    dst = root / f"gpt-oss-{size}-random-{bits}bit-v1"
    if not (dst / "config.json").is_file():
        print(f"Building a {size}-size gpt-oss with random weights, {bits}-bit, in {dst} (one time)...", flush=True)
        _build_random_quantized(dst, RANDOM_SIZES[size], bits)
    label = "gpt-oss-20b" if size == "full" else "gpt-oss, bench-small sizes"
    return describe(dst, f"{label}, random weights ({bits}-bit)")


def _build_random_quantized(dst: Path, sizes: dict, bits: int, seed: int = 0) -> None:
    import mlx.core as mx
    from mlx_lm.models.gpt_oss import Model, ModelArgs
    from mlx_lm.utils import quantize_model, save_config, save_model

    from models.demo import _LOGIT_STD, _config
    from models.vocab import write_tokenizer_files

    config = _config(**sizes, torch_dtype="bfloat16")
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))  # its initial weights stay lazy until quantized
    model.apply(lambda a: a.astype(mx.bfloat16) if mx.issubdtype(a.dtype, mx.floating) else a)
    hidden = sizes["hidden_size"]
    head = mx.random.normal(model.lm_head.weight.shape, scale=_LOGIT_STD / hidden**0.5).astype(mx.bfloat16)
    model.model.embed_tokens.weight, model.lm_head.weight = _chained(
        model.model.embed_tokens.weight, head, hidden, seed)
    for layer in model.layers:  # as models/demo.py: attention sinks with some spread
        layer.self_attn.sinks = mx.random.normal(layer.self_attn.sinks.shape).astype(mx.bfloat16)
    model, config = quantize_model(model, config, 64, bits)
    for layer in model.layers:  # one layer at a time: the float weights never all exist at once
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp, model)
    save_config(config, tmp / "config.json")
    write_tokenizer_files(tmp)
    (tmp / "README.md").write_text("# swallow-server bench model (gpt-oss architecture, random weights)\n\n"
                                   "Built by `bench/gpu.sh`; delete this directory to have it rebuilt.\n")
    tmp.rename(dst)


def follows_the_chain(model_dir: Path, n: int = 12) -> bool:
    """Whether greedy decoding of the model follows the chain (its replies are harmony)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_dir), lazy=True)
    prompt = [200006, 1428, 200008, 3686, 200007, 200006, ASSISTANT]  # a user's "hi", then <|start|>assistant
    tokens = [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]
    return tokens == _CHAIN[1:n + 1]


# ---- the near-free model (bench/nearfree_arch.py) -----------------------------------------

NEAR_FREE_NAME = "near-free-v1"  # bump when the replies or the architecture change
NEAR_FREE_ARCH = Path(__file__).with_name("nearfree_arch.py")
TOOL = "read_file"  # the tool an agent's reply calls (the bench declares it)
TOOL_ARGUMENTS = '{"path":"notes.txt"}'
TOOL_TRIGGER = "namespace"  # in a developer message that declares tools
ANALYSIS_WORDS = 12  # the analysis before the answer or the call


def near_free_replies(encoding) -> tuple[list, int]:
    """([chat reply, agent reply], the trigger token) as token ids, each reply a whole assistant
    turn after `<|start|>assistant`, exactly as harmony renders it when it comes back in a
    history (so that a continued conversation matches its cache token for token):

    - chat: a short analysis, then a final answer that goes round the 64 bench words for ever
      (a decode runs until its token limit);
    - agent (the request declares tools): a short analysis, then a call to read_file, ending in
      `<|call|>`."""
    from openai_harmony import Conversation

    from server.harmony import render as harmony

    def ids(text: str) -> list:
        return encoding.encode(text, allowed_special="all")

    words = [ids(" " + w) for w in CYCLE_WORDS]
    if any(len(w) != 1 for w in words):
        raise RuntimeError("the bench words must be one token each")
    analysis = "".join(" " + w for w in CYCLE_WORDS[:ANALYSIS_WORDS])
    chat_head = ids(f"<|channel|>analysis<|message|>{analysis}<|end|><|start|>assistant<|channel|>final<|message|>")
    chat = {"tokens": chat_head + [w[0] for w in words], "repeat_from": len(chat_head)}
    # The call as harmony renders an assistant's tool call (recipient before the channel).
    turn = [harmony.user("x"), harmony.assistant_reasoning(analysis), harmony.tool_call(TOOL, TOOL_ARGUMENTS)]
    rendered = encoding.render_conversation(Conversation.from_messages(turn))
    opening = ids("<|start|>user<|message|>x<|end|><|start|>assistant")
    if rendered[: len(opening)] != opening:
        raise RuntimeError("harmony renders a user message differently than expected")
    agent = {"tokens": rendered[len(opening):], "repeat_from": -1}
    if agent["tokens"][-1] != ids("<|call|>")[0]:
        raise RuntimeError("harmony's rendering of a tool call does not end in <|call|>")
    (trigger,) = ids(TOOL_TRIGGER)
    return [chat, agent], trigger


def near_free_model() -> BenchModel:
    """The near-free model's directory (built once under the cache directory): its architecture
    file, the o200k_harmony tokenizer files, the replies as token ids."""
    import mlx.core as mx

    from models import vocab

    root = cache_dir() / "bench"
    dst = root / NEAR_FREE_NAME
    if not (dst / "config.json").is_file():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        vocab.write_tokenizer_files(tmp)
        replies, trigger = near_free_replies(vocab.load_harmony_encoding_offline(tmp))
        config = {"model_type": "nearfree", "model_file": "nearfree_model.py", "vocab_size": 201088,
                  "max_position_embeddings": 131072, "eos_token_id": [200002, 200012],
                  "torch_dtype": "float32", "replies": replies, "trigger": trigger}
        (tmp / "config.json").write_text(json.dumps(config))
        shutil.copyfile(NEAR_FREE_ARCH, tmp / "nearfree_model.py")
        mx.save_safetensors(str(tmp / "model.safetensors"), {"anchor": mx.zeros((1,))})
        (tmp / "README.md").write_text("# swallow-server near-free bench model\n\nBuilt by `python -m bench`; "
                                       "delete this directory to have it rebuilt.\n")
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    return describe(dst, "near-free")


def resolve(spec: str) -> tuple[BenchModel, BenchModel | None]:
    """(the model for the main comparison, a quantized model for the 6-bit comparison or None)."""
    if spec == "bench-small":
        return bench_models()
    if spec == "near-free":
        return near_free_model(), None
    if spec == "demo":
        from models.demo import demo_model_dir

        return describe(demo_model_dir(), "demo (bf16)"), None
    from models.loading import resolve_model_path

    model = describe(resolve_model_path(spec), spec)
    return model, (model if model.quantized else None)
