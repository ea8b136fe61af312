"""Does a stage-2 plan move the object the way the prompt says? Checked on the plan itself, without
stage 1 or the VAE, against the plans of rendered toy clips.

    python examples/toy/diagnostics/plan_probe.py [--semantic-run RUN --latent-run RUN] [--seconds 20] [--cfg 5]

In a plan frame (a 4 × 4 grid of compressed semantic tokens on the toy world) the background
tokens are all alike and the object's tokens stand out. The object's position is the circular
centroid of each token's distance from the frame's median token (weights: the distance above the
median; circular, because the toy world wraps around). A step between two plan frames counts as
*forward* when the object moved along the prompt's direction (for `still`: less than a quarter of
a cell). The `rendered` row scores the plans of rendered clips the same way: when it is near 1, a
low score for sampled plans is the plan's fault, not the probe's.

A second score tells a wrong direction from jitter: a plan goes the *right way* when its mean step
points along the prompt's direction (for `still`: is under a quarter of a cell). Plans that move
steadily the wrong way score low on both; plans that jitter along the right path score low on
forward steps only.

`--text-band` asks where along the noise scale the prompt decides the direction: each rendered
clip's plan is noised to level t, and stage 2's one-step estimate of the clean plan (z_t - t·v)
is scored with the clip's own caption and with the opposite direction's caption. Where the two
agree the model follows its input; where the caption flips the estimate, the caption decides.
Training steps at those t are what teach the direction (`train-semantic --shift`).

Prompts: the 24 built-in ones of `semgen toy-eval`, prompt i with seed `--seed` + i as there. Reference clips: `sample_spec(default_rng(
[888, i]))` rendered at 8 fps and read through the same path as `semgen generate --semantic-from`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

QUARTER_CELL = 0.25  # of a grid cell: below this a still object counts as still
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
BAND = (0.5, 0.7, 0.8, 0.9, 0.95)


def locate(plan):
    """Object position per plan frame: (Ts, hs, ws, c) → (Ts, 2) (x, y) in grid cells, circular."""
    import torch

    T, hs, ws, _ = plan.shape
    flat = plan.float().reshape(T, hs * ws, -1)
    d = (flat - flat.median(1, keepdim=True).values).norm(dim=-1)  # (T, hs*ws) distance from background
    w = (d - d.median(1, keepdim=True).values).clamp_min(0).reshape(T, hs, ws)

    def circular(weights, n):  # (T, n) → (T,) centroid on a ring of n cells
        ang = (torch.arange(n) + 0.5) * 2 * torch.pi / n
        a = torch.atan2((weights * ang.sin()).sum(1), (weights * ang.cos()).sum(1))
        return (a % (2 * torch.pi)) / (2 * torch.pi) * n - 0.5

    return torch.stack([circular(w.sum(1), ws), circular(w.sum(2), hs)], 1)


def forward_steps(pos, motion: str, grid: tuple[int, int]) -> np.ndarray:
    """Per step between plan frames: 1 when the object moved as `motion` says, else 0."""
    from semgen_cli.toy.world import VELOCITY

    pos = pos.numpy()
    size = np.array([grid[1], grid[0]], dtype=np.float64)  # (x, y) ring sizes
    step = (pos[1:] - pos[:-1] + size / 2) % size - size / 2  # circular displacement (Ts-1, 2)
    if motion == "still":
        return (np.abs(step).max(1) < QUARTER_CELL).astype(float)
    vx, vy = VELOCITY[motion]
    return (step[:, 0] * vx + step[:, 1] * vy > 0).astype(float)


def right_way(pos, motion: str, grid: tuple[int, int]) -> float:
    """1 when the plan's mean step goes along `motion` (still: stays under a quarter cell), else 0."""
    from semgen_cli.toy.world import VELOCITY

    pos = pos.numpy()
    size = np.array([grid[1], grid[0]], dtype=np.float64)
    mean = ((pos[1:] - pos[:-1] + size / 2) % size - size / 2).mean(0)  # (2,) mean circular step
    if motion == "still":
        return float(np.abs(mean).max() < QUARTER_CELL)
    vx, vy = VELOCITY[motion]
    return float(mean[0] * vx + mean[1] * vy > 0)


