"""`swallow-server generate`: one turn, streamed.

Standard output gets the answer and nothing else, followed by one newline, so it can be piped.
Standard error gets the reasoning (dimmed on a terminal; --hide-reasoning drops it) and, at the
end, the usage line (--quiet drops it). With --json-schema the answer is printed once it is
complete, so standard output is either the whole JSON or nothing (an error on standard error).
"""

import argparse
import json
import re
import sys
from pathlib import Path

from rich.console import Console

from server.console.client import (
    ClientError,
    Connection,
    Reply,
    add_connection_arguments,
    add_generation_arguments,
    request_body,
)
from server.console.messages import say


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swallow-server generate",
        description="Answer one prompt. The answer goes to standard output (followed by one newline); "
        "the reasoning and the usage line go to standard error.")
    p.add_argument("--prompt", "-p", help="the prompt (default: read from standard input)")
    add_generation_arguments(p)
    p.add_argument("--json-schema", metavar="FILE",
                   help="structured output: a JSON schema file (a bare schema, or {name, schema, strict})")
    p.add_argument("--hide-reasoning", action="store_true", help="don't print the reasoning")
    p.add_argument("--quiet", "-q", action="store_true", help="don't print the usage line")
    add_connection_arguments(p)
    return p


def load_json_schema(path: str) -> dict:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ClientError(say("cannot_read_schema", path=path, error=e)) from e
    if not isinstance(document, dict):
        raise ClientError(say("not_a_schema", path=path))
    if isinstance(document.get("schema"), dict):  # already OpenAI's json_schema object
        return {"name": "output", **document}
    name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)[:64] or "output"
    return {"name": name, "schema": document, "strict": True}


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        prompt = args.prompt
        if prompt is None:
            if sys.stdin.isatty():
                print(f"swallow-server generate: {say('give_a_prompt')}", file=sys.stderr)
                return 2
            prompt = sys.stdin.read().rstrip("\r\n")  # `echo QUESTION |` adds a newline
        if not prompt.strip():
            print(f"swallow-server generate: {say('empty_prompt')}", file=sys.stderr)
            return 2
        schema = load_json_schema(args.json_schema) if args.json_schema else None
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": prompt}]
        body = request_body(messages, effort=args.effort, max_tokens=args.max_tokens,
                            temperature=args.temperature, json_schema=schema)
        state = {"reasoning_open": False}

        def on_reasoning(text: str) -> None:
            if not args.hide_reasoning:
                err.print(text, style="dim", end="", markup=False)
                state["reasoning_open"] = not text.endswith("\n")

        def on_content(text: str) -> None:
            if state["reasoning_open"]:  # end the reasoning's line before the answer starts
                err.print()
                state["reasoning_open"] = False
            if schema is None:  # structured output is held back until it is whole
                sys.stdout.write(text)
                sys.stdout.flush()

        with Connection(args) as client:
            reply = client.stream(body, Reply(), on_reasoning, on_content)
        if schema is not None:
            sys.stdout.write(reply.content)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if state["reasoning_open"]:
            err.print()
        if not args.quiet:
            err.print(reply.usage_line(), style="dim", markup=False)
        return 0
    except ClientError as e:
        print(f"swallow-server generate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nswallow-server generate: {say('interrupted')}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
