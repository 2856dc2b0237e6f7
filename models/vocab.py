"""The o200k_harmony vocabulary (GPT-OSS's tokenizer), built and checked offline.

Two directions, both without network access:
- write_tokenizer_files: make the Hugging Face tokenizer files a GPT-OSS repo ships, from the
  vocabulary bundled in toktok (used for the demo model, which has no repo to download from);
- load_harmony_encoding_offline: openai-harmony wants o200k_base.tiktoken and downloads it on first
  use; rebuild that file from the model's own tokenizer.json instead and point harmony at it.
"""

import base64
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelError
from .paths import cache_dir

# The published SHA-256 of o200k_base.tiktoken (tiktoken and openai-harmony both check it).
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
N_RANKS = 199_998  # mergeable ranks 0..199997; the harmony specials follow at 199998..201087
VOCAB_SIZE = 201_088

# o200k_base's pre-tokenizer regex, copied from tiktoken's tiktoken_ext/openai_public.py
# (o200k_base(); o200k_harmony reuses it). That function would download the ranks, so the
# pattern is kept here rather than obtained by calling it.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Text the built tokenizer must split exactly as tiktoken does: English, Japanese, emoji
# (multi-codepoint ZWJ sequences too), whitespace runs, digits and harmony markup.
SELF_CHECK_TEXTS = [
    "Hello, world! It's 2024; we're testing 1234567 tokens.\n\n    indented\tcode()  ",
    "こんにちは、世界。東京科学大学のSwallowモデルで日本語を話します。",
    "emoji 🎉🦢 family 👩‍👩‍👧 flags 🇯🇵 ok",
    "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant",
]

# Bump when the produced tokenizer.json changes, so stale caches are not reused.
_TOKENIZER_CACHE_NAME = "o200k_harmony-tokenizer-v1.json"
BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"


def _tiktoken_dir() -> Path:
    return cache_dir() / "tiktoken"


def _atomic_write(path: Path, data: bytes) -> None:
    # Write next to the target then rename: a reader (or a second server starting at the same
    # time) never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: each byte as a printable character.

    The same table as transformers' bytes_to_unicode (the tests check it); kept here so reading
    a tokenizer.json at server start doesn't import transformers."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def harmony_special_tokens() -> dict[int, str]:
    """Id → name of every harmony special token (199998..201087), from toktok's o200k_harmony.

    toktok knows id 200018 under two names (o200k_base's <|endofprompt|> and
    <|reserved_200018|>); GPT-OSS's tokenizer_config.json calls it <|endofprompt|>."""
    import toktok

    enc = toktok._encoding("o200k_harmony")
    names: dict[int, str] = {}
    for name in sorted(enc.special_tokens_set):
        token_id = enc.encode_single_token(name)
        if token_id not in names or names[token_id].startswith("<|reserved_"):
            names[token_id] = name
    if sorted(names) != list(range(N_RANKS, VOCAB_SIZE)):
        raise RuntimeError("toktok's o200k_harmony specials do not cover ids 199998..201087")
    return dict(sorted(names.items()))


def o200k_base_tiktoken() -> bytes:
    """o200k_base.tiktoken (lines `base64(bytes) rank`), from the ranks bundled in toktok."""
    import toktok

    base = toktok._encoding("o200k_base")
    data = b"".join(
        base64.b64encode(base.decode_single_token_bytes(rank)) + b" %d\n" % rank for rank in range(N_RANKS)
    )
    if hashlib.sha256(data).hexdigest() != O200K_BASE_SHA256:
        raise RuntimeError("toktok's o200k_base ranks do not reproduce o200k_base.tiktoken")
    return data


def _cached_tiktoken_file(data: bytes | None = None) -> Path:
    """The checked o200k_base.tiktoken in the cache, written from `data` (or toktok) if needed."""
    path = _tiktoken_dir() / "o200k_base.tiktoken"
    if _sha256_file(path) != O200K_BASE_SHA256:
        _atomic_write(path, data if data is not None else o200k_base_tiktoken())
    return path


