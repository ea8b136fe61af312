"""`semgen train-latent`: stage 1, the latent generator (VAE latents | compressed semantics, text).

Paper §3.2 (stage 1: "generating VAE latents conditioned on semantic representations", with
in-context conditioning: the compressed semantic tokens are concatenated to the noisy latents,
and noise is added to them during training as in RAE) and §3.4 (shifted-window attention for
long videos). The compressor from `fit-compressor` is fine-tuned jointly with its KL term, as
the paper trains them together, unless `--freeze-compressor` (then it stays in eval mode); the
DiT sees the normalised posterior means plus RAE σ-noise, as at inference, and the statistics of
the compressed space are recomputed at every checkpoint (`CompressorStats`, docs/compressor.md).
The default swin window is the smallest in which every window, plain and shifted, of every video
holds a semantic frame at the data's rates (`smallest_window`); a `--window` that leaves windows
empty is refused. Baselines by flag:
`--condition none` is Base-CT (`--attention full`) / Base-CT-Swin (`--attention swin`), and
`--condition vae` conditions on compressed VAE latents instead of semantic features (Fig. 9),
laid out on the semantic tokens' grid and rate (`semgen_cli.tokens.VaeLayout`), so the two arms
see the same number of condition tokens at the same RoPE times.

Objective (DESIGN §2, `semgen_cli.flow`): rectified flow, `z_t = (1−t)·z0 + t·ε`, the DiT predicts
`ε − z0`; logit-normal t shifted by RAE's dimension rule (never below 1), or by Wan's own shift
when starting from Wan (`resolve_shift`); text dropped (zeroed) with probability `text_dropout` for
classifier-free guidance. Text reaches cross-attention as its real tokens with a mask, or, when
starting from Wan, the way Wan's pipeline feeds it: zero-padded to the text encoder's length
(512 UMT5 tokens) with no mask (`resolve_text`), so that a Wan-initialised model starts from
Wan's behaviour for a prompt; the run records which, and `generate` follows it. Not in the
paper: `--motion-weight α` weights each latent position's squared error by how much it changes
between frames (`motion_weights`), for small models that otherwise spend the loss on a still
background (0, the default: plain MSE). docs/method.md lists every such choice.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn as nn

from semgen_cli.components.text_encoder import pad_text
from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.flow import drop_text
from semgen_cli.geometry import ClipGeometry
from semgen_cli.io.shards import Dataset
from semgen_cli.reporting import NULL, Reporter
from semgen_cli.runs import RUN_VERSION, CompressorRun, LatentRun, differing_component
from semgen_cli.tokens import check_vae_layout, posterior_stats

CONDITIONS = ("semantic", "vae", "none")
TEXT_PADDINGS = ("mask", "wan")
WAN_SHIFT_480P, WAN_SHIFT_720P = 3.0, 5.0  # diffusers' Wan pipelines: flow_shift 3.0 for 480p, 5.0 for 720p


@dataclass
class TrainLatentConfig:
    data: str
    """Shard folder from `semgen extract`."""
    out: str = "runs/latent"
    compressor: str | None = None
    """fit-compressor run folder (required unless --condition none, or --init names a train-latent
    run: then that run's compressor is used)."""
    preset: str = "toy"
    """DiT size preset: tiny, toy, wan-1.3b, wan-14b."""
    attention: str = "swin"
    """full or swin (shifted windows along time, paper §3.4)."""
    window: int | None = None
    """Swin window T_w in latent frames (odd layers shift by T_w/2); None: the smallest window
    in which every window of every video, plain and shifted, holds a semantic frame at the
    data's rates (`smallest_window`), or the recorded one of the run --init names or --resume
    continues."""
    condition: str = "semantic"
    """semantic (SemanticGen), vae (compressed-VAE ablation), none (Base-CT baselines)."""
    freeze_compressor: bool = False
    clip_seconds: float | None = None
    """Training window; None: the shortest sample's length."""
    semantic_noise: float = 0.5
    """Maximum σ of the RAE-style noise z + σ·ε on the semantic tokens (σ ~ U[0, max])."""
    text_dropout: float = 0.1
    """Probability of dropping the text (zeroed) for classifier-free guidance."""
    shift: float | None = None
    """Timestep shift of training and sampling; None: `resolve_shift` (Wan's with --init wan:PATH,
    the init run's with --init RUN, else RAE's sqrt(elements / 4096) of one window, at least 1)."""
    text_padding: str | None = None
    """How captions reach cross-attention: "mask" (their real tokens and a mask) or "wan" (zero-padded
    to the text encoder's length, no mask, as Wan's pipeline does); None: "wan" with --init wan:PATH,
    the init run's with --init RUN, else "mask"."""
    motion_weight: float = 0.0
    """Weight of the moving parts of a clip in the loss: each latent position's squared error is
    weighted 1 + α·m, m its latent change into and out of that frame relative to the batch mean
    (`motion_weights`); 0: the plain mean."""
    init: str | None = None
    """wan:PATH to start the DiT from Wan2.1 weights (diffusers WanTransformer3DModel folder), or a
    train-latent run folder to fine-tune (its EMA DiT; e.g. on the latents of a new VAE)."""
    gradient_checkpointing: bool = False
    attention_backend: str = "auto"
    """SDPA kernel (`semgen_cli.models.acceleration`): auto, flash, cudnn, efficient, math."""
    compile: bool = False
    """torch.compile each DiT block (regional compilation)."""
    patch: tuple[int, int, int] | None = None
    """DiT patch (t, h, w); None: the preset's (1, 2, 2). With --init RUN of a coarser patch the
    run's weights are resized to it (`semgen_cli.models.dit.resize_patch`)."""
    lora_rank: int | None = None
    """Train LoRA adapters of this rank on the --init DiT's block projections (`semgen_cli.lora`)
    instead of the whole DiT; the semantic input layers and the compressor train fully."""
    lora_alpha: float | None = None
    """LoRA scale α (None: the rank)."""
    lora_targets: str | None = None
    """Comma-separated block layers to adapt (None: `lora.DEFAULT_TARGETS`, attention and FFN)."""

    def __post_init__(self) -> None:
        from semgen_cli.models.acceleration import check_attention_backend

        check_attention_backend(self.attention_backend)  # flash/cudnn/efficient need CUDA: refused before anything runs
        if self.condition not in CONDITIONS:
            raise ConfigError(f"--condition must be one of {', '.join(CONDITIONS)}, got {self.condition!r}")
        if self.condition != "none" and not self.compressor and not self.init_run:
            raise ConfigError(f"--compressor is required with --condition {self.condition} (run `semgen fit-compressor` first, "
                              "or --init a train-latent run to reuse its compressor)")
        if self.attention not in ("full", "swin"):
            raise ConfigError(f"--attention must be full or swin, got {self.attention!r}")
        if self.window is not None and self.window < 2:
            raise ConfigError(f"--window must be at least 2 latent frames, got {self.window}")
        if self.clip_seconds is not None and self.clip_seconds <= 0:
            raise ConfigError(f"--clip-seconds must be positive, got {self.clip_seconds}")
        if not 0 <= self.text_dropout < 1:
            raise ConfigError(f"--text-dropout must be in [0, 1), got {self.text_dropout}")
        if not (0 <= self.motion_weight < float("inf")):
            raise ConfigError(f"--motion-weight must be a finite number >= 0, got {self.motion_weight}")
        if self.semantic_noise < 0:
            raise ConfigError(f"--semantic-noise must be >= 0, got {self.semantic_noise}")
        if self.shift is not None and not (0 < self.shift < float("inf")):
            raise ConfigError(f"--shift must be a positive number, got {self.shift}")
        if self.text_padding not in (None, *TEXT_PADDINGS):
            raise ConfigError(f"--text-padding must be one of {', '.join(TEXT_PADDINGS)}, got {self.text_padding!r}")
        self._check_patch_and_init()

    def _check_patch_and_init(self) -> None:
        if self.patch is not None:
            self.patch = tuple(int(x) for x in self.patch)
            if len(self.patch) != 3 or min(self.patch) < 1:
                raise ConfigError(f"--patch must be three positive integers T,H,W, got {','.join(map(str, self.patch))}")
            if self.init and self.init.startswith("wan:"):
                raise ConfigError("--patch cannot be combined with --init wan:PATH (Wan's patch is fixed)")
        if self.init is not None and not self.init.strip():
            raise ConfigError("--init: expected wan:PATH or a train-latent run folder, got an empty string")
        if self.lora_spec is not None and not self.init:
            raise ConfigError("--lora-rank needs --init wan:PATH or --init RUN: the base weights the adapters are trained on")

    @property
    def lora_spec(self):
        """The LoRA adapters --lora-rank asks for (None: the whole DiT trains)."""
        from semgen_cli.lora import LoraSpec

        return LoraSpec.from_flags(self.lora_rank, self.lora_alpha, self.lora_targets)

    @property
    def init_run(self) -> str | None:
        """The train-latent run --init names (None for wan:PATH or no --init)."""
        return self.init if self.init and not self.init.startswith("wan:") else None


def empty_windows(frames: int, geometry: ClipGeometry, window: int) -> int:
    """How many attention windows (plain and shifted, as `window_plan` cuts them) of a video of
    `frames` frames at the data's fps hold no semantic frame (`geometry`: the data's rates)."""
    from semgen_cli.models.attention import window_ids

    seconds = frames / geometry.fps
    T = geometry.latent_frames(seconds)
    slots = geometry.semantic_times(geometry.semantic_tokens(seconds)).round().clamp(0, T - 1).long()
    empty = 0
    for shift in (0, window // 2 if T > window else 0):
        every = window_ids(torch.arange(T), T, window, shift).unique()
        empty += int((~torch.isin(every, window_ids(slots, T, window, shift))).sum())
    return empty


def window_gap(geometry: ClipGeometry, window: int, from_seconds: float) -> tuple[float, int] | None:
    """The shortest video, at least `from_seconds` long, with windows that hold no semantic frame:
    (its seconds, how many), or None when every length has a semantic frame in every window.

    Semantic frames repeat every `latents_per_token` latent frames (period p/q: q frames every p)
    and windows every `window`, so the pattern at the end of a video repeats every lcm(p, window)
    latent frames (a temporal stride of video frames each); two such periods past the shortest
    length cover them all."""
    first = max(1, round(from_seconds * geometry.fps))
    for frames in range(first, first + geometry.temporal_stride * (2 * math.lcm(geometry.period, window) + 2 * window) + 1):
        n = empty_windows(frames, geometry, window)
        if n:
            return frames / geometry.fps, n
    return None


def smallest_window(geometry: ClipGeometry, from_seconds: float, largest: int = 64) -> int:
    """The smallest swin window (latent frames) with a semantic frame in every window, plain and
    shifted, of every video at least `from_seconds` long at these rates (`window_gap`)."""
    for window in range(2, largest + 1):
        if window_gap(geometry, window, from_seconds) is None:
            return window
    raise ConfigError(f"no --window up to {largest} latent frames gives every window a semantic frame at {geometry.fps:g} fps and "
                      f"{geometry.semantic_fps:g} semantic fps; extract with a higher --semantic-fps")


def resolve_window(cfg: "TrainLatentConfig", geometry: ClipGeometry, seconds: float, recorded: int | None) -> int:
    """The swin window to train with: --window, else the recorded one (--init RUN, --resume),
    else `smallest_window`. A --window that leaves windows without a semantic frame is refused,
    unless it is the window the DiT was already trained with (`recorded`)."""
    if cfg.attention != "swin" or cfg.condition != "semantic":  # vae tokens sit on every latent frame
        return cfg.window or recorded or 4
    if cfg.window is None:
        return recorded or smallest_window(geometry, seconds)
    if cfg.window != recorded:
        gap = window_gap(geometry, cfg.window, seconds)
        if gap is not None:
            raise ConfigError(f"--window {cfg.window}: {gap[1]} windows of a {gap[0]:g} s video hold no semantic frame at {geometry.fps:g} fps "
                              f"and {geometry.semantic_fps:g} semantic fps; the smallest window that works is "
                              f"{smallest_window(geometry, seconds)} (leave --window out to use it)")
    return cfg.window


class LatentWindows(torch.utils.data.Dataset):
    """Training items: a window of `latents` latent frames and the semantic tokens of its span
    (with `vae_layout`, the clip's VAE latents on the semantic grid stand in for its semantic
    features: the compressed-VAE condition).

    Window starts are multiples of the alignment period (the smallest whole number of latent
    frames that spans a whole number of semantic tokens), so every item of a batch has the same
    semantic positions relative to its window, which swin attention needs.
    """

    takes_seed = True

    def __init__(self, data: Dataset, latents: int, tokens: int, fields: tuple[str, ...], vae_layout=None) -> None:
        geometry = ClipGeometry.of(data.producer, data.components)
        self.data, self.latents, self.tokens, self.fields, self.vae_layout = data, latents, tokens, fields, vae_layout
        self.ratio = geometry.latents_per_token
        self.period = geometry.period  # latent frames spanning ratio.denominator whole tokens
        self.index = [i for i, r in enumerate(data.records) if r["latent_frames"] >= latents and r["semantic_tokens_t"] >= tokens]
        if not self.index:
            longest = max((r["duration"] for r in data.records), default=0.0)
            raise ConfigError(f"{data.root}: no sample is as long as the training window (longest {longest:.2f} s); lower --clip-seconds")

    def __len__(self) -> int:
        return len(self.index)

    def sample_id(self, key) -> str:
        """The id of the sample behind a training key (named when its data is not finite)."""
        return self.data.records[self.index[key.index]]["id"]

    def __getitem__(self, key) -> dict:
        rec = self.data.records[self.index[key.index]]
        x = self.data.load(self.index[key.index], list(self.fields))
        T, Ts = rec["latent_frames"], rec["semantic_tokens_t"]
        if self.vae_layout is not None:  # tokens of the whole clip, cut below like semantic features
            x["semantic"] = self.vae_layout.tokens(x["latents"].float(), Ts)
        # window starts k0 = m·period with k0 + latents ≤ T and its tokens j0 + tokens ≤ Ts
        starts = [m for m in range(0, T - self.latents + 1, self.period) if int(Fraction(m) / self.ratio) + self.tokens <= Ts]
        g = torch.Generator().manual_seed(int(key.seed))
        k0 = starts[int(torch.randint(0, len(starts), (1,), generator=g))] if starts else 0
        out = {"latents": x["latents"][:, k0 : k0 + self.latents].float()}
        if "semantic" in x:
            j0 = int(Fraction(k0) / self.ratio)
            out["semantic"] = x["semantic"][j0 : j0 + self.tokens].float()
        if "text" in x:
            out["text"] = x["text"].float()
        return out


def collate(items: list[dict], text_length: int | None = None) -> dict:
    """Stack windows; pad text to the longest in the batch with a mask, or (`text_length`, Wan's
    way) to that many tokens without one."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "text"}
    if "text" in items[0]:
        text, mask = pad_text([it["text"] for it in items], text_length)
        batch["text"] = text
        if mask is not None:
            batch["text_mask"] = mask
    return batch


class LatentStep(nn.Module):
    """DiT + compressor as one module: `forward(batch, generator) → (loss, metrics)`."""

    def __init__(self, dit, compressor, cfg: TrainLatentConfig, semantic_times: torch.Tensor | None, shift: float) -> None:
        super().__init__()
        self.dit = dit
        self.compressor = compressor
        self.condition = cfg.condition
        self.semantic_noise = cfg.semantic_noise
        self.text_dropout = cfg.text_dropout
        self.shift = shift
        self.register_buffer("semantic_times", semantic_times if semantic_times is not None else torch.zeros(0), persistent=False)
        self.kl_weight = compressor.config.kl_weight if compressor is not None else 0.0
        self.motion_weight = cfg.motion_weight
        self.freeze_compressor = cfg.freeze_compressor

    def train(self, mode: bool = True) -> "LatentStep":
        """A frozen compressor stays in eval mode (no KL) whatever the trainer asks of the step."""
        super().train(mode)
        if self.compressor is not None and self.freeze_compressor:
            self.compressor.eval()
        return self

    def condition_tokens(self, batch: dict, generator: torch.Generator | None = None):
        """Compressed, normalised condition tokens (B, Ts, hs, ws, c) and their KL (`batch["semantic"]`
        holds semantic features, or VAE latents on the semantic grid with --condition vae).

        The tokens are the normalised posterior means, as stage 2 learns them and `generate`
        gives them to stage 1 (the RAE σ-noise that `forward` adds stands in for sampling); the
        KL of the posterior is the compressor's loss term when it is trained jointly."""
        _, mean, logvar = self.compressor(batch["semantic"])
        kl = self.compressor.kl(mean, logvar) if self.compressor.training and self.compressor.config.dim is not None else mean.new_zeros(())
        return self.compressor.normalize(mean), kl

    def forward(self, batch: dict, generator: torch.Generator):
        from semgen_cli.flow import flow_loss, noise_condition, sample_timesteps

        z0 = batch["latents"]  # (B, C, T, h, w)
        B, dev = z0.shape[0], z0.device
        text, mask = drop_text(batch["text"], batch.get("text_mask"), self.text_dropout, generator)
        cond: dict = {"text": text, "text_mask": mask}
        kl = z0.new_zeros(())
        if self.condition != "none":
            sem, kl = self.condition_tokens(batch, generator)
            sem, sigma = noise_condition(sem, self.semantic_noise, generator)
            cond.update(semantic=sem, semantic_sigma=sigma, semantic_times=self.semantic_times if self.semantic_times.numel() else None)
        t = sample_timesteps(B, generator=generator, shift=self.shift, device=generator.device).to(dev)
        eps = torch.randn(z0.shape, generator=generator, device=generator.device).to(dev)
        metrics: dict = {}
        mse = flow_loss(self.dit, z0, t, eps, motion_weight=self.motion_weight, metrics=metrics, **cond)
        loss = mse + self.kl_weight * kl
        return loss, {**metrics, "kl": float(kl.detach())}


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


def build_dit(cfg: TrainLatentConfig, in_channels: int, text_dim: int, semantic_dim: int, compressor=None, compressor_fingerprint: str | None = None, load_init: bool = True, init_state=None):
    from semgen_cli.models.dit import DiT
    from semgen_cli.models.presets import preset

    extra = {"patch": cfg.patch} if cfg.patch else {}
    dit_cfg = preset(cfg.preset, in_channels=in_channels, text_dim=text_dim, semantic_dim=semantic_dim, attention=cfg.attention, window=cfg.window, **extra)
    if cfg.init_run:
        dit = DiT(dit_cfg)
        if load_init:  # not when resuming: the checkpoint holds the weights
            # without --compressor the compressor already is the init run's (compressor_of_run)
            LatentRun.from_dir(cfg.init, "--init").init_weights(dit, compressor_fingerprint, compressor if cfg.compressor else None,
                                                                cfg.condition, state=init_state)
        return dit
    if cfg.init:
        dit = DiT.from_wan(cfg.init[len("wan:"):], semantic_dim=semantic_dim, attention=cfg.attention, window=cfg.window)
        if dit.config.in_channels != in_channels or dit.config.text_dim != text_dim:
            raise MismatchError(
                f"--init {cfg.init}: Wan expects {dit.config.in_channels} latent channels and text dim {dit.config.text_dim}, "
                f"the data has {in_channels} and {text_dim}; extract with the Wan VAE and UMT5"
            )
        return dit
    return DiT(dit_cfg)


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


def train_latent(cfg: TrainLatentConfig, train_cfg, resume: bool = False, reporter: Reporter = NULL, resume_hint: str | None = None, fsdp: bool = False, allow_new_data: bool = False, monitor=None):
    from semgen_cli.io.lock import hold
    from semgen_cli.runs import check_same_data

    with hold(cfg.out, "run folder"):
        if resume:
            check_same_data(cfg.out, cfg.data, allow_new_data)
        return _train_latent(cfg, train_cfg, resume, reporter, resume_hint, fsdp, monitor)


def _condition_compressor(cfg: TrainLatentConfig, data: Dataset, resume: bool):
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


def _train_latent(cfg: TrainLatentConfig, train_cfg, resume: bool, reporter: Reporter, resume_hint: str | None, fsdp: bool, monitor):
    from semgen_cli.models.acceleration import attention_backend, compile_blocks
    from semgen_cli.training import check_run_dir, train

    data = Dataset(cfg.data)
    if not len(data):
        raise InputError(f"{cfg.data}: the data set has no samples")
    p = data.producer
    geometry = ClipGeometry.of(p, data.components)
    compressor, comp_run, init_state, vae_layout = _condition_compressor(cfg, data, resume)
    # training window
    shortest = min(r["duration"] for r in data.records)
    seconds = cfg.clip_seconds or shortest
    n_lat = geometry.latent_frames(seconds)
    n_tok = geometry.semantic_tokens(seconds)
    cfg.window = resolve_window(cfg, geometry, seconds, _recorded_window(cfg, resume))
    fields = ("latents", "text") + (("semantic",) if cfg.condition == "semantic" else ())
    dataset = LatentWindows(data, n_lat, n_tok, fields, vae_layout)
    sample = dataset[_first_key()]
    C, _, h, w = sample["latents"].shape
    text_dim = sample["text"].shape[-1]
    semantic_times = None
    if cfg.condition != "none":  # VAE tokens sit where the semantic tokens of their span would
        semantic_times = geometry.semantic_times(n_tok)
    sem_dim = compressor.config.out_dim if compressor is not None else 0
    shift, _ = resolve_shift(cfg, data, resume)
    text = resolve_text(cfg, data, resume)
    # monitoring (semgen_cli.validation): held-out clips, val_loss, samples, trackers
    from semgen_cli.validation import latent_hooks

    hooks = latent_hooks(monitor, dataset, functools.partial(collate, text_length=text.get("length")), train_cfg, cfg.out, seconds, resume, reporter)
    out = Path(cfg.out)
    resume_from = check_run_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    dit = build_dit(cfg, C, text_dim, sem_dim, compressor, comp_run.fingerprint if comp_run else None, load_init=resume_from is None or cfg.lora_rank is not None, init_state=init_state)
    del init_state
    lora = _lora(cfg, dit, compressor, reporter)
    dit.gradient_checkpointing = cfg.gradient_checkpointing
    config = {
        "step": "train-latent",
        "version": RUN_VERSION,
        "settings": asdict(cfg),
        "dit": dit.config.to_dict(),
        "compressor": compressor.config.to_dict() if compressor is not None else None,
        "compressor_source": {"path": str(Path(comp_run.path).resolve()), "fingerprint": comp_run.fingerprint, "features": comp_run.features} if comp_run else None,
        "vae_layout": vae_layout.to_dict() if vae_layout else None,
        "window": {"seconds": seconds, "latents": n_lat, "semantic_tokens": n_tok},
        "latent_shape": [C, h, w],
        "semantic_grid": list(sample["semantic"].shape[1:]) if "semantic" in sample else None,
        "shift": shift,
        "text": text,
        "train": train_cfg.to_dict(),
        "data": {"path": str(Path(cfg.data).resolve()), "components": data.components, "producer": p, "fields": data.fields, "samples": len(data), "windows": len(dataset)},
        "validation": hooks.record,
        "lora": lora,
    }
    run = LatentRun.from_dict(LatentRun.migrate(config, out / "config.json"), out)
    if resume and (out / "config.json").is_file():
        _check_same_architecture(out, run)
    run.save()
    step = LatentStep(dit, compressor, cfg, semantic_times, shift)
    swin = f"swin window T_w = {cfg.window} latent frames; " if cfg.attention == "swin" else ""
    reporter.info(f"DiT {cfg.preset}: {dit.num_params() / 1e6:.2f} M parameters; {swin}window {seconds:g} s = {n_lat} latent frames, {n_tok} semantic tokens; {len(dataset)} samples")
    batcher = functools.partial(collate, text_length=text.get("length"))
    stats = None
    if compressor is not None and not cfg.freeze_compressor and compressor.config.dim is not None:
        if fsdp:
            reporter.warn("--fsdp: the compressor's statistics are not recomputed at checkpoints (sharded weights); stage 2 reads fit-compressor's")
        else:
            stats = CompressorStats(data, cfg.condition, vae_layout, reporter)
    compile_blocks(dit, cfg.compile)
    with hooks.trackers(out, config, resume) as trackers, attention_backend(cfg.attention_backend):
        result = train(step, hooks.dataset, batcher, lambda m, b, g: m(b, g), train_cfg, out, resume=resume, reporter=reporter, resume_hint=resume_hint,
                       on_checkpoint=hooks.sampler(trackers), before_save=stats, trackers=trackers, validate=hooks.validate,
                       fsdp=fsdp, fsdp_modules=lambda m: list(m.dit.blocks))
    return result, config


def _lora(cfg: TrainLatentConfig, dit, compressor, reporter: Reporter) -> dict | None:
    """Adapters over the --init base (resuming reads the base again; the checkpoints hold what
    trains): the run's `lora` record, None without --lora-rank."""
    if cfg.lora_spec is None:
        return None
    from semgen_cli import lora

    record = lora.setup(dit, cfg.lora_spec, cfg.init, ("semantic_embed.", "sigma_embed."))
    reporter.info(lora.trainable_line([dit, compressor], cfg.lora_spec))
    return record


def _recorded_window(cfg: TrainLatentConfig, resume: bool) -> int | None:
    """The window the DiT was trained with: this run's (--resume), else --init RUN's."""
    own = Path(cfg.out) / "config.json"
    if resume and own.is_file():
        run = LatentRun.from_dir(cfg.out, "--out")
    elif cfg.init_run and (Path(cfg.init_run) / "config.json").is_file():
        run = LatentRun.from_dir(cfg.init_run, "--init")
    else:
        return None
    return run.dit.get("window")


def _first_key():
    from semgen_cli.training import Sample

    return Sample(0, 0)


def _earlier(cfg: TrainLatentConfig, resume: bool) -> tuple[LatentRun | None, str]:
    """The run a run's defaults follow: its own when resuming (the init run may be gone), else
    the train-latent run --init names; (None, "") for neither."""
    own = Path(cfg.out) / "config.json"
    if resume and own.is_file():
        return LatentRun.from_dir(cfg.out, "--out"), "the resumed run's"
    if cfg.init_run:
        return LatentRun.from_dir(cfg.init_run, "--init"), f"that of --init {cfg.init}"
    return None, ""


def resolve_shift(cfg: TrainLatentConfig, data: Dataset | None = None, resume: bool = False) -> tuple[float, str]:
    """(timestep shift, the rule that gave it) of a run; it is recorded and `generate` samples with it.

    --shift as given; when resuming, the run's own; with --init wan:PATH, Wan's (3.0 for frames
    under 720p, 5.0 from 720p up, as diffusers' Wan pipelines sample; RAE's rule would give 23-39
    for Wan-size latents); with --init RUN, that run's; else RAE's sqrt(N / 4096) of one training
    window's latent elements, never below 1 (`dimension_shift`)."""
    from semgen_cli.flow import dimension_shift

    if cfg.shift is not None:
        return float(cfg.shift), "--shift"
    before, whose = _earlier(cfg, resume)
    if before is not None and before.shift is not None and (resume or not (cfg.init or "").startswith("wan:")):
        return float(before.shift), whose
    data = data if data is not None else Dataset(cfg.data)
    if cfg.init and cfg.init.startswith("wan:"):
        h, w = data.producer["size"]
        return (WAN_SHIFT_720P, "Wan's, 720p") if min(h, w) >= 720 else (WAN_SHIFT_480P, "Wan's, 480p")
    C, _, h, w = data.fields["latents"]["shape"]
    seconds = cfg.clip_seconds or min(r["duration"] for r in data.records)
    n = int(C) * ClipGeometry.of(data.producer, data.components).latent_frames(seconds) * int(h) * int(w)
    return dimension_shift(n), f"sqrt({n} / 4096), at least 1"


def resolve_text(cfg: TrainLatentConfig, data: Dataset | None = None, resume: bool = False) -> dict:
    """How captions reach cross-attention: {"padding": "mask"}, or {"padding": "wan", "length": L}
    with L the text encoder's padded length (512 for UMT5), as extract recorded it. Default: the
    resumed run's, "wan" with --init wan:PATH, the --init run's, else "mask"."""
    padding = cfg.text_padding
    if padding is None:
        before, _ = _earlier(cfg, resume)
        if before is not None and (resume or not (cfg.init or "").startswith("wan:")):
            padding = before.text.get("padding", "mask")
        elif cfg.init and cfg.init.startswith("wan:"):
            padding = "wan"
        else:
            padding = "mask"
    if padding == "mask":
        return {"padding": "mask"}
    data = data if data is not None else Dataset(cfg.data)
    length = (data.components.get("text") or {}).get("max_length")
    if not length:
        raise InputError(f"{cfg.data}: index.json does not record the text encoder's max_length, which --text-padding wan "
                         "pads to; re-extract the data with this semgen")
    return {"padding": "wan", "length": int(length)}


def _check_same_architecture(out: Path, run: LatentRun) -> None:
    before = LatentRun.from_dir(out, "--out")  # its shape checked: an emptied config is named as such
    for key in ("dit", "compressor", "latent_shape"):
        if getattr(before, key) != getattr(run, key):
            raise MismatchError(f"{out}: the run was trained with a different {key} ({'preset' if key == 'dit' else key}); use the same flags or a new --out")
    from semgen_cli.lora import check_resumed

    check_resumed(out, before.lora, run.lora)
    if before.text != run.text:
        raise MismatchError(f"{out}: the run was trained with text padding {before.text.get('padding', 'mask')}, not "
                            f"{run.text['padding']}; pass the same --text-padding or a new --out")
