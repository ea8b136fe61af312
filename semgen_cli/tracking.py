"""Experiment trackers: every `metrics.jsonl` row and every validation sample, mirrored to
TensorBoard, Weights & Biases or Trackio (`--report-to`).

`metrics.jsonl` stays the source of truth; a tracker only receives copies. The tracker packages
are optional extras (`pip install semgen[tensorboard]`, `semgen[wandb]`, `semgen[trackio]`): each
is imported only when asked for, and a missing one is a one-line `InputError` raised by
`check_report_to` before a run writes anything. Only the process of rank 0 logs (`open_trackers`
returns none elsewhere), and a tracker opens on its first row, so a run that fails its checks
leaves no tracker files behind.

Where things go, and what reaches a network:
- tensorboard: event files in `RUN/tracking/tensorboard` (local files only). A resumed run
  purges the events from its first redone step on (`SummaryWriter(purge_step=…)`), as the trainer
  truncates `metrics.jsonl` there.
- wandb: `wandb.init` with the run folder's name, files under `RUN/tracking`, and the same run id
  on `--resume` (kept in `RUN/tracking/wandb.json`). semgen never logs in: wandb follows the user's
  own setup (`WANDB_MODE=offline` or `disabled`, `WANDB_PROJECT`, an API key the user configured).
- trackio: `trackio.init(project="semgen", name=<run folder name>, resume="allow")`; trackio keeps
  its database on the local disk unless the user's own trackio setup names a Space.

Samples: TensorBoard has no mp4 support without moviepy, so it gets the middle frame of each
video as an image and the video's path as text; wandb and trackio get the mp4 itself.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from semgen_cli.errors import ConfigError, InputError

TRACKERS = ("tensorboard", "wandb", "trackio")
"""Names `--report-to` takes (besides none)."""
MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "trackio": "trackio"}
"""The module each tracker imports; its package is the extra of the same name."""
TRACKING_DIR = "tracking"
"""Folder inside the run that holds the trackers' local files."""


class Tracker(Protocol):
    """What the trainer and the samplers call; every method is called on rank 0 only."""

    def log(self, row: dict[str, Any], step: int) -> None:
        """A metrics.jsonl row (its numbers; other values are left out)."""

    def log_video(self, tag: str, path: Path, step: int, caption: str = "") -> None:
        """A sample video written at `step`."""

    def close(self) -> None:
        """Flush and close (idempotent)."""


