"""`swallow-server models`: the models this configuration serves (configured, from the command
line, found in the Hugging Face cache), which of them a running server has loaded, and the known
GPT-OSS-Swallow variants."""

import argparse
import json
import sys

import httpx

from models import catalog as variants
from server.config import ConfigError, load_settings
from server.registry import catalog

HEADER = ("NAME", "MODEL", "FROM", "DEFAULT", "KEEP-ALIVE", "ON DISK", "CONTEXT", "LOADED")


def loaded_on(url: str, api_key: str) -> dict | None:
    """id -> the running server's card, or None when no server answers at `url`."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        answer = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=5)
        answer.raise_for_status()
        return {card["id"]: card for card in answer.json()["data"]}
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def rows(settings, command_line: list[str], running: dict | None) -> list[dict]:
    listed, default = catalog.build(settings, command_line)
    out = []
    for model in listed:
        directory = model.local_dir()
        card = (running or {}).get(model.name)
        out.append({
            "name": model.name, "model": model.spec, "source": model.source, "default": model is default,
            "keep_alive_s": model.keep_alive, "on_disk_bytes": catalog.weights_bytes(directory) if directory else None,
            "context_length": model.context_length(),
            "loaded": None if running is None else bool(card and card["loaded"]),
        })
    for name, card in (running or {}).items():  # what the server serves that this configuration doesn't list
        if not any(r["name"] == name for r in out):
            out.append({"name": name, "model": card.get("model", name), "source": "running server",
                        "default": card.get("default", False), "keep_alive_s": None,
                        "on_disk_bytes": card.get("size_bytes"), "context_length": card.get("context_length"),
                        "loaded": card.get("loaded", False)})
    return out


def _table(found: list[dict], url: str, running: dict | None) -> None:
    lines = [HEADER]
    for r in found:
        lines.append((r["name"], r["model"], r["source"], "*" if r["default"] else "",
                      "forever" if r["keep_alive_s"] is None else f"{r['keep_alive_s']:g} s",
                      f"{r['on_disk_bytes'] / 1e9:.2f} GB" if r["on_disk_bytes"] else "-",
                      str(r["context_length"] or "-"),
                      "-" if r["loaded"] is None else "loaded" if r["loaded"] else "no"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    where = f"the server at {url}" if running is not None else f"no server answers at {url}"
    print(f"\nLOADED: {where}. FROM: --model, config.toml [[models]], or the Hugging Face cache.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swallow-server models", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (default: ./config.toml when present)")
    parser.add_argument("--model", action="append", dest="models_given", metavar="[ALIAS=]MODEL",
                        help="as for serving: models given on the command line")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running server to ask what is loaded")
    variants.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        running = loaded_on(args.url, settings.api_key)
        found = rows(settings, args.models_given, running)
    except (ConfigError, ValueError) as e:
        print(f"swallow-server: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"models": found, "variants": variants.rows(args.cache_dir)}, indent=2))
        return 0
    _table(found, args.url, running)
    print("Known GPT-OSS-Swallow variants:")
    return variants.run(args)


if __name__ == "__main__":
    sys.exit(main())