def _score_references(args, cfg, r, pipe, forward: dict, ways: dict, band: dict) -> None:
    """Score the plans of `args.references` rendered clips (and, with --text-band, one-step
    estimates of them noised) into `forward`, `ways` and `band`."""
    import torch

    from semgen_cli.io.video import write_video
    from semgen_cli.pipeline import Pipeline
    from semgen_cli.steps.generate import resolve
    from semgen_cli.toy.world import render, sample_spec

    grid = tuple(r.semantic_grid)
    with tempfile.TemporaryDirectory() as tmp:
        specs = [sample_spec(np.random.default_rng([888, i]), seconds=args.seconds, fps=r.fps, width=r.size[1], height=r.size[0])
                 for i in range(args.references)]
        paths = [write_video(Path(tmp) / f"ref-{i}.mp4", render(spec), fps=r.fps, crf=0, pix_fmt="yuv444p") for i, spec in enumerate(specs)]
        ref_cfg = replace(cfg, semantic_from=str(paths[0]), semantic_run=None)
        ref_pipe = Pipeline(ref_cfg, resolve(ref_cfg))
        for spec, path in zip(specs, paths, strict=True):
            plan = ref_pipe.plan_from_reference(str(path))  # (1, Ts, hs, ws, c)
            pos = locate(plan[0])
            forward.setdefault(spec.motion, []).append(float(forward_steps(pos, spec.motion, grid).mean()))
            ways.setdefault(spec.motion, []).append(right_way(pos, spec.motion, grid))
            if not (args.text_band and spec.motion in OPPOSITE):
                continue
            z0 = plan.permute(0, 4, 1, 2, 3)  # (1, c, Ts, hs, ws)
            k = len(band[BAND[0]]["true caption"])  # noise seed: this is the k-th moving reference
            eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(k))
            for t in BAND:
                zt = (1 - t) * z0 + t * eps
                for key, text in (("true caption", spec.caption), ("opposite caption", spec.caption.replace(spec.motion, OPPOSITE[spec.motion]))):
                    v = pipe.semantic_dit(zt, torch.tensor([t]), **pipe.text(text)[0])
                    est = (zt - t * v).permute(0, 2, 3, 4, 1)[0]
                    band[t][key].append(right_way(locate(est), spec.motion, grid))


def _print_report(out: dict, args, r, pipe) -> None:
    print(f"plan probe: {args.seconds:g} s, stage-2 run {r.semantic_run}, CFG {pipe.cfg.semantic_cfg:g}, seed {args.seed}")
    for key, what in (("forward_fraction", "plan steps that move the object as the caption says"),
                      ("right_way_fraction", "plans whose mean step goes the caption's way")):
        print(f"fraction of {what} (per motion, then all):")
        for kind, row in out[key].items():
            print(f"  {kind:9s} " + "  ".join(f"{m} {v:.3f}" for m, v in row.items() if v is not None))
    if args.text_band:
        print("one-step clean-plan estimates of noised rendered plans that move the clip's way, by noise level t:")
        for t, row in out["text_band"].items():
            print(f"  t {t:5s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if v is not None))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--semantic-run", help="train-semantic run (default: the bundled pipeline's)")
    p.add_argument("--latent-run", help="train-latent run (default: the bundled pipeline's)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--cfg", type=float, default=None, help="stage-2 CFG scale (default: generate's)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: generate's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    p.add_argument("--count", type=int, default=24, help="how many built-in prompts")
    p.add_argument("--references", type=int, default=8, help="rendered clips to check the probe on (0: none)")
    p.add_argument("--text-band", action="store_true", help="also score one-step clean-plan estimates of noised reference plans "
                   "under the true and the opposite caption (needs --references; moving clips only)")
    p.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = p.parse_args(argv)
    if args.text_band and args.references < 1:
        p.error("--text-band needs --references N (N >= 1)")

    import torch

    from semgen_cli.pipeline import Pipeline, initial_noise
    from semgen_cli.steps.generate import GenerateConfig, resolve
    from semgen_cli.toy.prompts import default_prompts
    from semgen_cli.toy.world import parse_caption

    prompts = default_prompts(args.count)
    kw = {k: v for k, v in (("semantic_cfg", args.cfg), ("semantic_steps", args.steps)) if v is not None}
    cfg = GenerateConfig(prompts=prompts, seconds=args.seconds, latent_run=args.latent_run, semantic_run=args.semantic_run, seed=args.seed, **kw)
    r = resolve(cfg)
    pipe = Pipeline(cfg, r)
    grid = tuple(r.semantic_grid)
    results: dict[str, dict[str, list[float]]] = {"sampled": {}, "rendered": {}}
    ways: dict[str, dict[str, list[float]]] = {"sampled": {}, "rendered": {}}
    band: dict[float, dict[str, list[float]]] = {t: {"true caption": [], "opposite caption": []} for t in BAND}
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):  # the same seed (seed + i) and draws as `semgen toy-eval`
            g, _, _ = initial_noise(r, int(args.seed) + i)
            cond, uncond = pipe.text(prompt)
            plan = pipe.plan_from_stage2(cond, uncond, g)[0]
            motion, pos = parse_caption(prompt)["motion"], locate(plan)
            results["sampled"].setdefault(motion, []).append(float(forward_steps(pos, motion, grid).mean()))
            ways["sampled"].setdefault(motion, []).append(right_way(pos, motion, grid))
        if args.references:  # the same Pipeline, reading plans from rendered clips (generate --semantic-from)
            _score_references(args, cfg, r, pipe, results["rendered"], ways["rendered"], band)

    def table(results):
        return {
            kind: {**{m: round(float(np.mean(v)), 3) for m, v in sorted(per.items())},
                   "all": round(float(np.mean([x for v in per.values() for x in v])), 3) if per else None}
            for kind, per in results.items()
        }

    out = {"seconds": args.seconds, "semantic_run": str(r.semantic_run), "cfg": pipe.cfg.semantic_cfg, "seed": args.seed,
           "prompts": len(prompts), "references": args.references,
           "forward_fraction": table(results), "right_way_fraction": table(ways)}
    if args.text_band:
        out["text_band"] = {str(t): {k: round(float(np.mean(v)), 3) if v else None for k, v in row.items()} for t, row in band.items()}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    _print_report(out, args, r, pipe)


if __name__ == "__main__":
    main()