def _build_tokenizer_json(dst: Path) -> None:
    # The ecosystem's own tiktoken → tokenizers conversion (the one GPT-OSS's tokenizer.json came
    # from), then the harmony specials appended in id order so they get ids 199998.. in turn.
    from tokenizers import AddedToken, Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(_cached_tiktoken_file()), pattern=O200K_PATTERN)
    tok = converter.converted()
    specials = harmony_special_tokens()
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials.values()])

    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".json")
    os.close(fd)
    try:
        tok.save(tmp)
        check_tokenizer(Tokenizer.from_file(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_tokenizer(tok) -> None:
    """Raise RuntimeError unless `tok` (a tokenizers.Tokenizer) is o200k_harmony: same ids as
    toktok for SELF_CHECK_TEXTS, every special at its id, 201088 ids in all."""
    import toktok

    ref = toktok._encoding("o200k_harmony")
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids, want {VOCAB_SIZE}")
    for token_id, name in harmony_special_tokens().items():
        if tok.token_to_id(name) != token_id:
            raise RuntimeError(f"{name} has id {tok.token_to_id(name)}, want {token_id}")
    for text in SELF_CHECK_TEXTS:
        got = tok.encode(text, add_special_tokens=False).ids
        if got != ref.encode(text, allowed_special="all"):
            raise RuntimeError(f"tokenizer splits {text!r} differently from o200k_harmony")


def _tokenizer_config() -> dict:
    # What GPT-OSS repos ship, minus the chat template (swallow-server renders with harmony).
    added = {
        str(token_id): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token_id, name in harmony_special_tokens().items()
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_tokenizer_files(model_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for o200k_harmony.

    The first call converts the vocabulary (several seconds) and keeps the result in the cache
    directory; later calls copy it from there."""
    model_dir = Path(model_dir)
    cached = cache_dir() / "tokenizers" / _TOKENIZER_CACHE_NAME
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        _build_tokenizer_json(cached)
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, model_dir / "tokenizer.json")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n")
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (model_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def _not_o200k(model_dir: Path, reason: str) -> ModelError:
    return ModelError(
        f"The model in {model_dir} cannot be used: {reason}. swallow-server runs GPT-OSS models, "
        "whose prompts are written in the harmony format with the o200k_harmony vocabulary, and "
        "every GPT-OSS model ships that vocabulary as tokenizer.json next to config.json. Check "
        "that --model points at a complete GPT-OSS model directory (or use --model demo)."
    )


def tiktoken_from_tokenizer_json(model_dir: Path) -> bytes:
    """Rebuild o200k_base.tiktoken from model_dir/tokenizer.json; ModelError if it doesn't match.

    The ranks are the byte-level vocabulary entries below id 199998 that are not added tokens,
    their strings mapped back to bytes through the GPT-2 byte alphabet."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise _not_o200k(model_dir, "it has no tokenizer.json")
    try:
        data = json.loads(path.read_bytes())
        vocab = data["model"]["vocab"]
        added = {t["id"] for t in data.get("added_tokens", [])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _not_o200k(model_dir, f"its tokenizer.json could not be read ({e})") from e
    if data["model"].get("type") != "BPE" or not isinstance(vocab, dict):
        raise _not_o200k(model_dir, "its tokenizer.json is not a byte-level BPE vocabulary")

    to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    ranks: list[bytes | None] = [None] * N_RANKS
    for text, token_id in vocab.items():
        if not isinstance(token_id, int) or token_id >= N_RANKS or token_id in added:
            continue
        try:
            ranks[token_id] = bytes(to_byte[ch] for ch in text)
        except KeyError:
            raise _not_o200k(model_dir, f"its vocabulary has a non byte-level entry {text!r}") from None
    if any(r is None for r in ranks):
        raise _not_o200k(model_dir, "its vocabulary lacks some of the 199998 o200k_base ranks")
    out = b"".join(base64.b64encode(r) + b" %d\n" % i for i, r in enumerate(ranks))
    if hashlib.sha256(out).hexdigest() != O200K_BASE_SHA256:
        raise _not_o200k(model_dir, "its tokenizer.json holds a different vocabulary than o200k_harmony")
    return out


@functools.lru_cache(maxsize=4)
def _vocabulary_from(tiktoken_file: str):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(tiktoken_file, expected_hash=O200K_BASE_SHA256)
    return tiktoken.Encoding("o200k_harmony_bytes", pat_str=O200K_PATTERN, mergeable_ranks=ranks, special_tokens={})


def token_vocabulary():
    """A tiktoken Encoding over the o200k_base.tiktoken that openai-harmony loaded (the one
    rebuilt from the served model's tokenizer.json by load_harmony_encoding_offline): the exact
    bytes of each ordinary token, for decoding text that left the harmony format."""
    base = os.environ.get("TIKTOKEN_ENCODINGS_BASE") or str(_tiktoken_dir())
    return _vocabulary_from(str(Path(base) / "o200k_base.tiktoken"))


def load_harmony_encoding_offline(model_dir: Path):
    """openai-harmony's HARMONY_GPT_OSS encoding, with no download.

    harmony reads o200k_base.tiktoken from $TIKTOKEN_ENCODINGS_BASE when that is set, so rebuild the
    file from the model's tokenizer.json into the cache and point the variable there. Each
    tokenizer.json that checked out is remembered by its digest, so the rebuild runs once."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    model_dir = Path(model_dir)
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise _not_o200k(model_dir, "it has no tokenizer.json")
    checked = _tiktoken_dir() / "checked" / f"{_sha256_file(tokenizer_json)}.ok"
    tiktoken_file = _tiktoken_dir() / "o200k_base.tiktoken"
    if not checked.exists() or _sha256_file(tiktoken_file) != O200K_BASE_SHA256:
        tiktoken_file = _cached_tiktoken_file(tiktoken_from_tokenizer_json(model_dir))
        checked.parent.mkdir(parents=True, exist_ok=True)
        checked.touch()

    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(tiktoken_file.parent)
    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as e:  # harmony raises its own HarmonyError; the cause is not the user's
        raise ModelError(
            f"openai-harmony could not load the GPT-OSS encoding from {tiktoken_file.parent} ({e}). "
            "Delete that directory so it is rebuilt from the model's tokenizer.json, and try again."
        ) from e
