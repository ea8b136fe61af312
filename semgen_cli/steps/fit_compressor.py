"""`semgen fit-compressor`: fit the semantic compressor as a KL autoencoder.

Paper §3.2 "semantic representation compression": a lightweight MLP maps the semantic
encoder's features (d = 2048 for Qwen2.5-VL-3B) to a small Gaussian space (mean and variance,
dim 8 by default; 64 and "none" as ablations), regularised by a KL term. The paper trains it
jointly with the latent generator; this step gives it a good start, as a KL autoencoder on the
extracted features, so `train-latent` starts from a meaningful compressed space. It also stores
the per-channel mean/std of the compressed space (of the posterior mean), so the diffusion
models see a normalised space.

`--features vae` fits the same compressor on VAE latents patchified 2×2 (the compressed-VAE-space
ablation of paper Fig. 9) instead of semantic features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.io.shards import Dataset, write_json_atomic
from semgen_cli.reporting import NULL, Reporter

FEATURES = ("semantic", "vae")


def vae_tokens(latents: torch.Tensor) -> torch.Tensor:
    """VAE latents (C, T, h, w) → tokens (T, h/2, w/2, 4C): the 2×2 patches the DiT sees."""
    C, T, h, w = latents.shape
    x = latents[:, :, : h // 2 * 2, : w // 2 * 2].reshape(C, T, h // 2, 2, w // 2, 2)
    return x.permute(1, 2, 4, 0, 3, 5).reshape(T, h // 2, w // 2, C * 4)


def feature_tokens(sample: dict, features: str) -> torch.Tensor:
    """The (T, h, w, d) tokens the compressor sees for one sample."""
    return sample["semantic"].float() if features == "semantic" else vae_tokens(sample["latents"].float())


@torch.no_grad()
def posterior_stats(compressor, data, features: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (out_dim,) of the posterior means of every token of `data`,
    streamed sample by sample (float64 sums; no copy of the data set in memory)."""
    dev = compressor.stats_mean.device
    field = "semantic" if features == "semantic" else "latents"
    n, s1, s2 = 0, 0.0, 0.0
    for i in range(len(data)):
        _, mean, _ = compressor(feature_tokens(data.load(i, [field]), features).to(dev))
        z = mean.reshape(-1, mean.shape[-1]).double()  # (N, C)
        n, s1, s2 = n + z.shape[0], s1 + z.sum(0), s2 + z.square().sum(0)
    m = s1 / n
    return m.float(), (s2 / n - m.square()).clamp_min(0).sqrt().float()


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

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ConfigError(f"--features must be one of {', '.join(FEATURES)}, got {self.features!r}")
        if self.tokens_per_sample < 1:
            raise ConfigError(f"--tokens-per-sample must be positive, got {self.tokens_per_sample}")


class TokenDataset(torch.utils.data.Dataset):
    """Item = `tokens_per_sample` random feature tokens of one sample, drawn with the trainer's seed."""

    takes_seed = True

    def __init__(self, data: Dataset, features: str, tokens: int) -> None:
        self.data, self.features, self.tokens = data, features, tokens
        self.field = "semantic" if features == "semantic" else "latents"

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key) -> torch.Tensor:
        x = feature_tokens(self.data.load(key.index, [self.field]), self.features)
        flat = x.reshape(-1, x.shape[-1])  # (N, d)
        g = torch.Generator().manual_seed(int(key.seed))
        return flat[torch.randint(0, flat.shape[0], (self.tokens,), generator=g)]  # (tokens, d)


class _AutoencoderStep(torch.nn.Module):
    def __init__(self, compressor) -> None:
        super().__init__()
        self.compressor = compressor

    def forward(self, batch: torch.Tensor, generator: torch.Generator):
        return self.compressor.autoencoder_loss(batch)


def fit_compressor(cfg: FitCompressorConfig, train_cfg, resume: bool = False, reporter: Reporter = NULL, resume_hint: str | None = None) -> dict:
    """Fit (or, for dim none, only measure) the compressor; returns the written config."""
    from semgen_cli.models.compressor import Compressor, CompressorConfig
    from semgen_cli.runs import tensors_fingerprint
    from semgen_cli.training import check_run_dir, load_checkpoint_weights, train

    data = Dataset(cfg.data)
    if not len(data):
        raise InputError(f"{cfg.data}: the data set has no samples")
    field = "semantic" if cfg.features == "semantic" else "latents"
    in_dim = int(feature_tokens(data.load(0, [field]), cfg.features).shape[-1])
    comp_cfg = CompressorConfig(in_dim=in_dim, dim=cfg.dim, hidden=cfg.hidden, kl_weight=cfg.kl_weight)
    out = Path(cfg.out)
    check_run_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "step": "fit-compressor",
        "compressor": comp_cfg.to_dict(),
        "features": cfg.features,
        "settings": asdict(cfg),
        "train": train_cfg.to_dict(),
        "data": {"path": str(Path(cfg.data).resolve()), "components": data.components, "producer": data.producer, "fields": data.fields},
    }
    write_json_atomic(out / "config.json", config)
    torch.manual_seed(train_cfg.seed)
    compressor = Compressor(comp_cfg)
    if comp_cfg.dim is not None:
        result = train(_AutoencoderStep(compressor), TokenDataset(data, cfg.features, cfg.tokens_per_sample), torch.stack,
                       lambda m, b, g: m(b, g), train_cfg, out, resume=resume, reporter=reporter, resume_hint=resume_hint)
        state = load_checkpoint_weights(out, which="ema" if train_cfg.ema_decay > 0 else "model")
        compressor.load_state_dict({k[len("compressor."):]: v for k, v in state.items()})
        config["final_loss"] = result.loss
        config["steps_trained"] = result.step
    compressor.eval()
    # statistics of the compressed space (posterior means) over every sample
    reporter.start("stats", total=len(data), unit="samples")
    zs = []
    with torch.no_grad():
        for i in range(len(data)):
            _, mean, _ = compressor(feature_tokens(data.load(i, [field]), cfg.features))
            zs.append(mean.reshape(-1, comp_cfg.out_dim))
            reporter.advance("stats")
    reporter.finish("stats")
    mean, std = Compressor.stats_of(torch.cat(zs))
    compressor.set_stats(mean, std)
    from semgen_cli.io.shards import save_tensors_atomic

    state = compressor.state_dict()
    save_tensors_atomic(out / "compressor.safetensors", state)
    config["fingerprint"] = tensors_fingerprint(state, "compressor:")
    config["stats"] = {"mean": mean.tolist(), "std": std.tolist()}
    write_json_atomic(out / "config.json", config)
    return config


def load_compressor(run: str | Path, flag: str = "--compressor"):
    """(Compressor in eval mode, its run config) from a fit-compressor run folder."""
    from safetensors.torch import load_file

    from semgen_cli.models.compressor import Compressor, CompressorConfig
    from semgen_cli.runs import read_run

    cfg = read_run(run, "fit-compressor", flag)
    weights = Path(run) / "compressor.safetensors"
    if not weights.is_file():
        raise InputError(f"{flag} {run}: no compressor.safetensors (the fit did not finish; rerun `semgen fit-compressor ... --resume`)")
    compressor = Compressor(CompressorConfig.from_dict(cfg["compressor"]))
    try:
        compressor.load_state_dict(load_file(str(weights)))
    except RuntimeError as err:
        raise InputError(f"{weights}: does not match its config.json ({str(err).splitlines()[0]})") from None
    return compressor.eval(), cfg
