"""The loaded models of a latent run and a semantic run, and one video from a prompt: text →
semantic plan (stage 2, a reference, or a saved plan) → VAE latents (stage 1) → mp4 (paper §3.3,
Fig. 3c; the steps are described in `semgen_cli.steps.generate`).

`semgen generate` builds one :class:`Pipeline` for all its prompts; `semgen toy-eval` builds one
and calls :meth:`Pipeline.generate_one` with a seed (and a reference clip) per prompt.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from semgen_cli import parallel
from semgen_cli.errors import ConfigError, InputError, MismatchError, out_of_memory
from semgen_cli.io.outputs import Commit, semantics_path, sidecar_path
from semgen_cli.profiling import Stages
from semgen_cli.reporting import NULL, Reporter

if TYPE_CHECKING:  # the config and resolution of `semgen generate`, which builds pipelines
    from semgen_cli.steps.generate import GenerateConfig, Resolved


@dataclass
class VideoOut:
    path: Path
    sidecar: Path
    semantics: Path | None
    prompt: str
    seconds: float
    frames: int
    fps: float
    seed: int
    seconds_per_stage: dict[str, float]
    memory_per_stage: dict[str, dict[str, int]]


class Pipeline:
    """The loaded models of one latent run + semantic run, ready to turn prompts into videos.
    Loading is timed (`load_seconds`, `load_memory`)."""

    def __init__(self, cfg: GenerateConfig, r: Resolved, reporter: Reporter = NULL, par: parallel.ParallelPlan | None = None) -> None:
        self.cfg, self.r, self.reporter = cfg, r, reporter
        self.par = par if par is not None else parallel.ParallelPlan()  # one process unless `generate.load` joined ranks
        self.device, self.dtype = pick_device(cfg.device, cfg.dtype)
        stages = Stages(self.device)
        stages.begin("load")
        reporter.info(f"loading the runs and components on {self.device} ({str(self.dtype).removeprefix('torch.')})…")
        self._load_dits()
        self._load_components()
        stages.end()
        self.load_seconds, self.load_memory, self.memory_kind = stages.seconds["load"], stages.memory["load"], stages.meter.kind
        # the VAE that decodes may have another decoder than the runs' own (the encoder may not differ)
        self.loaded = {**{role: c.get("fingerprint") for role, c in r.components.items()}, "vae": self.vae.fingerprint}

    def _load_dits(self) -> None:
        """Stage 1's DiT (and compressor, to read reference plans) and stage 2's DiT; the semantic
        run must have been trained on this latent run's compressor."""
        from semgen_cli.models.dit import DiT
        from semgen_cli.runs import split_state, tensors_fingerprint

        cfg, r = self.cfg, self.r
        lat_state = r.lat.sampling_weights("--latent-run")  # a LoRA run's adapters merged into its checked base
        comp_state = split_state(lat_state, "compressor")
        fp = tensors_fingerprint(comp_state, "compressor:")
        if r.sem is not None and r.plan_source == "stage 2" and r.sem.compressor_fingerprint != fp:
            raise MismatchError(
                f"--semantic-run {r.semantic_run} was trained on compressor {r.sem.compressor_fingerprint} "
                f"(latent run {r.sem.latent_run.get('path')}), but --latent-run {r.latent_run} holds {fp}; "
                "pass the latent run the semantic run was trained on"
            )
        self.compressor_fingerprint = fp if comp_state else None  # None: a Base-CT run has no compressor
        override = {"attention": cfg.attention} if cfg.attention is not None else {}
        self.latent_dit = _build(DiT, r.lat.dit_config(**override), split_state(lat_state, "dit"), self.device, self.dtype, "--latent-run", r.latent_run)
        self.compressor = None
        if cfg.semantic_from is not None:
            self.compressor = r.lat.load_compressor(lat_state)[0].to(self.device)
        del lat_state, comp_state

        self.semantic_dit = None
        if r.plan_source == "stage 2":
            sem_state = r.sem.sampling_weights("--semantic-run")
            self.semantic_dit = _build(DiT, r.sem.dit_config(), split_state(sem_state, "dit"), self.device, self.dtype, "--semantic-run", r.semantic_run)
            del sem_state
        from semgen_cli.models.acceleration import compile_blocks

        for dit in (self.latent_dit, self.semantic_dit):
            compile_blocks(dit, cfg.compile and dit is not None)
        self.latent_dit_config = self.latent_dit.config

    def _load_components(self) -> None:
        """The frozen components, checked against the fingerprints the runs recorded."""
        from semgen_cli.components import load_semantic_encoder, load_text_encoder, load_vae

        cfg, r, comps = self.cfg, self.r, self.r.components
        text = comps["text"]
        self.text_encoder = _checked(load_text_encoder(text["spec"], device=self.device, max_length=text.get("max_length")), text, "text")
        self.vae = _checked(load_vae(cfg.vae or comps["vae"]["spec"], device=self.device), comps["vae"], "vae")
        self.semantic_encoder = None
        if r.plan_source == "reference video" and r.lat.condition == "semantic":
            s = comps["semantic"]
            extra = {k: s[k] for k in ("min_pixels", "max_pixels") if k in s}
            self.semantic_encoder = _checked(load_semantic_encoder(s["spec"], device=self.device, fps=r.semantic_fps, **extra), s, "semantic")

    # -- one video ----------------------------------------------------------------------------------
    def generate_one(self, prompt: str, seed: int, plan: str | None = None, out: str | Path | None = None, tag: str = "") -> VideoOut | None:
        """One video of `prompt`, every noise drawn from `seed` (`initial_noise`), written to `out`
        (default: the config's --out) with its sidecar and, with --save-semantics, its plan.
        `plan`: the reference video or saved plan to read the plan from instead of the config's
        --semantic-from (one loaded pipeline then serves a reference per prompt); `tag` prefixes
        the progress bars. Under torchrun in a per-video parallel mode, ranks other than the first
        help sample and return None (the first decodes and writes)."""
        import torch

        from semgen_cli.models.acceleration import attention_backend

        r = self.r
        if plan is not None and r.plan_source not in ("reference video", "saved plan"):
            raise ConfigError(f"plan {plan}: this pipeline makes its plans from {r.plan_source}; load it with --semantic-from to read plans")
        seed, source = int(seed), plan if plan is not None else self.cfg.semantic_from  # plan file or reference video
        path = Path(out if out is not None else self.cfg.out)
        stages = Stages(self.device)
        with torch.inference_mode(), attention_backend(self.cfg.attention_backend):
            g, noise, plan_eps = initial_noise(r, seed)
            stages.begin("text")
            cond, uncond = self.text(prompt)
            stages.end()
            z_plan = self._plan(cond, uncond, g, source, path, tag, stages)
            latents = self._stage1(z_plan, cond, uncond, noise, plan_eps, path, tag, stages)
            if not self.par.writes:  # per-video parallel modes: rank 0 decodes and writes
                return None
            video = self._write(prompt, seed, source, z_plan, latents, path, tag, stages)
        self.memory_kind = stages.meter.kind
        return video

    def _plan(self, cond: dict, uncond: dict, generator, source: str | None, path: Path, tag: str, stages: Stages):
        """The plan (1, Ts, hs, ws, c) from the resolved plan source; None for a Base-CT run,
        which renders from the text alone."""
        r, reporter = self.r, self.reporter
        if r.plan_source == "none":
            return None
        stages.begin("semantic")
        if r.plan_source == "stage 2":
            name = f"{tag}semantic plan"
            reporter.start(name, total=self.cfg.semantic_steps, unit="steps")
            plan = parallel.same_plan(self.par, self.plan_from_stage2(cond, uncond, generator, lambda s, n: reporter.advance(name)))
            reporter.finish(name)
        elif r.plan_source == "reference video":
            plan = self.plan_from_reference(source)
        else:
            plan = self.plan_from_file(source)
        _require_finite(plan, f"the semantic plan of {path.name}" + (f" (from {source})" if source else ""))
        stages.end()
        return plan

    def _stage1(self, plan, cond: dict, uncond: dict, noise, plan_eps, path: Path, tag: str, stages: Stages):
        """Stage 1's latents, running out of memory being a one-line error."""
        import torch

        r, reporter = self.r, self.reporter
        stages.begin("latent")
        name = f"{tag}latents"
        reporter.start(name, total=self.cfg.latent_steps, unit="steps")
        try:
            latents = self.latents(plan, cond, uncond, noise, plan_eps, lambda s, n: reporter.advance(name))
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not out_of_memory(err):
                raise
            raise ConfigError(f"--seconds {r.seconds:g}: stage 1 ran out of memory on {self.device} ({r.stage1_tokens} tokens, "
                              f"{self.cfg.attention or r.lat.dit['attention']} attention); ask for fewer --seconds or a smaller --size") from None
        _require_finite(latents, f"the sampled latents of {path.name}")
        reporter.finish(name)
        stages.end()
        return latents

    def _write(self, prompt: str, seed: int, source: str | None, plan, latents, path: Path, tag: str, stages: Stages) -> VideoOut:
        """Decode into the mp4 and write its sidecar (and plan): under temp names, renamed together
        once the video is complete (sidecar last), so a kill never pairs old and new files."""
        from semgen_cli import __version__
        from semgen_cli.io.shards import write_json_atomic
        from semgen_cli.io.video import VideoWriter

        cfg, r, reporter = self.cfg, self.r, self.reporter
        meta = {
            "prompt": prompt, "seed": seed, "seconds": r.seconds, "frames": r.frames, "fps": r.fps,
            "size": list(r.size), "semgen": __version__, "settings": {k: v for k, v in asdict(cfg).items() if k not in ("prompts", "out")},
            "sigma": r.sigma if plan is not None else None, "plan": r.plan_source + (f": {source}" if source else ""),
            "latent_run": {"path": str(Path(r.latent_run).resolve()), "compressor_fingerprint": self.compressor_fingerprint},
            "semantic_run": str(Path(r.semantic_run).resolve()) if r.semantic_run and r.plan_source == "stage 2" else None,
            "pipeline": r.pipeline,
            "components": self.loaded,
        }
        sem_path = semantics_path(path) if cfg.save_semantics else None
        sidecar = sidecar_path(path)
        with Commit([p for p in (sem_path, path, sidecar) if p is not None]) as staged:
            if sem_path is not None:
                _save_plan(staged[sem_path], plan[0], meta, self.compressor_fingerprint, r)
            stages.begin("decode")
            name = f"{tag}decode"
            reporter.start(name, total=r.frames, unit="frames")
            with VideoWriter(staged[path], fps=r.fps, width=r.size[1], height=r.size[0], metadata=meta) as writer:
                for part in decoded_frames(self.vae, latents, r.frames, cfg.decode_chunk):
                    writer.write(part)
                    reporter.advance(name, len(part))
            reporter.finish(name)
            stages.end()
            if writer.frames_written != r.frames:  # cannot happen unless the VAE returns too few frames
                raise InputError(f"{path}: decoded {writer.frames_written} frames, expected {r.frames}")
            write_json_atomic(staged[sidecar], {
                **meta, "mp4": str(path), "semantics": str(sem_path) if sem_path else None, "warnings": r.warnings,
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "seconds_per_stage": stages.seconds, "load_seconds": self.load_seconds,
                "memory_per_stage": stages.memory, "memory_kind": stages.meter.kind,
            })
        return VideoOut(path, sidecar, sem_path, prompt, r.seconds, r.frames, r.fps, seed, stages.seconds, stages.memory)

    # -- conditions ---------------------------------------------------------------------------------
    def text(self, prompt: str):
        """(cond, uncond) text conditions: real tokens with an all-True mask; zeros for uncond."""
        import torch

        emb, mask = self.text_encoder.encode([prompt])  # (1, L, D), (1, L)
        n = max(1, int(mask[0].sum()))
        emb = emb[:, :n].to(self.device)  # (1, n, D): padding is not part of the condition
        full = torch.ones(1, n, dtype=torch.bool, device=self.device)
        return {"text": emb, "text_mask": full}, {"text": torch.zeros_like(emb), "text_mask": full}

    def plan_from_stage2(self, cond: dict, uncond: dict, generator, progress=None):
        """Stage 2: normalised compressed tokens (1, Ts, hs, ws, c) for the whole duration."""
        import torch

        from semgen_cli.flow import euler_sample

        r = self.r
        noise = torch.randn((1, r.channels, r.semantic_tokens, *r.semantic_grid), generator=generator)  # (1, c, Ts, hs, ws)
        cond, uncond = run_text(cond, uncond, r.sem.text)
        z = euler_sample(self.semantic_dit, noise.to(self.device), self.cfg.semantic_steps, shift=float(r.sem.shift),
                         cfg_scale=self.cfg.semantic_cfg, cond=cond, uncond=uncond, progress=progress)
        return z.float().permute(0, 2, 3, 4, 1).contiguous()  # (1, Ts, hs, ws, c)

    def plan_from_reference(self, path: str):
        """Paper Fig. 4: the reference's own plan, read at the runs' semantic fps and size (a
        compressed-VAE run: its VAE latents at the training fps and size, on the semantic grid)."""
        from semgen_cli.io.video import read_video

        r = self.r
        if r.lat.condition == "vae":
            feats = self._vae_tokens(path).to(self.device)  # (Ts, hs, ws, C·r·a·b)
        else:
            frames = read_video(path, fps=r.semantic_fps, size=r.semantic_size, max_seconds=r.seconds)  # (Fs, H, W, 3)
            feats = self.semantic_encoder.encode(frames).to(self.device)  # (Ts', hs, ws, d)
        if tuple(feats.shape[1:3]) != r.semantic_grid:
            raise MismatchError(f"--semantic-from {path}: encodes to a {tuple(feats.shape[1:3])} grid, the runs use {r.semantic_grid}")
        if feats.shape[0] < r.semantic_tokens:
            raise ConfigError(f"--semantic-from {path}: gives {feats.shape[0]} semantic tokens, {r.seconds:g} s needs {r.semantic_tokens}; ask for fewer --seconds")
        z, _, _ = self.compressor(feats[: r.semantic_tokens].float())  # eval mode: the posterior mean
        return self.compressor.normalize(z)[None]  # (1, Ts, hs, ws, c)

    def _vae_tokens(self, path: str):
        """The VAE tokens (Ts, hs, ws, d) of a reference video, as `fit-compressor --features vae` made them."""
        from semgen_cli.io.video import read_video
        from semgen_cli.tokens import VaeLayout

        r = self.r
        layout = VaeLayout.from_dict(r.lat.vae_layout)
        size = tuple(int(v) for v in r.lat.producer["size"])
        span = r.lat.geometry.video_frames(math.ceil(r.semantic_tokens * layout.latents_per_token) + 1)  # frames the tokens read
        frames = read_video(path, fps=r.trained_fps, size=size, max_seconds=span / r.trained_fps)  # (F, H, W, 3)
        frames = frames[: self.vae.valid_frames(len(frames))]
        return layout.tokens(self.vae.encode(frames), r.semantic_tokens)  # (Ts, hs, ws, d)

    def plan_from_file(self, path: str):
        """A plan written by --save-semantics (it must come from this latent run's compressor)."""
        from safetensors import safe_open

        r = self.r
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            plan = f.get_tensor("semantic").float()  # (Ts, hs, ws, c)
        if meta.get("compressor_fingerprint") not in (None, self.compressor_fingerprint):
            raise MismatchError(f"--semantic-from {path}: made with compressor {meta['compressor_fingerprint']}, --latent-run {r.latent_run} holds {self.compressor_fingerprint}")
        if tuple(plan.shape[1:]) != (*r.semantic_grid, r.channels) or plan.shape[0] < r.semantic_tokens:
            raise MismatchError(f"--semantic-from {path}: plan of shape {tuple(plan.shape)}, need ≥ ({r.semantic_tokens}, {r.semantic_grid[0]}, {r.semantic_grid[1]}, {r.channels})")
        return plan[None, : r.semantic_tokens].to(self.device)

    def latents(self, plan, cond: dict, uncond: dict, noise, plan_eps, progress=None):
        """Stage 1: VAE latents (C, T, h, w) for the whole duration, conditioned on the plan
        (a Base-CT run: `plan` None, on the text alone)."""
        import torch

        from semgen_cli.flow import euler_sample

        r = self.r
        sem_cond = {}
        if plan is not None:
            times = r.lat.geometry.semantic_times(r.semantic_tokens, fps=r.fps)[None]  # (1, Ts), at the output's frame rate
            sem_cond = {
                "semantic": plan + r.sigma * plan_eps.to(self.device),  # the RAE noise the model was trained under, at fixed σ
                "semantic_sigma": torch.full((1,), r.sigma, device=self.device),
                "semantic_times": times.to(self.device),
            }
        cond, uncond = run_text(cond, uncond, r.lat.text)
        z = euler_sample(self.latent_dit, noise.to(self.device), self.cfg.latent_steps, shift=float(r.lat.shift),
                         cfg_scale=self.cfg.latent_cfg, cond={**cond, **sem_cond}, uncond=uncond, progress=progress)
        return z[0].float()  # (C, T, h, w)


