"""Showing a pull's progress (models/download.py's PullEvents): rich progress bars on a terminal,
plain lines anywhere else (a log file, CI, a pipe)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Self

from .download import PullEvent, format_size

LINE_EVERY_S = 10.0  # seconds between a file's progress lines when no terminal draws bars


def _size(n: int | None) -> str:
    return "unknown size" if n is None else format_size(n)


def _short(digest: str | None) -> str:
    if not digest:
        return ""
    kind, _, value = digest.partition(":")
    return f"{kind} {value[:12]}"


def _file_status(event: PullEvent) -> str:
    """"pulling" | "verifying" | "verified" when the event is about one file, else ""."""
    verb = event.status.split(" ", 1)[0]
    return verb if event.file and verb in ("pulling", "verifying", "verified") else ""


class TerminalProgress:
    """A bar per file, as `ollama pull` draws them; other steps are printed above the bars."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(), console=console)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> Self:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, event: PullEvent) -> None:
        kind = _file_status(event)
        task = self.tasks.get(event.file) if event.file else None
        if kind == "pulling":
            if task is None:
                self.tasks[event.file] = self.bars.add_task(event.file, total=event.total, completed=event.completed or 0)
            else:
                self.bars.update(task, completed=event.completed)
        elif kind and task is not None:
            note = "verifying…" if kind == "verifying" else f"[green]✓[/] {_short(event.digest)}"
            self.bars.update(task, description=f"{event.file}  {note}")
        else:
            self.bars.console.print(event.status)


class LineProgress:
    """One line when a file starts, one every LINE_EVERY_S while it downloads, one when it is done
    and one when it is verified; other steps as they are."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}

    def __call__(self, event: PullEvent) -> None:
        kind = _file_status(event)
        name, now = event.file, time.monotonic()
        if kind == "pulling":
            done = event.total is not None and event.completed == event.total
            if name not in self.started:
                self.started[name] = self.last_line[name] = now
                self.write(f"{name}: already downloaded ({_size(event.total)})" if done
                           else f"pulling {name} ({_size(event.total)})")
                if done:
                    self.started[name] = -1.0  # nothing more to say about it
            elif self.started[name] >= 0 and done:
                self.write(f"{name}: downloaded {_size(event.total)} in {now - self.started[name]:.1f} s")
                self.started[name] = -1.0
            elif self.started[name] >= 0 and now - self.last_line[name] >= LINE_EVERY_S and event.total:
                self.last_line[name] = now
                self.write(f"{name}: {100 * (event.completed or 0) / event.total:.0f}% of {_size(event.total)}")
        elif kind == "verified":
            self.write(f"{name}: verified ({_short(event.digest)})")
        elif kind != "verifying":
            self.write(event.status)


@contextmanager
def shown(write: Callable[[str], None] | None = None, console=None) -> Iterator[Callable[[PullEvent], None]]:
    """`with shown() as show: pull(repo, on_event=show)`: bars when `console` (default: standard
    error) is a terminal, else lines through `write` (default: printed to the console)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    if console.is_terminal:
        with TerminalProgress(console) as show:
            yield show
    else:
        yield LineProgress(write or (lambda line: console.print(line, markup=False, highlight=False)))
