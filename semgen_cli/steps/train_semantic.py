"""`semgen train-semantic`: stage 2, the semantic generator (compressed semantics | text).

Paper §3.2 (stage 2: "semantic representation generation": a diffusion model generates the
compressed semantic features from text, with the semantic encoder and the compressor frozen)
and §3.4 (long videos: full attention over the whole video in the semantic space, which is
about 1/16 of the VAE tokens, so a minute is planned at once).

The compressor is the one the latent run fine-tuned (its EMA weights), so stage 2 generates
exactly the space stage 1 reads. Targets are computed from the shards on the fly: the
posterior mean of the compressed features, normalised with the compressor's statistics. The
DiT is the same class as stage 1, on tokens `(B, c, Ts, hs, ws)` with patch (1, 1, 1) and full
attention. Clips keep their whole length: a batch is padded along time, padded tokens are masked
out of attention (`token_mask`) and out of the loss, so a model trained on clips from seconds to
a minute plans any length in that range. Batches group clips of similar length (`lengths`, see
`semgen_cli.training`), so short clips are not padded to the longest one in the data.

On a `--condition vae` latent run (the compressed-VAE space of paper Fig. 9) the same model learns
that run's compressed VAE tokens instead: the clip's latents on the semantic grid and rate
(`semgen_cli.tokens.VaeLayout`), so both arms plan the same number of tokens.

`--init wan:PATH` starts the blocks from Wan2.1 (a diffusers `WanTransformer3DModel` folder), as
the paper fine-tunes its pre-trained video model for stage 2 too: Wan's width, depth and text
embedder, with a fresh patch embedding and output head for the compressed channels (patch 1×1×1).
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
from semgen_cli.runs import RUN_VERSION, LatentRun, SemanticRun, check_pair
from semgen_cli.tokens import check_vae_layout


@dataclass
class TrainSemanticConfig:
    data: str
    """Shard folder from `semgen extract` (the same encoders as the latent run's data)."""
    latent_run: str
    """train-latent run folder: its compressor (EMA weights) is frozen and reused."""
    out: str = "runs/semantic"
    preset: str = "toy"
    text_dropout: float = 0.1
    shift: float | None = None
    """Timestep shift; None: RAE's sqrt(elements / 4096) of the mean training clip."""
    max_seconds: float | None = None
    """Cut clips longer than this (memory); None keeps every clip whole."""
    windows: tuple[float, ...] = ()
    """Also train on windows of these lengths (seconds) cut from every longer clip, at half-window
    strides: a planner trained on 4 s and 60 s clips alone never sees a 20 s plan."""
    init: str | None = None
    """A train-semantic run whose weights (EMA if it has them) start this run: a fine-tune with a
    fresh optimiser and schedule, e.g. on new data. Same preset and compressor required; or
    wan:PATH, Wan2.1's blocks (diffusers WanTransformer3DModel folder; the preset is then Wan's).
    Ignored when --resume finds a checkpoint (that checkpoint's weights win)."""
    lora_rank: int | None = None
    """Train LoRA adapters of this rank on the DiT blocks' projections (`semgen_cli.lora`) over the
    --init base (or the DiT's own initialisation, which the checkpoints then hold); the patch
    embedding and head train fully."""
    lora_alpha: float | None = None
    """LoRA scale α (None: the rank)."""
    lora_targets: str | None = None
    """Comma-separated block layers to adapt (None: `lora.DEFAULT_TARGETS`, attention and FFN)."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in backward (memory for compute)."""
    attention_backend: str = "auto"
    """SDPA kernel (`semgen_cli.models.acceleration`): auto, flash, cudnn, efficient, math."""
    compile: bool = False
    """torch.compile each DiT block (regional compilation)."""

    def __post_init__(self) -> None:
        from semgen_cli.models.acceleration import check_attention_backend

        check_attention_backend(self.attention_backend)  # flash/cudnn/efficient need CUDA: refused before anything runs
        if not 0 <= self.text_dropout < 1:
            raise ConfigError(f"--text-dropout must be in [0, 1), got {self.text_dropout}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"--max-seconds must be positive, got {self.max_seconds}")
        if self.shift is not None and self.shift <= 0:
            raise ConfigError(f"--shift must be positive, got {self.shift}")
        self.windows = tuple(float(w) for w in self.windows)
        if any(not w > 0 for w in self.windows):
            raise ConfigError(f"--windows must be positive seconds, got {', '.join(f'{w:g}' for w in self.windows)}")
        if self.init is not None and not self.init.removeprefix("wan:").strip():
            raise ConfigError(f"--init {self.init!r}: expected a train-semantic run folder or wan:PATH")
        _ = self.lora_spec  # checks the --lora-* flags

    @property
    def lora_spec(self):
        """The LoRA adapters --lora-rank asks for (None: the whole DiT trains)."""
        from semgen_cli.lora import LoraSpec

        return LoraSpec.from_flags(self.lora_rank, self.lora_alpha, self.lora_targets)

    @property
    def init_wan(self) -> str | None:
        """The Wan folder of --init wan:PATH (None otherwise)."""
        return self.init[len("wan:"):] if self.init and self.init.startswith("wan:") else None


class WholeClips(torch.utils.data.Dataset):
    """Items: a sample's whole semantic tokens (Ts, hs, ws, d) and text, optionally cut to
    `max_tokens`; plus, for each window length in `windows` (tokens) shorter than a clip, that
    clip's windows of that length at half-window strides (the last one flush with the clip's end).
    Window starts are fixed, so an epoch is the same items whatever the seed and resuming replays it."""

    def __init__(self, data: Dataset, max_tokens: int | None, windows: tuple[int, ...] = (), vae_layout=None) -> None:
        self.data, self.vae_layout = data, vae_layout
        self.clip_lengths = [min(int(r["semantic_tokens_t"]), max_tokens or 1 << 30) for r in data.records]
        """Time tokens per sample, as cut by `max_tokens` (windows not counted)."""
        self.items: list[tuple[int, int, int]] = []
        """(sample, first token, tokens) per item."""
        for i, n in enumerate(self.clip_lengths):
            self.items.append((i, 0, n))
            for w in sorted(set(windows)):
                if w < n:
                    stride = max(1, w // 2)
                    starts = list(range(0, n - w + 1, stride))
                    if starts[-1] != n - w:
                        starts.append(n - w)
                    self.items += [(i, s0, w) for s0 in starts]
        self.lengths = [n for _, _, n in self.items]
        """Time tokens per item: the trainer batches items of similar length together."""

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, k: int) -> str:
        """The id of the sample an item is cut from (named when its data is not finite)."""
        return self.data.records[self.items[k][0]]["id"]

    def __getitem__(self, k: int) -> dict:
        i, start, n = self.items[k]
        if self.vae_layout is None:
            x = self.data.load(i, ["semantic", "text"])
        else:  # the compressed-VAE arm: the clip's latents on the semantic grid and rate
            x = self.data.load(i, ["latents", "text"])
            x["semantic"] = self.vae_layout.tokens(x["latents"].float(), int(self.data.records[i]["semantic_tokens_t"]))
        sem = x["semantic"].float()[start : start + n]
        return {"semantic": sem, "text": x["text"].float()}


def collate(items: list[dict], text_length: int | None = None) -> dict:
    """Pad semantic tokens along time (with `frame_mask`) and text (with `text_mask`, or, with
    `text_length`, Wan's way: zero-padded to that many tokens and no mask)."""
    text, text_mask = pad_text([it["text"] for it in items], text_length)
    Ts = max(it["semantic"].shape[0] for it in items)
    shape = items[0]["semantic"].shape[1:]
    sem = torch.zeros(len(items), Ts, *shape)
    mask = torch.zeros(len(items), Ts, dtype=torch.bool)
    for i, it in enumerate(items):
        n = it["semantic"].shape[0]
        sem[i, :n] = it["semantic"]
        mask[i, :n] = True
    return {"semantic": sem, "frame_mask": mask, "text": text, "text_mask": text_mask}


class SemanticStep(nn.Module):
    """Frozen compressor + the stage-2 DiT: `forward(batch, generator) → (loss, metrics)`."""

    def __init__(self, dit, compressor, text_dropout: float, shift: float) -> None:
        super().__init__()
        self.dit = dit
        self.compressor = compressor.eval().requires_grad_(False)
        self.text_dropout = text_dropout
        self.shift = shift

    def targets(self, semantic: torch.Tensor) -> torch.Tensor:
        """Raw features (B, Ts, hs, ws, d) → normalised compressed tokens (B, c, Ts, hs, ws)."""
        with torch.no_grad():
            _, mean, _ = self.compressor(semantic)
            return self.compressor.normalize(mean).permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, batch: dict, generator: torch.Generator):
        from semgen_cli.flow import flow_loss, sample_timesteps
        from semgen_cli.models.dit import frame_mask_to_token_mask

        self.compressor.eval()
        z0 = self.targets(batch["semantic"])  # (B, c, Ts, hs, ws)
        B, c, Ts, hs, ws = z0.shape
        dev = z0.device
        text, tmask = drop_text(batch["text"], batch["text_mask"], self.text_dropout, generator)
        fmask = batch["frame_mask"]  # (B, Ts)
        t = sample_timesteps(B, generator=generator, shift=self.shift, device=generator.device).to(dev)
        eps = torch.randn(z0.shape, generator=generator, device=generator.device).to(dev)
        loss = flow_loss(self.dit, z0, t, eps, mask=fmask[:, None, :, None, None], text=text, text_mask=tmask,
                         token_mask=frame_mask_to_token_mask(fmask, hs, ws))
        return loss, {"tokens_t": float(fmask.sum(1).float().mean())}


def build_semantic_dit(cfg: TrainSemanticConfig, channels: int, text_dim: int, load: bool = True):
    """The stage-2 DiT: `cfg.preset` from scratch, or with --init wan:PATH Wan's architecture and
    (when `load`; not on resume, whose checkpoint holds the weights) Wan's blocks, time and text
    embedders, with a fresh patch embedding and head for `channels` channels at patch 1×1×1."""
    from semgen_cli.models.dit import DiT, DiTConfig
    from semgen_cli.models.presets import preset

    arch = dict(in_channels=channels, out_channels=channels, semantic_dim=0, attention="full", patch=(1, 1, 1))
    if cfg.init_wan is None:
        return DiT(preset(cfg.preset, text_dim=text_dim, **arch))
    from semgen_cli.models.wan import read_wan, read_wan_config

    wan_config = read_wan_config(cfg.init_wan)
    dit = DiT(DiTConfig.from_wan_config(wan_config, **arch))
    if dit.config.text_dim != text_dim:
        raise MismatchError(f"--init {cfg.init}: Wan reads text of width {dit.config.text_dim}, the data's text embeddings have {text_dim}; extract with UMT5 (--text umt5:PATH)")
    if load:
        dit.load_wan_state_dict(read_wan(cfg.init_wan)[1], fresh=("patch_embed.", "head."))
    return dit


def stage2_compressor(lat: LatentRun, flag: str = "--latent-run"):
    """(compressor in eval mode, its fingerprint) of the latent run stage 2 generates the space of."""
    if lat.compressor is None:
        raise MismatchError(f"{flag} {lat.path}: trained without semantic tokens (--condition none, a text-to-video baseline that `semgen generate` samples alone); stage 2 needs a semantic or vae latent run")
    if lat.condition not in ("semantic", "vae"):
        raise MismatchError(f"{flag} {lat.path}: conditioned on {lat.condition} tokens, not semantic features or VAE latents")
    return lat.load_compressor(flag=flag)


def train_semantic(cfg: TrainSemanticConfig, train_cfg, resume: bool = False, reporter: Reporter = NULL, resume_hint: str | None = None, fsdp: bool = False, allow_new_data: bool = False, monitor=None):
    from semgen_cli.io.lock import hold
    from semgen_cli.runs import check_same_data

    with hold(cfg.out, "run folder"):
        if resume:
            check_same_data(cfg.out, cfg.data, allow_new_data)
        return _train_semantic(cfg, train_cfg, resume, reporter, resume_hint, fsdp, monitor)


def _train_semantic(cfg: TrainSemanticConfig, train_cfg, resume: bool, reporter: Reporter, resume_hint: str | None, fsdp: bool, monitor=None):
    from semgen_cli.flow import dimension_shift
    from semgen_cli.models.acceleration import attention_backend, compile_blocks
    from semgen_cli.training import check_run_dir, train

    data = Dataset(cfg.data)
    if not len(data):
        raise InputError(f"{cfg.data}: the data set has no samples")
    lat = LatentRun.from_dir(cfg.latent_run, "--latent-run")
    compressor, comp_fp = stage2_compressor(lat)
    vae_layout = None
    if lat.condition == "vae":
        vae_layout = check_vae_layout(lat.vae_layout, data, f"--latent-run {cfg.latent_run}")
    geometry = ClipGeometry.of(data.producer, data.components)
    max_tokens = None
    if cfg.max_seconds is not None:
        max_tokens = geometry.semantic_tokens(cfg.max_seconds)
    windows = tuple(geometry.semantic_tokens(w) for w in cfg.windows)
    dataset = WholeClips(data, max_tokens, windows, vae_layout)
    if windows:
        reporter.info(f"{len(dataset) - len(data)} windows of {', '.join(map(str, sorted(set(windows))))} tokens from longer clips, beside {len(data)} whole clips")
    first = dataset[0]
    _, hs, ws, _ = first["semantic"].shape
    text_dim = first["text"].shape[-1]
    c = compressor.config.out_dim
    check_pair(lat, SemanticRun(step=SemanticRun.STEP, settings={}, data={"components": data.components}, semantic_grid=[hs, ws], channels=c),
               semantic_named=f"{cfg.data}")
    records = data.records
    mean_t = sum(dataset.clip_lengths) / len(dataset.clip_lengths)  # whole clips: windows leave the default shift as it was
    shift = cfg.shift or dimension_shift(int(c * mean_t * hs * ws))
    longest = max(r["duration"] for r in records)
    # monitoring (semgen_cli.validation): held-out clips, val_loss, samples, trackers
    from semgen_cli.validation import semantic_hooks

    text_length = stage2_text(cfg, data).get("length")
    hooks = semantic_hooks(monitor, dataset, functools.partial(collate, text_length=text_length), train_cfg, cfg.out, cfg.latent_run, resume, reporter)
    out = Path(cfg.out)
    resume_from = check_run_dir(out, resume)
    torch.manual_seed(train_cfg.seed)
    dit = build_semantic_dit(cfg, c, text_dim, load=resume_from is None or cfg.lora_rank is not None)
    dit.gradient_checkpointing = cfg.gradient_checkpointing
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "step": "train-semantic",
        "version": RUN_VERSION,
        "settings": asdict(cfg),
        "dit": dit.config.to_dict(),
        "latent_run": {"path": str(Path(cfg.latent_run).resolve()), "compressor_fingerprint": comp_fp},
        "compressor": compressor.config.to_dict(),
        "semantic_grid": [hs, ws],
        "channels": c,
        "max_seconds": min(longest, cfg.max_seconds or longest),
        "shift": shift,
        "text_dropout": cfg.text_dropout,
        "text": stage2_text(cfg, data),
        "train": train_cfg.to_dict(),
        "data": {"path": str(Path(cfg.data).resolve()), "components": data.components, "producer": data.producer, "fields": data.fields,
                 "samples": len(data)},
        "validation": hooks.record,
    }
    if cfg.init is not None and cfg.init_wan is None and (resume_from is None or cfg.lora_rank is not None):  # a LoRA base is read again
        SemanticRun.from_dir(cfg.init, "--init").init_weights(dit, comp_fp)
        reporter.info(f"weights from --init {cfg.init}")
    config["lora"] = _lora(cfg, dit, reporter)
    run = SemanticRun.from_dict(SemanticRun.migrate(config, out / "config.json"), out)
    if resume and (out / "config.json").is_file():
        from semgen_cli.lora import check_resumed

        before = SemanticRun.from_dir(out, "--out")  # its shape checked: an emptied config is named as such
        if before.dit != run.dit or before.compressor_fingerprint != comp_fp:
            raise MismatchError(f"{out}: the run was trained with a different preset or latent run; use the same flags or a new --out")
        check_resumed(out, before.lora, run.lora)
    run.save()
    step = SemanticStep(dit, compressor, cfg.text_dropout, shift)
    reporter.info(f"semantic DiT {'Wan ' + cfg.init_wan if cfg.init_wan else cfg.preset}: {dit.num_params() / 1e6:.2f} M parameters; tokens {c} × T × {hs} × {ws}; clips up to {run.max_seconds:.1f} s; shift {shift:.3g}")
    batcher = functools.partial(collate, text_length=run.text.get("length"))
    compile_blocks(dit, cfg.compile)
    with hooks.trackers(out, config, resume) as trackers, attention_backend(cfg.attention_backend):
        result = train(step, hooks.dataset, batcher, lambda m, b, g: m(b, g), train_cfg, out, resume=resume, reporter=reporter, resume_hint=resume_hint,
                       on_checkpoint=hooks.sampler(trackers), trackers=trackers, validate=hooks.validate,
                       fsdp=fsdp, fsdp_modules=lambda m: list(m.dit.blocks))
    return result, config


