"""The `swallow-server` command: serve (the default), convert, models, pull, ls, ps, rm, generate, chat,
batch."""

import argparse
import logging
import os
import signal
import sys
import threading

from models.errors import ModelError
from server.config import DEFAULT_MODEL, ConfigError, load_settings
from server.plumbing.exit import exit_now

ENGINE_DEATH_GRACE = 2.0  # seconds between the engine's death and the exit
SUBCOMMANDS = ("serve", "convert", "models", "pull", "ls", "ps", "rm", "generate", "chat", "batch")
MODEL_COMMANDS = ("pull", "ls", "ps", "rm")  # server/registry/model_commands.py


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swallow-server",
        description="OpenAI-compatible server for GPT-OSS models on MLX. "
        "Subcommands: serve (default), convert, models, pull, ls, ps, rm, generate, chat, batch.",
    )
    parser.add_argument("--model", action="append", dest="models_given", metavar="[ALIAS=]MODEL",
                        help=f"local MLX model directory, Hugging Face repo id, or 'demo' (a tiny random model, "
                        f"no download); give it more than once to serve several models, the first is the default "
                        f"(or a [[models]] alias of config.toml). Default: {DEFAULT_MODEL}")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--ollama-port", type=int, help="also listen on this port, for apps that only talk to "
                        "Ollama's (11434) (default: none)")
    parser.add_argument("--config", help="TOML settings file (default: ./config.toml when present)")
    parser.add_argument("--trust-remote-code", action="store_true", default=None,
                        help="allow a model directory's own architecture file (config.json model_file)")
    parser.add_argument("--served-model-name", help="the model id clients see (default: --model)")
    parser.add_argument("--context-length", type=int, help="context size in tokens (default: the model's)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: none; "
                        "SWALLOW_API_KEY keeps it out of the process list)")
    parser.add_argument("--cors-origins", help="comma-separated origins whose pages may call the API; "
                        "'http://host:*' allows any port, '*' every origin (default: localhost, any port)")
    parser.add_argument("--max-concurrency", type=int, help="requests generating at once "
                        "(default: the max_batch_size setting)")
    parser.add_argument("--max-queue", type=int, help="requests waiting for a slot; more get 429 (default 64)")
    parser.add_argument("--no-openblas", dest="openblas", action="store_false", default=None,
                        help="on Linux without a GPU, keep the mlx wheel's reference BLAS instead of preloading "
                        "Debian's OpenBLAS (libopenblas0-pthread) when it is installed")
    return parser


def serve(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "models_given")}
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as e:
        print(f"swallow-server: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("swallow.server")
    if settings.log_level != "debug":  # a line per request huggingface_hub makes, among the download's progress
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)

    from server.blas import blas_in_use, preload_openblas

    preload_openblas(settings.openblas)  # may start this process again, with OpenBLAS loaded

    # Under mlx.launch: join the other ranks, and serve one model with rank 0's settings
    # (server/distributed/); the others run only its engine, in step.
    from server.distributed.world import join_world

    try:
        world, settings = join_world(settings, args.models_given)
    except ValueError as e:
        print(f"swallow-server: {e}", file=sys.stderr)
        return 2
    if world is not None and world.rank > 0:
        from models.loading import prepare_model
        from server.distributed.follower import serve_follower

        try:
            model_path = prepare_model(settings.model, trust_remote_code=settings.trust_remote_code, shards=world.size,
                                       kv_memory_mb=settings.kv_memory_mb)
        except ModelError as e:
            print(f"swallow-server: {e}", file=sys.stderr)
            return exit_now(1)
        return exit_now(serve_follower(world, settings, model_path))

    from server.registry.setup import open_registry

    try:  # the models to serve; the default one is found (or downloaded), checked and loaded now
        registry = open_registry(settings, args.models_given, world=world)
    except (ModelError, ConfigError) as e:
        print(f"swallow-server: {e}", file=sys.stderr)
        return exit_now(1)
    except KeyboardInterrupt:  # Ctrl-C during the first start's download (or the load)
        print("swallow-server: interrupted. Files already downloaded are kept in the Hugging Face cache; "
              "the next start (or `swallow-server pull MODEL`) downloads the rest.", file=sys.stderr)
        return exit_now(130)

    import uvicorn

    from server.app import create_app

    log.info("BLAS: %s", blas_in_use())
    app = create_app(settings, registry)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout, access_log=False))  # RequestLog logs

    def engine_died(model: str, reason: str) -> None:
        # requests in flight have their error; give their streams a moment to carry it, then exit
        log.critical("exiting: the engine of %s stopped (%s)", model, reason)
        threading.Timer(ENGINE_DEATH_GRACE, lambda: setattr(server, "should_exit", True)).start()

    registry.on_death = engine_died
    try:
        sockets = listening_sockets(settings)
    except OSError as e:
        print(f"swallow-server: {e}", file=sys.stderr)
        registry.stop()
        return exit_now(1)
    # uvicorn handles SIGTERM/SIGINT: it stops accepting, lets requests in flight finish for up to
    # shutdown_timeout seconds, then returns; it then re-raises the signal to the handlers it
    # found, so these no-op ones make that a clean exit 0 after engine.stop().
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=sockets)
    dead = registry.dead
    registry.stop()
    status = 0
    if dead is not None:
        log.error("the engine died (%s): exiting with status 1 so a supervisor restarts the server", dead)
        status = 1
    else:
        log.info("engine stopped; exiting")
    return exit_now(status)


def listening_sockets(settings) -> list | None:
    """The sockets uvicorn serves: None (it binds `port` itself), or with `ollama_port` both ports,
    one server and one app behind them (Ollama's API, like every other, answers on either)."""
    if not settings.ollama_port:
        return None
    import socket

    sockets = []
    for port in (settings.port, settings.ollama_port):
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, port))
        except OSError as e:
            for opened in [*sockets, sock]:
                opened.close()
            hint = " (is Ollama itself running?)" if port == settings.ollama_port else ""
            raise OSError(f"can't listen on {settings.host}:{port}: {e.strerror or e}{hint}") from e
        sockets.append(sock)
    logging.getLogger("swallow.server").info("listening on %s, ports %d and %d (Ollama's API)", settings.host,
                                             settings.port, settings.ollama_port)
    return sockets


def keep_torch_out() -> None:
    """Tell transformers that torch is absent: it imports torch whenever torch is installed (mlx-lm
    loads tokenizers through it), which costs every start ~2 s of CPU and ~190 MB of memory, and
    nothing the server runs uses torch (mlx-lm, tokenizers, llguidance, harmony). A None in
    sys.modules is Python's own mark for a module that cannot be imported. transformers' advice
    that "PyTorch was not found" is silenced as mlx-lm silences it when imported first."""
    sys.modules.setdefault("torch", None)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "serve"
    rest = argv[1:] if argv and argv[0] in SUBCOMMANDS else argv
    if command != "convert":  # convert leaves transformers as it is
        keep_torch_out()
    if command == "convert":
        from models import convert

        return convert.main(rest)
    if command == "models":
        from server.registry import command as models_command

        return models_command.main(rest)
    if command in MODEL_COMMANDS:
        from server.registry import model_commands

        return model_commands.main(command, rest)
    if command == "generate":
        from server.console import generate

        return generate.main(rest)
    if command == "chat":
        from server.console import chat

        return chat.main(rest)
    if command == "batch":
        from server.console import batch

        return batch.main(rest)
    return serve(rest)


if __name__ == "__main__":
    sys.exit(main())
