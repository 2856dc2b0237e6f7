"""`swallow-server pull | ls | ps | rm`: models from the command line, as `ollama` has them.

- pull MODEL   download a Hugging Face repo (or a known alias: `swallow:8bit`, `gpt-oss:20b`) into
               the Hugging Face cache, with a progress bar; checked against the Hub's sizes and
               hashes (models/download.py)
- ls           the models in the cache that this server can serve, with their sizes
- ps           the models a running server has loaded: memory, requests, keep-alive (its /health)
- rm MODEL     delete a model from the cache (asks first, unless -y)
"""

import argparse
import json
import sys
import time

import httpx

from models import catalog, download, hub_cache, progress
from models.errors import ModelError

DEFAULT_URL = "http://127.0.0.1:8000"


def _fail(message: str, status: int = 1) -> int:
    print(f"swallow-server: {message}", file=sys.stderr)
    return status


def _size(n: int | None) -> str:
    return "-" if n is None else download.format_size(n)


def _table(header: tuple, rows: list[tuple]) -> None:
    lines = [header, *rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())


def _seconds(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


# ---- pull -----------------------------------------------------------------------------------

def pull_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="swallow-server pull", description=(
        "Download a model into the Hugging Face cache, ready to serve. Files already there are kept; "
        "every file is checked against the size and hash the Hub publishes."))
    parser.add_argument("model", help="a Hugging Face repo id, or a known alias: " + ", ".join(
        a for v in catalog.KNOWN for a in v.aliases))
    parser.add_argument("--revision", default="main", help="a branch, tag or commit (default: main)")
    parser.add_argument("--json", action="store_true",
                        help="print the progress as JSON lines (Ollama's /api/pull fields) instead of bars")
    args = parser.parse_args(argv)
    repo_id = catalog.resolve(args.model)
    try:
        if args.json:
            for event in download.pull_events(repo_id, revision=args.revision):
                print(json.dumps(event.ollama()), flush=True)
            return 0
        if repo_id != args.model:
            print(f"{args.model} is {repo_id}", file=sys.stderr)
        with progress.shown() as show:
            path = download.pull(repo_id, revision=args.revision, on_event=show)
    except ModelError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail(f"interrupted. The files that were complete are kept in the Hugging Face cache; "
                     f"`swallow-server pull {args.model}` again downloads the rest.", 130)
    model_type = _config(path).get("model_type")
    if model_type != "gpt_oss":
        print(f"Note: {repo_id} is not a GPT-OSS model (model_type {model_type!r}); this server serves "
              "GPT-OSS models.", file=sys.stderr)
    print(f"{repo_id} is ready in {path}\nServe it: swallow-server --model {args.model}")
    return 0


def _config(path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


# ---- ls -------------------------------------------------------------------------------------

def _format(model: hub_cache.CachedModel) -> str:
    quant = model.config.get("quantization")
    if isinstance(quant, dict) and quant.get("mode") not in (None, "affine"):
        return str(quant["mode"])  # mlx-lm's mxfp4, nvfp4, ...
    if model.quantization_bits:
        return f"{model.quantization_bits}-bit"
    quant = model.config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("quant_method"):
        return str(quant["quant_method"])
    return str(model.config.get("torch_dtype") or model.config.get("dtype") or "-")


def _ago(timestamp: float) -> str:
    return f"{_seconds(max(0.0, time.time() - timestamp))} ago"


def ls_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="swallow-server ls", description=(
        "The models in the Hugging Face cache (HF_HOME / HF_HUB_CACHE) that this server can serve."))
    parser.add_argument("--all", action="store_true", help="list every model repo of the cache, GPT-OSS or not")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    found = hub_cache.cached_models()
    shown = [m for m in found if args.all or m.servable]
    if args.json:
        print(json.dumps([{"model": m.repo_id, "aliases": list(m.aliases), "size_bytes": m.size_bytes,
                           "modified": m.modified, "commit": m.commit, "path": str(m.snapshot),
                           "servable": m.servable, "complete": m.complete, "missing": m.missing,
                           "format": _format(m)} for m in shown], indent=2))
        return 0
    if shown:
        _table(("NAME", "ALIAS", "SIZE", "FORMAT", "MODIFIED", ""), [
            (m.repo_id, ", ".join(m.aliases), _size(m.size_bytes), _format(m), _ago(m.modified),
             "" if m.complete else f"incomplete: `swallow-server pull {m.repo_id}` finishes it")
            for m in shown])
    else:
        print(f"No GPT-OSS model in the Hugging Face cache ({download.hub_cache()}). "
              "`swallow-server pull swallow` downloads the default one.")
    hidden = len(found) - len(shown)
    if hidden:
        print(f"\n{hidden} other model repo(s) in the cache are not GPT-OSS models (--all lists them).")
    return 0


