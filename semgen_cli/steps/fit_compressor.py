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
of tokens, the VAE latents are cut into the semantic tokens' own grid and rate (:class:`VaeLayout`):
one condition token per semantic token, holding the latents of the same time span and image cell,
flattened (docs/baselines.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import torch

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.io.shards import Dataset, write_json_atomic
from semgen_cli.reporting import NULL, Reporter

FEATURES = ("semantic", "vae")


@dataclass(frozen=True)
class VaeLayout:
    """VAE latents as tokens on the semantic tokens' grid and rate (the Fig. 9 ablation's input).

    Semantic token j covers latent frames ``[j·ρ, (j+1)·ρ)`` (ρ = `latents_per_token`, the span
    stage 1's training windows align to) and one cell of an ``hs × ws`` grid over the whole
    frame. Its VAE counterpart is that block of the latents, area-resampled to ``cell`` = (r, a, b)
    = (⌈ρ⌉, ⌈h/hs⌉, ⌈w/ws⌉) latent frames × rows × columns and flattened to ``C·r·a·b`` channels:
    where ρ, h/hs and w/ws are whole numbers this is an exact space-to-depth (nothing pooled
    away), and the MLP compresses it as it compresses a semantic feature. A last token that runs
    past the clip's end (the semantic encoder pads its last temporal patch) reads the last frames."""

    grid: tuple[int, int]
    """(hs, ws) of the semantic tokens."""
    cell: tuple[int, int, int]
    """(r, a, b): latent frames, rows and columns resampled into one token."""
    latents_per_token: Fraction
    """ρ: latent frames one semantic token spans."""

    @property
    def dim(self) -> int:
        """Channels of a token for C latent channels is C · dim."""
        return math.prod(self.cell)

    @classmethod
    def of_data(cls, data: Dataset) -> "VaeLayout":
        """The layout of a shard folder: its semantic grid and rates, its latent size."""
        from semgen_cli.steps.train_latent import latents_per_token

        fields, p, comps = data.fields, data.producer, data.components
        try:
            hs, ws = (int(v) for v in fields["semantic"]["shape"][1:3])
            h, w = (int(v) for v in fields["latents"]["shape"][2:4])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{data.root}: index.json lists no semantic and latent field shapes; extract the data again") from None
        rho = latents_per_token(float(p["fps"]), float(p["semantic_fps"]), int(comps.get("semantic", {}).get("temporal_patch", 2)),
                                int(comps.get("vae", {}).get("temporal_stride", 4)))
        return cls((hs, ws), (math.ceil(rho), -(-h // hs), -(-w // ws)), rho)

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "cell": list(self.cell), "latents_per_token": str(self.latents_per_token)}

    @classmethod
    def from_dict(cls, d: dict) -> "VaeLayout":
        return cls(tuple(int(v) for v in d["grid"]), tuple(int(v) for v in d["cell"]), Fraction(d["latents_per_token"]))

    def tokens(self, latents: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """VAE latents (C, T, h, w) of a clip → its first `n_tokens` tokens (n_tokens, hs, ws, C·r·a·b)."""
        C, T, h, w = latents.shape
        (hs, ws), (r, a, b) = self.grid, self.cell
        # time: sub-frame m of token j = m // r spans [m·ρ/r, (m+1)·ρ/r) latent frames; weights = overlaps
        step = float(self.latents_per_token) / r
        lo = torch.arange(n_tokens * r, dtype=torch.float64)[:, None] * step  # (Ts·r, 1)
        k = torch.arange(T, dtype=torch.float64)[None]  # (1, T)
        weight = (torch.minimum(lo + step, k + 1) - torch.maximum(lo, k)).clamp_min(0)  # (Ts·r, T)
        weight[weight.sum(1) == 0, T - 1] = 1.0  # past the clip's end: its last frame
        weight = (weight / weight.sum(1, keepdim=True)).to(latents.dtype)
        x = torch.einsum("mk,ckhw->cmhw", weight, latents)  # (C, Ts·r, h, w)
        x = torch.nn.functional.adaptive_avg_pool2d(x, (hs * a, ws * b))  # (C, Ts·r, hs·a, ws·b)
        x = x.reshape(C, n_tokens, r, hs, a, ws, b).permute(1, 3, 5, 0, 2, 4, 6)  # (Ts, hs, ws, C, r, a, b)
        return x.reshape(n_tokens, hs, ws, C * r * a * b)


def feature_tokens(sample: dict, features: str, layout: VaeLayout | None = None, n_tokens: int | None = None) -> torch.Tensor:
    """The (T, h, w, d) tokens the compressor sees for one sample: its semantic features, or (with
    `layout` and the sample's `n_tokens` semantic tokens) its VAE latents on the same grid."""
    if features == "semantic":
        return sample["semantic"].float()
    return layout.tokens(sample["latents"].float(), n_tokens)


def sample_tokens(data: Dataset, i: int, features: str, layout: VaeLayout | None = None) -> torch.Tensor:
    """`feature_tokens` of sample `i` of `data`, loading only the field it needs."""
    if features == "semantic":
        return feature_tokens(data.load(i, ["semantic"]), features)
    return feature_tokens(data.load(i, ["latents"]), features, layout, int(data.records[i]["semantic_tokens_t"]))


def check_vae_layout(recorded: dict | None, data: Dataset, named: str) -> VaeLayout:
    """The layout `named` (a compressor or latent run) was made with, if `data` has the same one."""
    have = VaeLayout.of_data(data)
    if recorded is None:
        raise MismatchError(f"{named}: compresses VAE latents without a recorded token layout; fit it again with `semgen fit-compressor --features vae`")
    want = VaeLayout.from_dict(recorded)
    if want != have:
        raise MismatchError(f"{named}: VAE tokens laid out as {want.to_dict()}, {data.root} gives {have.to_dict()}; use data extracted at the same sizes and rates")
    return want


@torch.no_grad()
def posterior_stats(compressor, data, features: str, layout: VaeLayout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (out_dim,) of the posterior means of every token of `data`
    (VAE tokens cut by `layout` for `features="vae"`), streamed sample by sample (float64 sums;
    no copy of the data set in memory)."""
    dev = compressor.stats_mean.device
    n, s1, s2 = 0, 0.0, 0.0
    for i in range(len(data)):
        _, mean, _ = compressor(sample_tokens(data, i, features, layout).to(dev))
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
        "compressor": comp_cfg.to_dict(),
        "features": cfg.features,
        "vae_layout": layout.to_dict() if layout else None,
        "settings": asdict(cfg),
        "train": train_cfg.to_dict(),
        "data": {"path": str(Path(cfg.data).resolve()), "components": data.components, "producer": data.producer, "fields": data.fields},
    }
    write_json_atomic(out / "config.json", config)
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
    write_json_atomic(out / "config.json", config)
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


def load_compressor(run: str | Path, flag: str = "--compressor"):
    """(Compressor in eval mode, its run config) from a fit-compressor run folder."""
    from semgen_cli.io.shards import check_file_record, load_tensors
    from semgen_cli.models.compressor import Compressor, CompressorConfig
    from semgen_cli.runs import read_run

    cfg = read_run(run, "fit-compressor", flag)
    weights = Path(run) / "compressor.safetensors"
    if not weights.is_file():
        raise InputError(f"{flag} {run}: no compressor.safetensors (the fit did not finish; rerun `semgen fit-compressor ... --resume`)")
    check_file_record(weights, (cfg.get("files") or {}).get("compressor.safetensors"))  # small: hashed in full
    state = load_tensors(weights)
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise InputError(f"{weights}: tensor {bad} holds NaN or inf; fit the compressor again")
    compressor = Compressor(CompressorConfig.from_dict(cfg["compressor"]))
    try:
        compressor.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{weights}: does not match its config.json ({str(err).splitlines()[0]})") from None
    return compressor.eval(), cfg
