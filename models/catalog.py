"""The known models: the GPT-OSS-Swallow variants (`swallow-server models` lists them and which
are cached) and gpt-oss-20b's MLX conversions, with the short names `swallow-server pull` and
`--model` take for them (`swallow:8bit`, `gpt-oss:20b`).

Sizes are the published download sizes; bits/weight is what
``mlx_lm.utils.compute_bits_per_weight`` reports for the MLX conversions
(6-bit affine, group size 64, bf16 scales and biases, router at 8-bit =
6.503). The original repo is bf16 in transformers' layout: the server loads
it directly (models.hf_layout) or `swallow-server convert` makes an MLX copy.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    repo: str
    kind: str
    size_gb: float
    bits_per_weight: float
    note: str = ""
    default: bool = False
    aliases: tuple[str, ...] = ()  # short names for `pull`, `rm` and --model


VARIANTS = (
    Variant("tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-6bit-mlx", "MLX 6-bit",
            17, 6.503, "default; lowest stable quantization", default=True,
            aliases=("swallow", "swallow:6bit")),
    Variant("tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-8bit-mlx", "MLX 8-bit",
            22, 8.5, aliases=("swallow:8bit",)),
    Variant("tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-fp16-mlx", "MLX fp16",
            40, 16.0, aliases=("swallow:fp16",)),
    Variant("tokyotech-llm/GPT-OSS-Swallow-20B-RL-v0.1", "original bf16 (HF layout)",
            42, 16.0, "loads directly; or `swallow-server convert --hf-path` it",
            aliases=("swallow:bf16",)),
)

# gpt-oss-20b itself, in MLX conversions (sizes: the repos' published totals).
GPT_OSS = (
    Variant("mlx-community/gpt-oss-20b-MXFP4-Q8", "MLX, MXFP4 experts + 8-bit rest", 12.1, 4.25,
            "experts as OpenAI released them (MXFP4), the other weights at 8-bit",
            aliases=("gpt-oss:20b", "gpt-oss-20b")),
    Variant("lmstudio-community/gpt-oss-20b-MLX-8bit", "MLX 8-bit", 22.3, 8.5,
            aliases=("gpt-oss:20b-8bit",)),
)

KNOWN = VARIANTS + GPT_OSS
DEFAULT_MODEL = next(v.repo for v in VARIANTS if v.default)


def resolve(name: str) -> str:
    """The repo id a known short name stands for (case-insensitive); anything else as it is."""
    for variant in KNOWN:
        if name.casefold() in (a.casefold() for a in variant.aliases):
            return variant.repo
    return name


def aliases_of(repo_id: str) -> tuple[str, ...]:
    return next((v.aliases for v in KNOWN if v.repo == repo_id), ())


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--cache-dir", default=None,
        help="Hugging Face hub cache to look in (default: HF_HUB_CACHE / "
             "~/.cache/huggingface/hub)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table")
    return parser


def cached_repos(cache_dir: str | Path | None = None) -> dict[str, int]:
    """repo id -> bytes on disk for the model repos in the local hub cache.

    An absent or unreadable cache is simply empty."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache_dir)
    except Exception:  # CacheNotFound, permissions, a corrupt cache
        return {}
    return {r.repo_id: r.size_on_disk for r in info.repos
            if r.repo_type == "model" and r.nb_files > 0}


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def rows(cache_dir=None) -> list[dict]:
    cached = cached_repos(cache_dir)
    found = []
    for v in VARIANTS:
        row = asdict(v)
        row["cached"] = v.repo in cached
        row["cached_bytes"] = cached.get(v.repo)
        found.append(row)
    return found


def run(args: argparse.Namespace) -> int:
    found = rows(getattr(args, "cache_dir", None))
    if getattr(args, "json", False):
        print(json.dumps(found, indent=2))
        return 0
    header = ("", "REPO", "ALIAS", "FORMAT", "SIZE", "BITS/W", "LOCAL CACHE")
    table = [header]
    for r in found:
        table.append((
            "*" if r["default"] else "",
            r["repo"],
            ", ".join(r["aliases"]),
            r["kind"],
            f"~{r['size_gb']:g} GB",
            f"{r['bits_per_weight']:g}",
            f"yes ({_gb(r['cached_bytes'])})" if r["cached"] else "no",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    print("* default. Download one with `swallow-server pull REPO` (or its alias), serve it with "
          "`--model REPO`; 4-bit conversions are not listed: they made the analysis channel loop.")
    others = ", ".join(f"{v.aliases[0]} ({v.repo}, ~{v.size_gb:g} GB)" for v in GPT_OSS)
    print(f"gpt-oss-20b itself: {others}.")
    for r in found:
        if r["note"] and not r["default"]:
            print(f"{r['repo']}: {r['note']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="swallow-server models",
        description="List the known GPT-OSS-Swallow variants and which are "
                    "in the local Hugging Face cache.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
