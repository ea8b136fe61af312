"""`semgen train-latent`: stage 1, the latent generator (VAE latents | compressed semantics, text).

Paper §3.2 (stage 1: "generating VAE latents conditioned on semantic representations", with
in-context conditioning: the compressed semantic tokens are concatenated to the noisy latents,
and noise is added to them during training as in RAE) and §3.4 (shifted-window attention for
long videos). The compressor from `fit-compressor` is fine-tuned jointly with its KL term, as
the paper trains them together, unless `--freeze-compressor` (then it stays in eval mode); the
DiT sees the normalised posterior means plus RAE σ-noise, as at inference, and the statistics of
the compressed space are recomputed at every checkpoint (`semgen_cli.stage1_compressor`, docs/compressor.md).
The default swin window is the smallest in which every window, plain and shifted, of every video
holds a semantic frame at the data's rates (`semgen_cli.windows`); a `--window` that leaves windows
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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from semgen_cli.components.text_encoder import pad_text
from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.flow import drop_text
from semgen_cli.geometry import ClipGeometry
from semgen_cli.io.shards import Dataset
from semgen_cli.reporting import NULL, Reporter
from semgen_cli.runs import RUN_VERSION, LatentRun
from semgen_cli.stage1_compressor import CompressorStats, condition_compressor
from semgen_cli.windows import LatentWindows, resolve_window

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


def train_latent(cfg: TrainLatentConfig, train_cfg, resume: bool = False, reporter: Reporter = NULL, resume_hint: str | None = None, fsdp: bool = False, allow_new_data: bool = False, monitor=None):
    from semgen_cli.io.lock import hold
    from semgen_cli.runs import check_same_data

    with hold(cfg.out, "run folder"):
        if resume:
            check_same_data(cfg.out, cfg.data, allow_new_data)
        return _train_latent(cfg, train_cfg, resume, reporter, resume_hint, fsdp, monitor)


def _train_latent(cfg: TrainLatentConfig, train_cfg, resume: bool, reporter: Reporter, resume_hint: str | None, fsdp: bool, monitor):
    from semgen_cli.models.acceleration import attention_backend, compile_blocks
    from semgen_cli.training import check_run_dir, train

    data = Dataset(cfg.data)
    if not len(data):
        raise InputError(f"{cfg.data}: the data set has no samples")
    p = data.producer
    geometry = ClipGeometry.of(p, data.components)
    compressor, comp_run, init_state, vae_layout = condition_compressor(cfg, data, resume)
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
