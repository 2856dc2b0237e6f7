"""`swallow-server chat`: an interactive terminal chat.

Input is prompt_toolkit's (history with the up arrow, wide characters, pasting); output is rich's.
Enter sends; Alt+Enter (or Esc then Enter) starts a new line. Replies stream: the reasoning
dimmed (or folded to one line that says how long the model thought, or hidden), the answer in the
normal colour. Ctrl-C during a reply stops it (the server frees its slot) and the turn is dropped
from the conversation; Ctrl-C at the prompt clears the line; Ctrl-D or /quit leaves.
"""

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from server.console.client import (
    Client,
    ClientError,
    Connection,
    Reply,
    add_connection_arguments,
    add_generation_arguments,
    request_body,
)
from server.console.messages import say

EFFORTS = ("low", "medium", "high")
REASONING_MODES = ("show", "fold", "hide")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swallow-server chat", description="Chat with the model in the terminal.")
    add_generation_arguments(p)
    p.add_argument("--reasoning", choices=REASONING_MODES, default="show",
                   help="show the reasoning dimmed (default), fold it to one line, or hide it")
    p.add_argument("--history-file", help="keep the input history in this file (default: this session only)")
    p.add_argument("--quiet", "-q", action="store_true", help="no usage line after each reply")
    add_connection_arguments(p)
    return p


def make_session(history_file: str | None):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    # Ctrl-J sends too: an Enter typed ahead while a reply streams reaches us as Ctrl-J (the
    # terminal, not yet in raw mode, turns CR into LF); Alt+Enter likewise becomes Esc Ctrl-J.
    @bindings.add("enter")
    @bindings.add("c-j")
    def _send(event):
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    @bindings.add("escape", "c-j")
    def _newline(event):
        event.current_buffer.insert_text("\n")

    history = FileHistory(str(Path(history_file).expanduser())) if history_file else InMemoryHistory()
    return PromptSession(history=history, multiline=True, key_bindings=bindings,
                         prompt_continuation=lambda width, line, wrap: "." * (width - 1) + " ")


class Chat:
    def __init__(self, client: Client, args: argparse.Namespace, console: Console):
        self.client = client
        self.console = console
        self.system: str | None = args.system
        self.effort: str | None = args.effort
        self.reasoning = args.reasoning
        self.max_tokens = args.max_tokens
        self.temperature = args.temperature
        self.quiet = args.quiet
        self.messages: list[dict] = []  # user and assistant turns
        self.reasonings: list[str | None] = []  # the reasoning of each assistant turn, for /save

    def note(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False)

    def api_messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    # ---- commands ----

    def command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.note(say("help"))
        elif name == "/effort":
            if not arg:
                self.note(say("effort_is", effort=self.effort or say("server_default")))
            elif arg in EFFORTS:
                self.effort = arg
                self.note(say("effort_is", effort=arg))
            else:
                self.note(say("effort_usage"))
        elif name == "/system":
            self.system = arg or None
            self.note(say("system_is", text=arg) if arg else say("system_removed"))
        elif name == "/reasoning":
            if arg in REASONING_MODES:
                self.reasoning = arg
                self.note(say("reasoning_is", mode=arg))
            else:
                self.note(say("reasoning_usage"))
        elif name == "/clear":
            self.messages, self.reasonings = [], []
            self.note(say("cleared"))
        elif name == "/save":
            if not arg:
                self.note(say("save_usage"))
            else:
                self.save(Path(arg).expanduser())
        else:
            self.note(say("unknown_command", name=name))
        return True

    def save(self, path: Path) -> None:
        messages = ([{"role": "system", "content": self.system}] if self.system else [])
        assistant = iter(self.reasonings)
        for message in self.messages:
            message = dict(message)
            if message["role"] == "assistant":
                reasoning = next(assistant, None)
                if reasoning:
                    message["reasoning_content"] = reasoning
            messages.append(message)
        document = {"reasoning_effort": self.effort, "messages": messages}
        try:
            path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        except OSError as e:
            self.note(say("cannot_save", error=e))
            return
        self.note(say("saved", count=len(messages), path=path))

    # ---- a turn ----

    def send(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        body = request_body(self.api_messages(), effort=self.effort, max_tokens=self.max_tokens,
                            temperature=self.temperature)
        console, mode = self.console, self.reasoning
        state = {"open": False, "answering": False, "status": None}

        def end_reasoning() -> None:
            if state["status"] is not None:
                state["status"].stop()
                state["status"] = None
            if mode == "fold" and reply.reasoning:
                thought = reply.reasoning_seconds if reply.reasoning_seconds is not None else reply.seconds
                self.note(say("thought_for", seconds=thought, characters=len(reply.reasoning)))
            elif state["open"]:
                console.print()
            state["open"] = False

        def on_reasoning(chunk: str) -> None:
            if mode == "show":
                console.print(chunk, style="dim", end="", markup=False)
                state["open"] = not chunk.endswith("\n")
            elif mode == "fold" and state["status"] is None:
                state["status"] = console.status(say("thinking"), spinner="dots")
                state["status"].start()

        def on_content(chunk: str) -> None:
            if not state["answering"]:
                state["answering"] = True
                end_reasoning()
            console.print(chunk, end="", markup=False)

        reply = Reply()
        try:
            self.client.stream(body, reply, on_reasoning, on_content)
        except KeyboardInterrupt:
            if not state["answering"]:
                end_reasoning()
            console.print()
            self.note(say("stopped"))
            self.messages.pop()
            return
        except ClientError as e:
            if not state["answering"]:
                end_reasoning()
            console.print()
            console.print(say("error", error=e), style="red", markup=False)
            self.messages.pop()
            return
        if not state["answering"]:
            end_reasoning()
        console.print()
        if not self.quiet:
            self.note(reply.usage_line())
        self.messages.append({"role": "assistant", "content": reply.content})
        self.reasonings.append(reply.reasoning or None)

    def run(self, session) -> int:
        while True:
            try:
                line = session.prompt("> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return 0
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                if not self.command(line):
                    return 0
                continue
            self.send(line[1:] if line.startswith("//") else line)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    if not sys.stdin.isatty():
        print(f"swallow-server chat: {say('not_a_terminal')}", file=sys.stderr)
        return 2
    try:
        with Connection(args) as client:
            try:
                model = client.http.get("/v1/models", timeout=10).json()["data"][0]["id"]
            except Exception:  # noqa: BLE001 - only for the banner
                model = "?"
            console.print(say("banner", model=model, url=client.url), style="dim", markup=False)
            return Chat(client, args, console).run(make_session(args.history_file))
    except ClientError as e:
        print(f"swallow-server chat: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
