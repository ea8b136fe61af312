"""Sample videos during training (`--sample-every`), rendered by `semgen generate`'s own code.

Both samplers are the trainer's `on_checkpoint` callback: on rank 0, right after a checkpoint at
a sample step is saved, they call `semgen_cli.steps.generate.generate` on the run folder, which
loads that checkpoint's EMA weights (what `generate` would sample from it later) and writes each
video with its sidecar JSON into `RUN/samples/step-NNNNNNN/`. This module sits outside `steps/` so
that the trainers reach `generate` without one step importing another.

- stage 1 (`LatentSamples`, paper §3.2: stage 1 renders latents from a semantic plan): each
  held-out clip's own plan, its extracted semantic features (or VAE tokens for `--condition vae`)
  through the EMA compressor, normalised, saved as `ID.semantic.safetensors` (the format of
  `generate --save-semantics`) and rendered with `generate --semantic-from` and the clip's
  caption; stage 2 does not exist yet. A `--condition none` run renders from the caption alone.
- stage 2 (`SemanticSamples`, paper §3.3: text → plan → latents): the `--val-prompts` (else the
  held-out clips' captions) through this run and its latent run, `prompt.mp4` (or
  `prompt-000.mp4`, … for several).

The same seed (the run's) every time, so samples of successive checkpoints compare. The time a
sampling takes goes back to the trainer (`sample_seconds`, a metrics.jsonl row), the videos go to
the trackers, and the device memory is released after each.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from semgen_cli.reporting import NULL, Reporter

SAMPLES = "samples"
"""Folder of the run that holds the sample videos, one subfolder per checkpoint step."""


def file_stem(sample_id: str) -> str:
    """A sample id as a file name: its video suffix dropped, anything but letters, digits, ".", "-"
    and "_" replaced ("clips/a b.mp4" → "clips_a_b")."""
    import re

    stem = re.sub(r"\.(mp4|mov|mkv|webm|avi)$", "", sample_id, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".") or "clip"


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _render(prompts: list[str], out: Path, steps: int, seed: int, device: torch.device, **runs) -> list[Path]:
    """`semgen generate` for `prompts` into `out` (its naming for several); the mp4 paths."""
    from semgen_cli.steps.generate import GenerateConfig, generate

    cfg = GenerateConfig(prompts=prompts, out=str(out), semantic_steps=steps, latent_steps=steps, seed=seed, device=str(device), **runs)
    return [v.path for v in generate(cfg).videos]


class LatentSamples:
    """Stage 1's samples: `clips` are (id, caption, condition tokens (Ts, hs, ws, d) or None) of
    the held-out clips' training windows of `seconds`."""

    def __init__(self, run_dir: str | Path, clips: list[tuple[str, str, torch.Tensor | None]], seconds: float, steps: int,
                 seed: int, trackers=(), reporter: Reporter = NULL) -> None:
        self.run, self.clips, self.seconds, self.steps, self.seed = Path(run_dir), clips, seconds, steps, seed
        self.trackers, self.reporter = trackers, reporter

    @torch.no_grad()
    def __call__(self, step: int, ckpt: Path, model) -> dict[str, float]:
        from semgen_cli.io.shards import save_tensors_atomic
        from semgen_cli.runs import tensors_fingerprint

        t0 = time.perf_counter()
        device = next(model.parameters()).device
        folder = self.run / SAMPLES / ckpt.name
        folder.mkdir(parents=True, exist_ok=True)
        plans = {}
        if model.compressor is not None:  # plans from the EMA compressor of this checkpoint, as generate reads it
            comp = model.compressor.eval()
            fingerprint = tensors_fingerprint(comp.state_dict(), "compressor:")
            for cid, _, tokens in self.clips:
                _, mean, _ = comp(tokens.to(device).float())
                plans[cid] = folder / f"{file_stem(cid)}.semantic.safetensors"
                save_tensors_atomic(plans[cid], {"semantic": comp.normalize(mean).float().cpu()},
                                    metadata={"compressor_fingerprint": fingerprint, "seconds": repr(self.seconds)})
        model.cpu()  # generate loads its own copy of these weights
        _release(device)
        for cid, caption, _ in self.clips:
            plan = plans.get(cid)
            mp4 = _render([caption], folder / f"{file_stem(cid)}.mp4", self.steps, self.seed, device, latent_run=str(self.run),
                          semantic_from=str(plan) if plan else None, seconds=self.seconds)[0]
            _release(device)
            self.reporter.info(f"sample: {mp4} ({caption})")
            for tracker in self.trackers:
                tracker.log_video(file_stem(cid), mp4, step, caption)
        return {"sample_seconds": time.perf_counter() - t0}


class SemanticSamples:
    """Stage 2's samples: `prompts` through this run and `latent_run`, the semantic run's length."""

    def __init__(self, run_dir: str | Path, latent_run: str | Path, prompts: list[str], steps: int, seed: int, trackers=(),
                 reporter: Reporter = NULL) -> None:
        self.run, self.latent_run, self.prompts, self.steps, self.seed = Path(run_dir), Path(latent_run), prompts, steps, seed
        self.trackers, self.reporter = trackers, reporter

    @torch.no_grad()
    def __call__(self, step: int, ckpt: Path, model) -> dict[str, float]:
        t0 = time.perf_counter()
        device = next(model.parameters()).device
        model.cpu()  # generate loads its own copy of these weights
        _release(device)
        folder = self.run / SAMPLES / ckpt.name
        folder.mkdir(parents=True, exist_ok=True)
        paths = _render(self.prompts, folder / "prompt.mp4", self.steps, self.seed, device,
                        latent_run=str(self.latent_run), semantic_run=str(self.run))
        _release(device)
        for i, (prompt, mp4) in enumerate(zip(self.prompts, paths, strict=True)):
            self.reporter.info(f"sample: {mp4} ({prompt})")
            for tracker in self.trackers:
                tracker.log_video(f"prompt-{i:03d}", mp4, step, prompt)
        return {"sample_seconds": time.perf_counter() - t0}
