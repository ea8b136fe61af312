"""The compressor inside stage 1 (paper §3.2): where it comes from, what it must match, and the
statistics of its space while it trains.

`train-latent` conditions on compressed tokens: the compressor of `--compressor` (a
`fit-compressor` run), or with `--init RUN` and no `--compressor` the one that run ended with
(`compressor_of_run`). It must have been fitted on the features the run conditions on, from the
same encoder as the data (`condition_compressor`). Unless frozen it is fine-tuned jointly with the
DiT, and before every checkpoint the per-channel statistics of its space are recomputed and the
DiT's input projection re-expressed in the new units (:class:`CompressorStats`, docs/compressor.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from semgen_cli.errors import MismatchError
from semgen_cli.io.shards import Dataset
from semgen_cli.reporting import NULL, Reporter
from semgen_cli.runs import CompressorRun, LatentRun, differing_component
from semgen_cli.tokens import check_vae_layout, posterior_stats

if TYPE_CHECKING:
    from semgen_cli.steps.train_latent import LatentStep, TrainLatentConfig


class CompressorStats:
    """Before every checkpoint of a run that trains the compressor: the statistics of its space
    follow it. The per-channel mean/std of the posterior means are recomputed from the EMA
    compressor over the whole data set (`posterior_stats`, streamed) and stored in the model's
    and the EMA's compressor buffers, so the checkpoint's compressor and statistics agree; stage
    2 and `generate` read them from there.

    The DiT keeps its response to the compressed tokens: it saw ``(z - m0) / s0`` and will see
    ``(z - m1) / s1``, so its input projection is re-expressed in the new units,
    ``W' = W·diag(s1/s0)``, ``b' = b + W·(m1 - m0)/s0`` (exact for the tokens, model and EMA
    alike; only the σ-noise added in the normalised space changes scale with them)."""

    def __init__(self, data: Dataset, features: str, layout=None, reporter: Reporter = NULL) -> None:
        self.data, self.features, self.layout, self.reporter = data, features, layout, reporter

    @torch.no_grad()
    def __call__(self, model: "LatentStep", ema: dict[str, torch.Tensor] | None) -> None:
        import copy

        source = copy.deepcopy(model.compressor).eval()
        if ema is not None:
            source.load_state_dict({k[len("compressor."):]: v for k, v in ema.items() if k.startswith("compressor.")})
        mean, std = posterior_stats(source, self.data, self.features, self.layout)
        std = std.clamp_min(1e-6)
        live = dict(model.named_parameters(), **dict(model.named_buffers()))
        for state in (live,) if ema is None else (live, ema):
            m0, s0 = state["compressor.stats_mean"].clone(), state["compressor.stats_std"].clone()
            W, b = state["dit.semantic_embed.weight"], state["dit.semantic_embed.bias"]  # (D, C), (D,)
            m1, s1 = mean.to(m0), std.to(s0)
            b.add_((W.float() @ ((m1 - m0) / s0).float()).to(b.dtype))
            W.mul_((s1 / s0).to(W.dtype)[None, :])
            state["compressor.stats_mean"].copy_(m1)
            state["compressor.stats_std"].copy_(s1)
        self.reporter.info(f"compressor statistics recomputed: channel means {mean.min():+.3g}..{mean.max():+.3g}, stds {std.min():.3g}..{std.max():.3g}")


def compressor_of_run(run: LatentRun, flag: str = "--init"):
    """(compressor, a CompressorRun standing for the fit it came from, the run's sampling weights)
    of train-latent `run`: the compressor it ended with, standing in for --compressor when
    fine-tuning a run whose fit-compressor folder is not at hand (a bundle such as
    semgen_cli/assets/toy/runs/latent keeps only the runs). The record names the fit-compressor
    run the compressor came from, so the new run has the same lineage."""
    source = run.compressor_source
    if run.compressor is None or source is None:
        raise MismatchError(f"{flag} {run.path}: trained without a compressor (--condition none); pass --compressor")
    state = run.sampling_weights(flag)
    compressor, _ = run.load_compressor(state, flag)
    record = CompressorRun(step=CompressorRun.STEP, settings={}, data={"components": run.components}, compressor=run.compressor,
                           features=source["features"], vae_layout=run.vae_layout, fingerprint=source["fingerprint"], path=Path(source["path"]))
    return compressor, record, state


def condition_compressor(cfg: TrainLatentConfig, data: Dataset, resume: bool):
    """(compressor, the CompressorRun it stands for, the --init run's weights or None, VAE layout)
    of a run conditioned on semantic or VAE tokens; all None for --condition none."""
    if cfg.condition == "none":
        return None, None, None, None
    init_state, vae_layout = None, None
    if cfg.compressor:
        comp_run = CompressorRun.from_dir(cfg.compressor, "--compressor")
        compressor = comp_run.load()
    else:  # --init RUN without --compressor; a resumed run reads its own config (the init run may be gone)
        own = resume and (Path(cfg.out) / "checkpoints" / "latest").is_file()
        # the DiT starts from the same weights as the compressor: read once, kept for build_dit
        compressor, comp_run, init_state = compressor_of_run(LatentRun.from_dir(cfg.out, "--out") if own else LatentRun.from_dir(cfg.init, "--init"))
        if own:
            init_state = None  # resuming: the checkpoint holds the DiT's weights
    named = f"--compressor {cfg.compressor}" if cfg.compressor else f"the compressor of --init {cfg.init}"
    if comp_run.features != cfg.condition:
        raise MismatchError(f"{named}: fitted on {comp_run.features} features, but --condition is {cfg.condition}")
    diff = differing_component(("semantic" if cfg.condition == "semantic" else "vae",), comp_run.components, data.components)
    if diff is not None:
        role, want, have = diff
        raise MismatchError(f"{cfg.data}: {role} encoder {have} differs from {want} that {named} was fitted on; fit the compressor on this data")
    if cfg.condition == "vae":
        vae_layout = check_vae_layout(comp_run.vae_layout, data, named)
    compressor.train(not cfg.freeze_compressor)
    for param in compressor.parameters():
        param.requires_grad_(not cfg.freeze_compressor)
    if compressor.config.dim is not None:  # the decoder is fit-compressor's; no stage-1 loss reaches it (DDP would
        compressor.decoder.requires_grad_(False)  # stop on parameters that never get a gradient)
    return compressor, comp_run, init_state, vae_layout