def parse_report_to(values: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """`--report-to` values (repeated and/or comma-separated) → tracker names in order, without
    duplicates; "none" alone (or nothing) → (). An unknown name is a ConfigError."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values:
        for name in (part.strip().lower() for part in str(value).split(",")):
            if not name:
                continue
            if name != "none" and name not in TRACKERS:
                raise ConfigError(f"--report-to {name!r}: expected tensorboard, wandb, trackio or none (several: --report-to tensorboard,wandb)")
            if name not in names:
                names.append(name)
    if "none" in names and len(names) > 1:
        raise ConfigError(f"--report-to {','.join(names)}: none cannot be combined with a tracker")
    return tuple(n for n in names if n != "none")


def check_report_to(names: tuple[str, ...]) -> None:
    """Import each tracker's module now, so that a missing package is a one-line error naming
    its extra before the run writes anything."""
    import importlib

    for name in names:
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise InputError(f"--report-to {name}: the {name} package is not installed; pip install semgen[{name}]") from None


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a row, without its step (the tracker's own axis)."""
    out = {}
    for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    """Event files in RUN/tracking/tensorboard; scalars by row key."""

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.log_dir, self.resume, self.writer = Path(run_dir) / TRACKING_DIR / "tensorboard", resume, None

    def _open(self, step: int):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, events of the steps being redone are dropped (metrics.jsonl is truncated the same way)
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step if self.resume else None)
        return self.writer

    def log(self, row: dict[str, Any], step: int) -> None:
        writer = self._open(step)
        for key, value in _numbers(row).items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def log_video(self, tag: str, path: Path, step: int, caption: str = "") -> None:
        from semgen_cli.io.video import read_video

        writer = self._open(step)
        frames = read_video(path)  # (F, H, W, 3) uint8; samples are short
        writer.add_image(f"samples/{tag}", frames[len(frames) // 2], global_step=step, dataformats="HWC")
        writer.add_text(f"samples/{tag}", f"{path.name}: {caption}" if caption else path.name, global_step=step)
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker:
    """A wandb run named after the run folder, resumed by its stored id; wandb's own settings
    (WANDB_MODE, WANDB_PROJECT, the user's API key) decide where it goes. semgen never logs in."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool) -> None:
        self.run_dir, self.config, self.resume, self.run = Path(run_dir), config, resume, None

    def _open(self):
        if self.run is None:
            import wandb

            from semgen_cli.io.shards import write_json_atomic

            folder = self.run_dir / TRACKING_DIR
            folder.mkdir(parents=True, exist_ok=True)
            ids = folder / "wandb.json"
            run_id = json.loads(ids.read_text()).get("id") if ids.is_file() else None
            if run_id is None:
                run_id = wandb.util.generate_id()
                write_json_atomic(ids, {"id": run_id})
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "semgen"), name=self.run_dir.name, id=run_id,
                                  resume="allow", dir=str(folder), config=self.config)
        return self.run

    def log(self, row: dict[str, Any], step: int) -> None:
        self._open().log(_numbers(row), step=step)

    def log_video(self, tag: str, path: Path, step: int, caption: str = "") -> None:
        import wandb

        self._open().log({f"samples/{tag}": wandb.Video(str(path), caption=caption or None, format="mp4")}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class TrackioTracker:
    """A trackio run (project "semgen", named after the run folder, resumed by name)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool) -> None:
        self.name, self.config, self.resume, self.open = Path(run_dir).name, config, resume, False

    def _trackio(self):
        import trackio

        if not self.open:
            trackio.init(project="semgen", name=self.name, config=self.config, resume="allow")
            self.open = True
        return trackio

    def log(self, row: dict[str, Any], step: int) -> None:
        self._trackio().log(_numbers(row), step=step)

    def log_video(self, tag: str, path: Path, step: int, caption: str = "") -> None:
        trackio = self._trackio()
        if hasattr(trackio, "Video"):  # older trackio releases log numbers only
            trackio.log({f"samples/{tag}": trackio.Video(str(path), caption=caption or None)}, step=step)

    def close(self) -> None:
        if self.open:
            import trackio

            trackio.finish()
            self.open = False


class Trackers(list):
    """The trackers of one run (a list the trainer iterates); a context manager that closes them."""

    def log(self, row: dict[str, Any], step: int) -> None:
        for tracker in self:
            tracker.log(row, step)

    def log_video(self, tag: str, path: Path, step: int, caption: str = "") -> None:
        for tracker in self:
            tracker.log_video(tag, path, step, caption)

    def close(self) -> None:
        for tracker in self:
            tracker.close()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_rank0() -> bool:
    """Whether this process is rank 0 (torchrun sets RANK; a plain launch is rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def open_trackers(names: tuple[str, ...], run_dir: str | os.PathLike, config: dict[str, Any] | None = None,
                  resume: bool = False) -> Trackers:
    """The trackers `names` for the run in `run_dir` (none on ranks other than 0). Each opens on
    its first row; `config` (the run's config.json) goes to wandb and trackio as the run config."""
    check_report_to(names)
    if not is_rank0():
        return Trackers()
    run_dir, config = Path(run_dir), config or {}
    made = {"tensorboard": lambda: TensorBoardTracker(run_dir, resume), "wandb": lambda: WandbTracker(run_dir, config, resume),
            "trackio": lambda: TrackioTracker(run_dir, config, resume)}
    return Trackers(made[name]() for name in names)
