"""`semgen fit-compressor`: fit the semantic compressor as a KL autoencoder.

Paper §3.2 "semantic representation compression": a lightweight MLP maps the semantic
encoder's features (d = 2048 for Qwen2.5-VL-3B) to a small Gaussian space (mean and variance,
dim 8 by default; 64 and "none" as ablations), regularised by a KL term. The paper trains it
jointly with the latent generator; this step gives it a good start, as a KL autoencoder on the
extracted features, so `train-latent` starts from a meaningful compressed space. It also stores
the per-channel mean/std of the compressed space (of the posterior mean), so the diffusion
models see a normalised space.

`--features vae` fits the same compressor on VAE latents instead of semantic features: the
compressed-VAE-space ablation of paper Fig. 9 ("keep the SemanticGen framework, only replace the
semantic encoder by the VAE encoder"). So that the ablation changes the space and not the number
of tokens, the VAE latents are cut into the semantic tokens' own grid and rate (`semgen_cli.tokens.VaeLayout`):
one condition token per semantic token, holding the latents of the same time span and image cell,
flattened (docs/baselines.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.io.shards import Dataset
from semgen_cli.reporting import NULL, Reporter
from semgen_cli.runs import RUN_VERSION, CompressorRun
from semgen_cli.tokens import VaeLayout, sample_tokens

FEATURES = ("semantic", "vae")


@dataclass
class FitCompressorConfig:
    data: str
    """Shard folder from `semgen extract`."""
    out: str = "runs/compressor"
    dim: int | None = 8
    """Compressed width; None ("none") keeps the raw features (paper ablation)."""
    hidden: int = 512
    kl_weight: float = 1e-3
    features: str = "semantic"
    """What is compressed: semantic features, or VAE latents (the Fig. 9 ablation)."""
    tokens_per_sample: int = 256
    """Tokens drawn from each sample per batch item (samples differ in length)."""
    TRAIN_DEFAULTS = {"steps": 2000, "batch_size": 16, "lr": 1e-3, "schedule": "cosine", "ema_decay": 0.0, "save_every": 1000, "keep_last": 2}  # TrainConfig fields where fit-compressor's differ (not a field)

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ConfigError(f"--features must be one of {', '.join(FEATURES)}, got {self.features!r}")
        if self.tokens_per_sample < 1:
            raise ConfigError(f"--tokens-per-sample must be positive, got {self.tokens_per_sample}")


class TokenDataset(torch.utils.data.Dataset):
    """Item = `tokens_per_sample` random feature tokens of one sample, drawn with the trainer's seed."""

    takes_seed = True

    def __init__(self, data: Dataset, features: str, tokens: int, layout: VaeLayout | None = None) -> None:
        self.data, self.features, self.tokens, self.layout = data, features, tokens, layout

    def __len__(self) -> int:
        return len(self.data)

    def sample_id(self, key) -> str:
        """The id of the sample behind a training key (named when its data is not finite)."""
        return self.data.records[key.index]["id"]

    def __getitem__(self, key) -> torch.Tensor:
        x = sample_tokens(self.data, key.index, self.features, self.layout)
        flat = x.reshape(-1, x.shape[-1])  # (N, d)
        g = torch.Generator().manual_seed(int(key.seed))
        return flat[torch.randint(0, flat.shape[0], (self.tokens,), generator=g)]  # (tokens, d)


class _AutoencoderStep(torch.nn.Module):
    def __init__(self, compressor) -> None:
        super().__init__()
        self.compressor = compressor

    def forward(self, batch: torch.Tensor, generator: torch.Generator):
        return self.compressor.autoencoder_loss(batch)


def fit_compressor(cfg: FitCompressorConfig, train_cfg, resume: bool = False, reporter: Reporter = NULL, resume_hint: str | None = None, allow_new_data: bool = False, monitor=None) -> dict:
    """Fit (or, for dim none, only measure) the compressor; returns the written config
    (with `interrupted: True` and no compressor.safetensors written when Ctrl-C stopped it)."""
    from semgen_cli.io.lock import hold
    from semgen_cli.runs import check_same_data

    with hold(cfg.out, "run folder"):
        if resume:
            check_same_data(cfg.out, cfg.data, allow_new_data)
        return _fit_compressor(cfg, train_cfg, resume, reporter, resume_hint, monitor)


