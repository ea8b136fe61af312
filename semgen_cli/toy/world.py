"""The toy world of DESIGN §6: one flat-coloured object on a flat background, moving steadily with
wrap-around or standing still, and the caption grammar that describes it.

The contract (tests and the judge rely on it):
- 64×64 pixels and 8 fps by default; object size 10–20 px; shapes circle, square, triangle
  (pointing up); motion left/right/up/down at a steady speed in px/frame, wrapping around the
  frame edges so the direction never changes, or standing still.
- Exact RGB colours in `COLOURS` and `BACKGROUNDS`; no anti-aliasing, so every pixel of a rendered
  frame is exactly the background colour or exactly the object colour.
- Captions: ``a <colour> <shape> moving <direction> on a <background> background`` or
  ``a <colour> <shape> standing still on a <background> background``.

Rendering is pure float64 numpy arithmetic on pixel centres, so the same `ClipSpec` gives the same
bytes on every machine. The object is drawn on a torus: offsets from its centre are taken as
circular differences, so an object straddling an edge shows partly on the opposite side.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np

from semgen_cli.errors import ConfigError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "orange": (240, 140, 30),
    "purple": (150, 60, 200),
    "cyan": (40, 210, 220),
}
"""Object colours, exact RGB."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "gray": (110, 110, 110),
    "navy": (20, 30, 90),
    "brown": (90, 60, 30),
}
"""Background colours, exact RGB."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
MOTIONS: tuple[str, ...] = DIRECTIONS + ("still",)
"""`still` is the motion of an object standing still; the others are directions of travel."""

# Unit velocity per motion, (vx, vy) in image coordinates: x grows right, y grows down.
VELOCITY: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}

MIN_SIZE, MAX_SIZE = 10, 20
"""Object size range in pixels (diameter, side, or triangle base and height), inclusive."""
MIN_SPEED, MAX_SPEED = 1.0, 3.0
"""Speed range in px/frame for moving objects (standing still is speed 0)."""

Combo = tuple[str, str, str]
"""(colour, shape, background): the unit that can be held out of training."""


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a toy clip. Rendering a spec is deterministic."""

    colour: str
    """Object colour, a key of `COLOURS`."""
    shape: str
    """One of `SHAPES`."""
    background: str
    """Background colour, a key of `BACKGROUNDS`."""
    motion: str
    """One of `MOTIONS` (`still` for standing still)."""
    size: int
    """Object size in pixels, 10–20."""
    speed: float
    """Pixels per frame along the direction of motion; 0 when standing still."""
    x: float
    """Object centre at frame 0, pixels from the left edge (pixel i covers [i, i+1))."""
    y: float
    """Object centre at frame 0, pixels from the top edge."""
    seconds: float = 4.0
    """Clip length; the clip has `round(seconds · fps)` frames."""
    fps: float = 8.0
    """Frames per second."""
    width: int = 64
    """Frame width in pixels."""
    height: int = 64
    """Frame height in pixels."""

    def __post_init__(self) -> None:
        _check_name("colour", self.colour, COLOURS)
        _check_name("shape", self.shape, SHAPES)
        _check_name("background", self.background, BACKGROUNDS)
        _check_name("motion", self.motion, MOTIONS)
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ConfigError(f"object size {self.size} px is outside {MIN_SIZE}–{MAX_SIZE} px")
        if self.width < 2 * MAX_SIZE or self.height < 2 * MAX_SIZE:
            raise ConfigError(f"frame {self.width}x{self.height} is too small: the toy world needs at least {2 * MAX_SIZE} px a side")
        if self.fps <= 0 or not math.isfinite(self.fps):
            raise ConfigError(f"fps must be positive, got {self.fps}")
        if self.seconds <= 0 or not math.isfinite(self.seconds) or self.num_frames < 1:
            raise ConfigError(f"{self.seconds} s at {self.fps} fps gives no frames; use a longer clip")
        if self.speed < 0 or (self.motion == "still") != (self.speed == 0):
            raise ConfigError(f"speed {self.speed} does not fit motion '{self.motion}' (0 exactly when standing still)")

    @property
    def num_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def combo(self) -> Combo:
        return (self.colour, self.shape, self.background)

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background, self.motion)

    def attributes(self) -> dict[str, str]:
        """The four attributes a caption names (what `parse_caption` returns)."""
        return {"colour": self.colour, "shape": self.shape, "background": self.background, "motion": self.motion}

    def to_dict(self) -> dict:
        return asdict(self)

    def centre(self, t: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Object centre `(x, y)` at frame(s) `t`, wrapped into the frame."""
        vx, vy = VELOCITY[self.motion]
        t = np.asarray(t, dtype=np.float64)
        return (self.x + t * self.speed * vx) % self.width, (self.y + t * self.speed * vy) % self.height


def _check_name(what: str, value: str, allowed: Iterable[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {what} '{value}': use one of {', '.join(allowed)}")


def caption(colour: str, shape: str, background: str, motion: str) -> str:
    """The caption for these attributes, exactly as the grammar says."""
    if motion == "still":
        return f"a {colour} {shape} standing still on a {background} background"
    return f"a {colour} {shape} moving {motion} on a {background} background"


_CAPTION = re.compile(r"a (\w+) (\w+) (?:moving (\w+)|standing still) on a (\w+) background")


def parse_caption(text: str) -> dict[str, str]:
    """Inverse of `caption`: `{"colour", "shape", "background", "motion"}`.

    Case, surrounding spaces, repeated spaces and one trailing full stop are forgiven; anything
    else that does not follow the grammar is a `ConfigError`.
    """
    norm = " ".join(str(text).strip().lower().split()).removesuffix(".")
    m = _CAPTION.fullmatch(norm)
    if m is None:
        raise ConfigError(
            f"caption '{text}' is not in the toy grammar: write 'a <colour> <shape> moving <left|right|up|down> "
            "on a <background> background' or 'a <colour> <shape> standing still on a <background> background'"
        )
    colour, shape, direction, background = m.groups()
    motion = direction or "still"
    for what, value, allowed in (
        ("colour", colour, COLOURS),
        ("shape", shape, SHAPES),
        ("direction", motion, MOTIONS if direction is None else DIRECTIONS),
        ("background", background, BACKGROUNDS),
    ):
        if value not in allowed:
            raise ConfigError(f"caption '{text}': unknown {what} '{value}', use one of {', '.join(allowed)}")
    return {"colour": colour, "shape": shape, "background": background, "motion": motion}


def all_combos() -> list[Combo]:
    """Every (colour, shape, background), in a fixed order (8 × 3 × 4 = 96)."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]


def parse_combos(items: str | Iterable[str], flag: str = "--exclude-combos") -> set[Combo]:
    """Combos from text like ``red:circle:navy,blue:*:gray``; `*` stands for every value.

    Items may be given as one comma-separated string or as several strings.
    """
    if isinstance(items, str):
        items = [items]
    out: set[Combo] = set()
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            fields = [f.strip().lower() for f in part.split(":")]
            if len(fields) != 3:
                raise ConfigError(f"{flag} '{part}': write colour:shape:background, e.g. red:circle:navy (* for any)")
            choices = []
            for what, value, allowed in zip(("colour", "shape", "background"), fields, (COLOURS, SHAPES, BACKGROUNDS), strict=True):
                if value == "*":
                    choices.append(list(allowed))
                elif value in allowed:
                    choices.append([value])
                else:
                    raise ConfigError(f"{flag} '{part}': unknown {what} '{value}', use one of {', '.join(allowed)} or *")
            out.update((c, s, b) for c in choices[0] for s in choices[1] for b in choices[2])
    return out


def sample_spec(
    rng: np.random.Generator,
    exclude: Iterable[Combo] | None = None,
    *,
    seconds: float = 4.0,
    fps: float = 8.0,
    width: int = 64,
    height: int = 64,
) -> ClipSpec:
    """Draw a clip from the toy world, never one whose (colour, shape, background) is in `exclude`.

    The draws happen in a fixed order (combo, motion, size, speed, x, y) so a seed always gives the
    same spec. Speed and start position are rounded to 0.01 so metadata.jsonl reproduces them.
    """
    excluded = set(exclude or ())
    allowed = [c for c in all_combos() if c not in excluded]
    if not allowed:
        raise ConfigError("every colour × shape × background combination is excluded; nothing left to render")
    colour, shape, background = allowed[int(rng.integers(len(allowed)))]
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    return _placed((colour, shape, background), motion, rng, seconds=seconds, fps=fps, width=width, height=height)


def _placed(combo: Combo, motion: str, rng: np.random.Generator, *, seconds: float, fps: float, width: int, height: int) -> ClipSpec:
    """`combo` moving as `motion`, with size, speed and start position drawn in that order."""
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    speed = round(float(rng.uniform(MIN_SPEED, MAX_SPEED)), 2)
    x = round(float(rng.uniform(0, width)), 2)
    y = round(float(rng.uniform(0, height)), 2)
    colour, shape, background = combo
    return ClipSpec(
        colour=colour, shape=shape, background=background, motion=motion, size=size,
        speed=0.0 if motion == "still" else speed, x=x, y=y,
        seconds=seconds, fps=fps, width=width, height=height,
    )  # fmt: skip


def spec_for_caption(
    text: str, rng: np.random.Generator, *, seconds: float = 4.0, fps: float = 8.0, width: int = 64, height: int = 64
) -> ClipSpec:
    """A clip that fits `text` (toy grammar), with size, speed and start position drawn as
    `sample_spec` draws them."""
    a = parse_caption(text)
    return _placed((a["colour"], a["shape"], a["background"]), a["motion"], rng, seconds=seconds, fps=fps, width=width, height=height)


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Which pixel centres at offsets `(dx, dy)` from the object centre the shape covers.

    square: half-open [-s/2, s/2)² so exactly s × s pixels; circle: diameter s; triangle: pointing
    up, base s at the bottom, height s (half the bounding box).
    """
    h = size / 2.0
    if shape == "square":
        return (dx >= -h) & (dx < h) & (dy >= -h) & (dy < h)
    if shape == "circle":
        return dx * dx + dy * dy < h * h
    if shape == "triangle":
        return (dy >= -h) & (dy < h) & (np.abs(dx) < (dy + h) / 2.0)
    raise ConfigError(f"unknown shape '{shape}': use one of {', '.join(SHAPES)}")


def _render_frames(spec: ClipSpec, start: int, stop: int) -> np.ndarray:
    t = np.arange(start, stop, dtype=np.float64)
    cx, cy = spec.centre(t)  # (f,), (f,)
    px = np.arange(spec.width, dtype=np.float64) + 0.5
    py = np.arange(spec.height, dtype=np.float64) + 0.5
    # Circular offsets from the centre, so the object wraps around the edges seamlessly.
    dx = (px[None, :] - cx[:, None] + spec.width / 2) % spec.width - spec.width / 2  # (f, W)
    dy = (py[None, :] - cy[:, None] + spec.height / 2) % spec.height - spec.height / 2  # (f, H)
    mask = shape_mask(spec.shape, dx[:, None, :], dy[:, :, None], spec.size)  # (f, H, W)
    frames = np.empty((stop - start, spec.height, spec.width, 3), dtype=np.uint8)  # (f, H, W, 3)
    frames[...] = np.array(BACKGROUNDS[spec.background], dtype=np.uint8)
    frames[mask] = np.array(COLOURS[spec.colour], dtype=np.uint8)
    return frames


def render_iter(spec: ClipSpec, chunk: int = 64) -> Iterator[np.ndarray]:
    """Yield the clip as uint8 chunks `(f, H, W, 3)` of at most `chunk` frames, so a 60 s clip is
    streamed to the encoder without holding it whole."""
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1 frame, got {chunk}")
    for start in range(0, spec.num_frames, chunk):
        yield _render_frames(spec, start, min(start + chunk, spec.num_frames))


def render(spec: ClipSpec) -> np.ndarray:
    """The whole clip, uint8 `(F, H, W, 3)`; the same spec always gives the same bytes."""
    return _render_frames(spec, 0, spec.num_frames)
