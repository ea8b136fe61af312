"""Shared pieces of the CLI: the console, the settings table printed first, a rich `Reporter`
that draws one progress bar per stage, and the summary printed last (DESIGN §7)."""

from __future__ import annotations

import time
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from semgen_cli.reporting import Reporter

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False)


def printable(text: Any) -> str:
    """`text` with control characters written as escapes (`\\x1b`, `\\u202e`): captions, file names
    and prompts come from others, and an escape sequence in one must not drive the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def settings_table(title: str, rows: dict[str, Any] | Iterable[tuple[str, Any]]) -> None:
    """Print the resolved settings of a command as a compact two-column table."""
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows.items() if isinstance(rows, dict) else rows:
        table.add_row(escape(printable(key)), escape(printable(_fmt(value))))
    console.print(table)


def summary(title: str, rows: dict[str, Any], next_command: str | None = None) -> None:
    """Print what was written where and how long it took, then the command to run next."""
    settings_table(title, rows)
    if next_command:
        console.print(f"[bold]next:[/] {escape(printable(next_command))}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " × ".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else ", ".join(map(str, value))
    return str(value)


class RichReporter(Reporter):
    """Draws a rich progress bar per task with its live fields (loss=…, lr=…) and ETA."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}
        self.durations: dict[str, float] = {}

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, task: str, total: float | None = None, unit: str = "") -> None:
        self.tasks[task] = self.progress.add_task(task, total=total, unit=unit, info="")
        self.started[task] = time.perf_counter()

    def advance(self, task: str, amount: float = 1.0, **fields: object) -> None:
        if task not in self.tasks:
            self.start(task)
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self.progress.update(self.tasks[task], advance=amount, info=escape(info))

    def finish(self, task: str) -> None:
        if task in self.tasks:
            t = self.progress.tasks[self.tasks[task]]
            if t.total is None:
                self.progress.update(self.tasks[task], total=t.completed)
            self.durations[task] = time.perf_counter() - self.started[task]

    def info(self, message: str) -> None:
        self.progress.console.print(escape(printable(message)))

    def warn(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(printable(message))}")