def _fit_compressor(cfg: FitCompressorConfig, train_cfg, resume: bool, reporter: Reporter, resume_hint: str | None, monitor=None) -> dict:
    from semgen_cli.models.compressor import Compressor, CompressorConfig
    from semgen_cli.runs import tensors_fingerprint
    from semgen_cli.training import check_run_dir, load_checkpoint_weights, train

    data = Dataset(cfg.data)
    if not len(data):
        raise InputError(f"{cfg.data}: the data set has no samples")
    layout = VaeLayout.of_data(data) if cfg.features == "vae" else None
    in_dim = int(sample_tokens(data, 0, cfg.features, layout).shape[-1])
    comp_cfg = CompressorConfig(in_dim=in_dim, dim=cfg.dim, hidden=cfg.hidden, kl_weight=cfg.kl_weight)
    out = Path(cfg.out)
    check_run_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "step": "fit-compressor",
        "version": RUN_VERSION,
        "compressor": comp_cfg.to_dict(),
        "features": cfg.features,
        "vae_layout": layout.to_dict() if layout else None,
        "settings": asdict(cfg),
        "train": train_cfg.to_dict(),
        "data": {"path": str(Path(cfg.data).resolve()), "components": data.components, "producer": data.producer, "fields": data.fields},
    }
    CompressorRun.write(config, out)
    torch.manual_seed(train_cfg.seed)
    compressor = Compressor(comp_cfg)
    if comp_cfg.dim is not None:
        from semgen_cli.tracking import open_trackers  # --report-to (checked in MonitorConfig, before anything is written)

        with open_trackers(monitor.report_to if monitor else (), out, config, resume) as trackers:
            result = train(_AutoencoderStep(compressor), TokenDataset(data, cfg.features, cfg.tokens_per_sample, layout), torch.stack,
                           lambda m, b, g: m(b, g), train_cfg, out, resume=resume, reporter=reporter, resume_hint=resume_hint, trackers=trackers)
        if result.interrupted:  # the fit is not finished: no compressor.safetensors from it
            return {**config, "interrupted": True, "steps_trained": result.step}
        state = load_checkpoint_weights(out, which="ema" if train_cfg.ema_decay > 0 else "model")
        compressor.load_state_dict({k[len("compressor."):]: v for k, v in state.items()})
        config["final_loss"] = result.loss if result.loss is not None else _last_logged_loss(out / "metrics.jsonl", result.step)
        config["steps_trained"] = result.step
    compressor.eval()
    # statistics of the compressed space (posterior means) over every sample
    reporter.start("stats", total=len(data), unit="samples")
    zs = []
    with torch.no_grad():
        for i in range(len(data)):
            _, mean, _ = compressor(sample_tokens(data, i, cfg.features, layout))
            zs.append(mean.reshape(-1, comp_cfg.out_dim))
            reporter.advance("stats")
    reporter.finish("stats")
    mean, std = Compressor.stats_of(torch.cat(zs))
    compressor.set_stats(mean, std)
    from semgen_cli.io.shards import file_record, save_tensors_atomic

    state = compressor.state_dict()
    save_tensors_atomic(out / "compressor.safetensors", state)
    config["files"] = {"compressor.safetensors": file_record(out / "compressor.safetensors")}
    config["fingerprint"] = tensors_fingerprint(state, "compressor:")
    config["stats"] = {"mean": mean.tolist(), "std": std.tolist()}
    CompressorRun.write(config, out)
    return config


def _last_logged_loss(metrics, step: int) -> float | None:
    """The loss metrics.jsonl logged for `step` (a resumed run that had nothing left to train)."""
    import json

    loss = None
    if Path(metrics).is_file():
        for line in Path(metrics).read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step") == step:
                loss = rec.get("loss")
    return loss