def _lora(cfg: TrainSemanticConfig, dit, reporter: Reporter) -> dict | None:
    """Adapters over the --init base (read again on resume; the checkpoints hold what trains), or over
    the DiT's own initialisation (then the checkpoints hold it too): the run's `lora` record."""
    if cfg.lora_spec is None:
        return None
    from semgen_cli import lora

    record = lora.setup(dit, cfg.lora_spec, cfg.init, ("patch_embed.", "head."))
    reporter.info(lora.trainable_line([dit], cfg.lora_spec))
    return record


def stage2_text(cfg: TrainSemanticConfig, data: Dataset) -> dict:
    """How captions reach stage 2's cross-attention: started from Wan (--init wan:PATH), as Wan's
    pipeline feeds UMT5 (zero-padded to the encoder's length, no mask: {"padding": "wan",
    "length": L}), so the blocks start from Wan's behaviour; else real tokens and a mask. Recorded
    in the run; `generate` follows it (`run_text`)."""
    if cfg.init_wan is None:
        return {"padding": "mask"}
    length = (data.components.get("text") or {}).get("max_length")
    if not length:
        raise InputError(f"{cfg.data}: index.json does not record the text encoder's max_length, which --init wan: pads "
                         "captions to; re-extract the data with this semgen")
    return {"padding": "wan", "length": int(length)}