# ---- ps -------------------------------------------------------------------------------------

def _keep_alive(model: dict) -> str:
    keep = model.get("keep_alive_s")
    if keep is None:
        return "forever"
    if not model.get("loaded"):
        return _seconds(keep)
    idle = model.get("idle_s")
    if idle is None:
        return f"{_seconds(keep)}, busy"
    return f"{_seconds(keep)}, unloads in {_seconds(max(0.0, keep - idle))}"


def ps_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="swallow-server ps", description=(
        "The models a running server has loaded (and the default one): memory, requests, keep-alive."))
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print its /health answer as JSON")
    args = parser.parse_args(argv)
    try:
        health = httpx.get(f"{args.url.rstrip('/')}/health", timeout=5).json()
        models = health["models"]
    except (httpx.HTTPError, ValueError, KeyError) as e:
        return _fail(f"no swallow-server answers at {args.url} ({e}).")
    if args.json:
        print(json.dumps(health, indent=2))
        return 0
    rows = []
    for name, m in models.items():
        memory = m.get("memory") or {}
        state = "loaded" if m.get("loaded") else "loading" if m.get("loading") else "not loaded"
        kv = (f"{_size(memory.get('kv_reserved_bytes'))} of {_size(memory.get('kv_budget_bytes'))}"
              if memory else "-")
        requests = f"{m.get('running', 0)} running, {m.get('waiting', 0) + m.get('waiting_for_load', 0)} waiting"
        rows.append((name + (" *" if m.get("default") else ""), state, _size(m.get("weights_bytes")), kv, requests,
                     _keep_alive(m)))
    _table(("NAME", "STATE", "WEIGHTS", "KV CACHE", "REQUESTS", "KEEP-ALIVE"), rows)
    budget = health.get("models_memory") or {}
    print(f"\n* default. Weights loaded: {_size(budget.get('loaded_bytes'))} of {_size(budget.get('budget_bytes'))} "
          f"for models ({budget.get('budget_from', '?')}); KV CACHE: reserved by requests of the budget for caches.")
    return 0


# ---- rm -------------------------------------------------------------------------------------

def rm_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="swallow-server rm", description=(
        "Delete models from the Hugging Face cache (every revision of each)."))
    parser.add_argument("models", nargs="+", metavar="MODEL", help="a repo id or a known alias")
    parser.add_argument("-y", "--yes", action="store_true", help="don't ask")
    args = parser.parse_args(argv)
    status = 0
    for name in args.models:
        model = hub_cache.find(name)
        if model is None:
            status = _fail(f"'{name}' is not in the Hugging Face cache ({download.hub_cache()}); "
                           "`swallow-server ls` lists what is.")
            continue
        if not args.yes:
            try:
                answer = input(f"Delete {model.repo_id} ({_size(model.size_bytes)}) from {download.hub_cache()}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print(f"kept {model.repo_id}")
                status = 1
                continue
        try:
            freed = hub_cache.remove(model.repo_id)
        except (ModelError, OSError) as e:
            status = _fail(str(e))
            continue
        print(f"deleted {model.repo_id} ({_size(freed)} freed)")
    return status


COMMANDS = {"pull": pull_main, "ls": ls_main, "ps": ps_main, "rm": rm_main}


def main(command: str, argv: list[str]) -> int:
    return COMMANDS[command](argv)
