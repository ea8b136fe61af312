"""The toy world's evaluation prompts and the combinations the embedded default never saw.

`HELD_OUT` (colour, shape, background) combinations are excluded from the embedded default's
training data (`examples/toy/train_default.sh` passes them to `semgen toy-data
--exclude-combos`), so `semgen toy-eval` measures composition, not recall. Every colour, shape,
background and motion still appears in training, just never in these combinations.
"""

from __future__ import annotations

import numpy as np

from semgen_cli.toy.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, caption

HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "navy"),
    ("green", "circle", "brown"),
    ("blue", "square", "gray"),
    ("yellow", "triangle", "black"),
)


def held_out_flag() -> str:
    """The `--exclude-combos` value for `semgen toy-data`."""
    return ",".join(":".join(c) for c in HELD_OUT)


def default_prompts(count: int = 24, seed: int = 0) -> list[str]:
    """`count` prompts: every held-out combination (twice, with different motions) first, then
    seeded draws over all colours, shapes, backgrounds and motions of the seen combinations."""
    rng = np.random.default_rng(seed)
    motions = list(MOTIONS)
    prompts = []
    for rep in range(2):
        for i, (colour, shape, background) in enumerate(HELD_OUT):
            prompts.append(caption(colour, shape, background, motions[(i + 2 * rep) % len(motions)]))
    colours, shapes, backgrounds = list(COLOURS), list(SHAPES), list(BACKGROUNDS)
    while len(prompts) < count:
        combo = (str(rng.choice(colours)), str(rng.choice(shapes)), str(rng.choice(backgrounds)))
        p = caption(*combo, str(rng.choice(motions)))
        if p not in prompts and combo not in HELD_OUT:
            prompts.append(p)
    return prompts[:count]


def is_held_out(prompt: str) -> bool:
    from semgen_cli.toy.world import parse_caption

    a = parse_caption(prompt)
    return (a["colour"], a["shape"], a["background"]) in HELD_OUT