def run_text(cond: dict, uncond: dict, text: dict) -> tuple[dict, dict]:
    """The text conditions the way a run whose `text` record is `text` was trained on them: as
    they are (real tokens, all-True mask), or for Wan's padding the real tokens zero-padded to the
    run's length (1, L, D) with no mask, and zeros of that shape unconditionally (diffusers'
    WanPipeline feeds UMT5 embeddings so)."""
    if text.get("padding") != "wan":
        return cond, uncond
    emb = cond["text"]  # (1, n, D), the caption's real tokens
    padded = emb.new_zeros(emb.shape[0], int(text["length"]), emb.shape[2])  # (1, L, D)
    padded[:, : emb.shape[1]] = emb[:, : padded.shape[1]]
    rest = {k: v for k, v in cond.items() if k not in ("text", "text_mask")}
    return {**rest, "text": padded}, {"text": padded.new_zeros(padded.shape)}


def pick_device(device: str, dtype: str):
    """(torch.device, torch.dtype) from the flags; ConfigError if the device is absent."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype == "float16" and dev.type == "cpu":
        raise ConfigError("--dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")
    return dev, getattr(torch, dtype)


def initial_noise(r: Resolved, seed: int):
    """The draws a video starts from, in this order from one CPU generator seeded with `seed`:
    stage 1's noise (1, C, T, h, w), then the σ-noise of the plan (1, Ts, hs, ws, c); stage 2 goes
    on drawing from the returned generator. Returns (generator, noise, plan_eps). Shared by every
    plan source, so a seed gives the same stage-1 noise whether the plan is sampled or read."""
    import torch

    g = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((1, *r.latent_shape), generator=g)
    plan_eps = torch.randn((1, r.semantic_tokens, *r.semantic_grid, r.channels), generator=g) if r.channels else None
    return g, noise, plan_eps


def _build(cls, config, state: dict, device, dtype, flag: str, run: Path):
    model = cls(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise MismatchError(f"{flag} {run}: checkpoint does not fit its config.json ({str(err).splitlines()[0][:160]})") from None
    return model.eval().requires_grad_(False).to(device, dtype)


def _checked(component, recorded: dict, role: str):
    """`component` if it is the one the runs recorded; a VAE may also differ in its decoder alone
    (same `encoder_fingerprint`), since the runs only ever saw its latents."""
    enc = recorded.get("encoder_fingerprint")
    same_latents = role == "vae" and enc is not None and enc == getattr(component, "encoder_fingerprint", None)
    if recorded.get("fingerprint") and component.fingerprint != recorded["fingerprint"] and not same_latents:
        if role == "vae" and component.spec != recorded.get("spec"):
            raise MismatchError(
                f"--vae {component.spec} has encoder {component.encoder_fingerprint}, the runs' latents came from "
                f"{enc or recorded['fingerprint'] + ' (no encoder fingerprint recorded)'}: only a VAE with the runs' encoder can decode them"
            )
        raise MismatchError(
            f"{role} encoder {recorded.get('spec')!r} now loads as {component.fingerprint}, "
            f"the runs were trained with {recorded['fingerprint']}; point the spec at the same weights"
        )
    return component


def decoded_frames(vae, latents, frames: int, chunk_latent_frames: int) -> Iterator:
    """uint8 frames (f, H, W, 3), ``chunk_latent_frames`` latent frames per VAE call, the causal
    cache carried between calls; cut after ``frames`` frames in total (the rest is never decoded)."""
    left = frames
    for part in vae.iter_decode(latents, chunk_latent_frames=chunk_latent_frames):
        part = part[:left]
        left -= len(part)
        if len(part):
            yield part
        if left <= 0:
            return


def _require_finite(t, what: str) -> None:
    """A NaN or inf in a plan or latents would decode to a black video with exit 0: refuse it."""
    import torch

    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} holds NaN or inf values; the runs' weights or the plan are broken (check them with `semgen inspect RUN --verify`)")


def _save_plan(path: Path, plan, meta: dict, compressor_fingerprint: str, r: Resolved) -> None:
    """The normalised plan (Ts, hs, ws, c) as safetensors, with what made it as string metadata."""
    from semgen_cli.io.shards import save_tensors_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "prompt": meta["prompt"], "seed": str(meta["seed"]), "seconds": repr(r.seconds), "semantic_fps": repr(r.semantic_fps),
        "normalised": "true", "layout": "Ts,hs,ws,c", "compressor_fingerprint": compressor_fingerprint,
        "plan": meta["plan"], "latent_run": meta["latent_run"]["path"], "semantic_run": meta["semantic_run"] or "",
    }
    save_tensors_atomic(path, {"semantic": plan.detach().float().cpu()}, metadata=info)


def plan_file_seconds(path: str, sfps: float, temporal_patch: int) -> float:
    """How long the video of a plan saved with --save-semantics lasts."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            shape = f.get_slice("semantic").get_shape()
    except Exception as err:
        raise InputError(f"--semantic-from {path}: not a plan written by --save-semantics ({str(err).splitlines()[0][:120]})") from None
    if "seconds" in meta:
        return float(meta["seconds"])
    return shape[0] * temporal_patch / sfps
