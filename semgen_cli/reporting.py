"""How long-running library code reports progress without knowing about the terminal.

Library functions take an optional `Reporter`; the CLI passes one that draws rich progress bars,
tests pass nothing (the silent default) or a recording one. This keeps rich out of the library.
"""

from __future__ import annotations

import logging

log = logging.getLogger("semgen")


class Reporter:
    """Silent by default; subclass to draw. Tasks are named by a short string."""

    def start(self, task: str, total: float | None = None, unit: str = "") -> None:
        """A stage begins; `total` in `unit`s if known."""

    def advance(self, task: str, amount: float = 1.0, **fields: object) -> None:
        """Progress on `task`; `fields` (loss=..., lr=...) are shown beside the bar."""

    def finish(self, task: str) -> None:
        """The stage is over."""

    def info(self, message: str) -> None:
        """A line a person should read (what a flag did, a warning)."""
        log.info(message)

    def warn(self, message: str) -> None:
        log.warning(message)


NULL = Reporter()
