"""Train the toy VAE of the embedded default: a small diffusers `AutoencoderKLWan` (causal, 4x time,
8x space, so 64x64 frames -> 8x8 latents) on toy-world clips rendered in memory.

    python examples/toy/train_vae.py --out semgen_cli/assets/toy/vae [--steps 1200] [--seed 0]

What it does:
1. trains on random toy clips (`semgen_cli.toy.world`, 8 fps, 5-frame windows = 2 latent frames:
   the causal first frame and one 4-frame chunk) with a weighted L1 + MSE reconstruction loss
   (object pixels weigh 5x: the object is a few % of the frame), decoding the posterior mean plus
   a little noise (10 % of its RMS), and a small weight on the KL's mean term (mu^2) so the latent
   scale stays bounded. Most steps see random 32x32 crops of the 64x64 torus world (the VAE is
   fully convolutional; a crop is 4x cheaper), the last `--full-frac` of the steps whole 64x64
   frames. With `--warmup-latents N` each window starts a random 0–N latent frames into its clip:
   the frames before it run through encoder and decoder without gradients, only to fill the
   causal caches (trained on clip starts alone, the VAE fails a few latent frames past its
   window). `--stream-seconds` does better at no warm-up cost: each batch row streams a long clip
   window by window with the caches carried over from one step to the next (truncated backprop
   through time), several groups of streams taking turns. Half the inputs go through a simulated
   H.264 yuv420p round trip (chroma averaged over 2x2 blocks) while the target stays the clean
   frame, since `semgen extract` reads mp4s;
2. measures the per-channel mean/std of the posterior mean over held-out clips and stores them as
   the config's `latents_mean` / `latents_std`, which `load_vae("wan:...")` uses to normalise
   latents to ~zero mean, unit variance;
3. saves with `save_pretrained` (safetensors, fp32) and evaluates the saved folder through the
   real loader: PSNR on held-out 33-frame clips (also per latent frame, since a causal VAE can
   fail only past the window length it was trained on) and on a 60 s clip encoded chunk by chunk and
   decoded with `iter_decode`, plus how far decoded flat regions land from the exact palette.
   The numbers go to `<out>/train_report.json` and stdout.

Runs on one CPU thread by default (`--threads`); see docs/toy-default.md for the recipe.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from semgen_cli.toy.fidelity import latent_frame_spans, psnr
from semgen_cli.toy.world import BACKGROUNDS, render, sample_spec

FPS = 8.0
CONFIG = dict(
    base_dim=12, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
)
EVAL_SEED_OFFSET = 10_000  # held-out clips use default_rng([seed + offset, i])
EVAL_FRAMES = 33  # held-out clip length: 9 latent frames, as long as a 4 s training clip of semgen extract


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (save_pretrained layout)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=4, help="clips per step at the crop size (halved twice at 64x64)")
    p.add_argument("--frames", type=int, default=5, help="frames per training window (4k+1)")
    p.add_argument("--crop", type=int, default=32, help="training crop side for the first phase")
    p.add_argument("--full-frac", type=float, default=0.25, help="fraction of steps on whole 64x64 frames")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--kl", type=float, default=1e-4, help="weight of the KL's mean term (per-element mean)")
    p.add_argument("--noise", type=float, default=0.1, help="latent noise, relative to the latents' RMS")
    p.add_argument("--obj-weight", type=float, default=4.0, help="extra loss weight on object pixels")
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--long-seconds", type=float, default=60.0)
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                   help="Wan2.2-style residual blocks (space-to-channel average shortcuts); learns far faster")
    p.add_argument("--zero-init", action="store_true",
                   help="zero the last layer of every residual branch (the VAE starts as its shortcut path)")
    p.add_argument("--init", type=Path, default=None, help="start from this saved VAE folder (continue training)")
    p.add_argument("--warmup-latents", type=int, default=0,
                   help="before each training window, run up to this many latent frames (a random number, 0 included) "
                        "through encoder and decoder without gradients, so the causal caches carry the state of a long "
                        "clip: a VAE trained only on clip starts fails a few latent frames past its window")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the decoder (with --init): the latents and their stored statistics stay exactly "
                        "the same, so data sets extracted with the VAE stay valid")
    p.add_argument("--base-dim", type=int, default=CONFIG["base_dim"], help="width of a new VAE (ignored with --init)")
    p.add_argument("--decoder-base-dim", type=int, default=None,
                   help="with --init and --freeze-encoder: a new decoder of this width (trained from scratch) under "
                        "the kept encoder; the latents stay exactly the same, as for sd-vae-ft-mse's new decoder")
    p.add_argument("--gan", type=float, default=0.0,
                   help="weight of a hinge adversarial loss from a per-frame PatchGAN discriminator (0: none), scaled "
                        "adaptively as in taming-transformers' VQGAN: an L1/L2 decoder draws the average of the shapes a "
                        "latent could mean, a blob; the adversary makes it commit to one")
    p.add_argument("--gan-start", type=int, default=200, help="step from which the adversarial loss reaches the decoder "
                   "(the discriminator trains from step 0)")
    p.add_argument("--stream-seconds", type=float, default=0.0,
                   help="train on streams instead of independent windows (0: off): each batch row is a toy clip of "
                        "a random length up to this many seconds, fed window by window through the causal caches, "
                        "which carry over (detached) from one step to the next, as in truncated backpropagation "
                        "through time. Every window after a clip's first sees the caches of a long clip without the "
                        "warm-up passes of --warmup-latents (which it replaces)")
    p.add_argument("--stream-groups", type=int, default=8,
                   help="with --stream-seconds: this many streams (each with its own clips and caches) take turns, "
                        "so consecutive steps see different clips")
    p.add_argument("--save-every", type=int, default=0, help="also save (with latent stats) every N steps")
    return p.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------
def yuv420_roundtrip(frames: np.ndarray) -> np.ndarray:
    """Approximate an H.264 yuv420p round trip of uint8 (F, H, W, 3): BT.601 full-range YCbCr,
    chroma averaged over 2x2 blocks and repeated back, rounded to uint8."""
    x = frames.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = (b - y) * 0.564
    cr = (r - y) * 0.713
    f, h, w = y.shape

    def sub(c):
        c = c.reshape(f, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return np.repeat(np.repeat(c, 2, axis=1), 2, axis=2)

    cb, cr = sub(cb), sub(cr)
    r2 = y + 1.403 * cr
    b2 = y + 1.773 * cb
    g2 = (y - 0.299 * r2 - 0.114 * b2) / 0.587
    return np.clip(np.round(np.stack([r2, g2, b2], -1)), 0, 255).astype(np.uint8)


def batch(rng: np.random.Generator, n: int, frames: int, crop: int, degrade_p: float = 0.5, extra: int = 0):
    """(inputs, targets, object weights): float (n, 3, F, c, c) in [-1, 1] and (n, 1, F, c, c)."""
    xs, ys, ms = [], [], []
    for _ in range(n):
        spec = sample_spec(rng, seconds=(frames + extra) / FPS, fps=FPS)
        clip = render(spec)  # (F, 64, 64, 3) uint8
        if crop < clip.shape[1]:
            oy, ox = rng.integers(0, clip.shape[1] - crop + 1), rng.integers(0, clip.shape[2] - crop + 1)
            clip = clip[:, oy:oy + crop, ox:ox + crop]
        bg = np.array(BACKGROUNDS[spec.background], dtype=np.uint8)
        ms.append((clip != bg).any(-1)[None].astype(np.float32))
        ys.append(clip)
        xs.append(yuv420_roundtrip(clip) if rng.random() < degrade_p else clip)

    def to_t(a):
        return torch.from_numpy(np.stack(a)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0

    return to_t(xs), to_t(ys), torch.from_numpy(np.stack(ms))


# -- metrics -------------------------------------------------------------------------------------
def flat_region_errors(decoded: np.ndarray, clip: np.ndarray, bg_rgb) -> dict:
    """Colour error (levels, max over RGB) inside flat regions: pixels whose 5x5 neighbourhood
    (torus) holds a single colour in the source. Returned separately for background and object."""
    bg = (clip == np.array(bg_rgb, dtype=np.uint8)).all(-1)  # (F, H, W)
    interior_bg, interior_obj = bg.copy(), ~bg
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            sh = np.roll(bg, (dy, dx), axis=(1, 2))
            interior_bg &= sh
            interior_obj &= ~sh
    err = np.abs(decoded.astype(np.int16) - clip.astype(np.int16)).max(-1)  # (F, H, W)
    out = {}
    for name, m in (("background", interior_bg), ("object", interior_obj)):
        e = err[m]
        out[name] = {"pixels": int(e.size), "mean": float(e.mean()) if e.size else None,
                     "p99": float(np.percentile(e, 99)) if e.size else None,
                     "max": int(e.max()) if e.size else None}
    return out


def evaluate(folder: Path, seed: int, n_clips: int, long_seconds: float) -> dict:
    """Through the real loader: held-out 33-frame clips and one long clip (chunked encode,
    streamed `iter_decode`)."""
    from semgen_cli.components import load_vae

    vae = load_vae(f"wan:{folder}")
    ps, errs, lat, per_latent = [], {"background": [], "object": []}, [], []
    for i in range(n_clips):
        spec = sample_spec(np.random.default_rng([seed + EVAL_SEED_OFFSET, 1_000_000 + i]), seconds=EVAL_FRAMES / FPS, fps=FPS)
        clip = render(spec)
        z = vae.encode(clip)
        lat.append(z)
        dec = vae.decode(z)
        ps.append(psnr(dec, clip))
        per_latent.append([psnr(dec[a:b], clip[a:b]) for a, b in latent_frame_spans(len(clip))])
        fe = flat_region_errors(dec, clip, BACKGROUNDS[spec.background])
        for k in errs:
            if fe[k]["mean"] is not None:
                errs[k].append(fe[k])
    zs = torch.cat([z.flatten(1) for z in lat], 1)  # (C, N)
    spec = sample_spec(np.random.default_rng([seed + EVAL_SEED_OFFSET, 2_000_000]), seconds=long_seconds, fps=FPS)
    long_clip = render(spec)
    long_clip = long_clip[: vae.valid_frames(long_clip.shape[0])]
    t0 = time.perf_counter()
    z = vae.encode(long_clip)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = np.concatenate(list(vae.iter_decode(z, chunk_latent_frames=4)), 0)
    t_dec = time.perf_counter() - t0
    long_fe = flat_region_errors(dec, long_clip, BACKGROUNDS[spec.background])
    first, last = psnr(dec[:32], long_clip[:32]), psnr(dec[-32:], long_clip[-32:])
    return {
        "fingerprint": vae.fingerprint,
        "heldout_clips": n_clips,
        "heldout_psnr_mean": float(np.mean(ps)),
        "heldout_psnr_min": float(np.min(ps)),
        "heldout_psnr_per_latent_frame": [round(float(v), 2) for v in np.mean(per_latent, 0)],
        "heldout_flat_error_levels": {k: {"mean": float(np.mean([e["mean"] for e in v])),
                                          "p99_mean": float(np.mean([e["p99"] for e in v])),
                                          "max": int(np.max([e["max"] for e in v]))} for k, v in errs.items()},
        "normalised_latent_mean_abs": float(zs.mean(1).abs().mean()),
        "normalised_latent_std_range": [float(zs.std(1).min()), float(zs.std(1).max())],
        "long_clip": {"caption": spec.caption, "frames": int(long_clip.shape[0]), "latent_shape": list(z.shape),
                      "psnr": psnr(dec, long_clip), "psnr_first_4s": first, "psnr_last_4s": last,
                      "flat_error_levels": long_fe, "encode_s": t_enc, "decode_s": t_dec},
    }


# -- training ------------------------------------------------------------------------------------
def encode_chunks(model, x: torch.Tensor, lead: int, encoder_grad: bool = True, carry: bool = False,
                  first: bool = True) -> torch.Tensor:
    """Posterior mean of `x` (n, 3, 1 + 4m, h, w), chunk by chunk through the
    causal caches as diffusers' `_encode`/`_decode` do, with the first `lead` latent frames run
    without gradients: they only bring the caches into the state they have deep inside a long clip.
    Returns the posterior mean of every latent frame (the warm-up ones carry no gradient).
    `carry`: continue from the caches as they are (a stream's window; `x` is 4m frames unless
    `first`, the clip's first window) instead of clearing them."""
    if not carry:
        model.clear_cache()
    start = 1 if first else 0
    chunks = ([x[:, :, :1]] if first else []) + [x[:, :, i:i + 4] for i in range(start, x.shape[2], 4)]
    enc = []
    for i, chunk in enumerate(chunks):
        model._enc_conv_idx = [0]
        with torch.set_grad_enabled(encoder_grad and i >= lead):
            enc.append(model.encoder(chunk, feat_cache=model._enc_feat_map, feat_idx=model._enc_conv_idx))
    with torch.set_grad_enabled(encoder_grad):
        mu = model.quant_conv(torch.cat(enc, 2))[:, : model.config.z_dim]  # the posterior's mean half
    return mu


def decode_tail(model, z: torch.Tensor, lead: int, carry: bool = False, first: bool = True) -> torch.Tensor:
    """Decode latents `z` (n, C, T, h, w) frame by frame through the decoder's caches; the first
    `lead` latent frames without gradients. Returns the frames of latent frames lead.. in [-1, 1].
    `carry`: continue from the caches as they are and leave them filled (a stream's window, the
    clip's first one when `first`) instead of clearing them before and after."""
    if not carry:
        model.clear_cache()
    x = model.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        model._conv_idx = [0]
        with torch.set_grad_enabled(i >= lead):
            out = model.decoder(x[:, :, i:i + 1], feat_cache=model._feat_map, feat_idx=model._conv_idx,
                                first_chunk=first and i == 0)
        if i >= lead:
            outs.append(out)
    if not carry:
        model.clear_cache()
    return torch.clamp(torch.cat(outs, 2), -1.0, 1.0)


def with_noise(mu: torch.Tensor, noise: float) -> torch.Tensor:
    """Posterior mean plus a little noise (`noise` times its RMS, e.g. 10 %): the loader encodes
    with the mean, and sampling at the initial unit variance buries the signal for hundreds of steps."""
    return mu + noise * mu.detach().square().mean().sqrt() * torch.randn_like(mu)


class Streams:
    """Batch rows streamed window by window through the VAE's causal caches (truncated backprop
    through time). `next_window` gives the next `1 + 4k` (a clip's first window: the causal first
    frame and k chunks) or `4k` frames of every row, with `first` telling whether the caches start
    empty. The rows of a group share one clip length and are drawn again (caches cleared) when
    they end or the crop size changes. `groups` streams take turns, each with its own caches
    (`enter` puts them into the model, `leave` detaches and keeps them), so consecutive steps see
    different clips: one group alone would train on the same few clips for dozens of steps."""

    def __init__(self, rng: np.random.Generator, chunks: int, max_seconds: float, groups: int = 1):
        self.rng, self.chunks, self.max_frames = rng, chunks, max(1 + 4 * chunks, int(max_seconds * FPS))
        self.groups = [{"clip": None, "pos": 0, "key": None, "caches": None} for _ in range(groups)]
        self.turn = 0

    @property
    def clip(self):
        """The current group's (inputs, targets, object weights) of its whole clips."""
        return self.groups[self.turn]["clip"]

    def next_window(self, n: int, crop: int):
        """(inputs, targets, object weights, first) of the current group's next window for `n` rows at `crop`."""
        g = self.groups[self.turn]
        if g["clip"] is None or g["key"] != (n, crop) or g["pos"] >= g["clip"][0].shape[2]:
            length = 1 + 4 * int(self.rng.integers(self.chunks, (self.max_frames - 1) // 4 + 1))
            g.update(clip=batch(self.rng, n, length, crop), pos=0, key=(n, crop), caches=None)
        a = g["pos"]
        b = a + (1 + 4 * self.chunks if a == 0 else 4 * self.chunks)
        g["pos"] = b
        x, y, m = (t[:, :, a:b] for t in g["clip"])
        return x, y, m, a == 0

    def enter(self, model) -> None:
        """Put the current group's caches into `model` (a first window clears them anyway)."""
        caches = self.groups[self.turn]["caches"]
        if caches is not None:
            model._enc_feat_map, model._feat_map = caches

    def leave(self, model) -> None:
        """After the step: detach the model's caches, keep them with the group, pass the turn."""
        detach_caches(model)
        self.groups[self.turn]["caches"] = (model._enc_feat_map, model._feat_map)
        self.turn = (self.turn + 1) % len(self.groups)

    def restart(self) -> None:
        """Draw new clips for every group: something else (a save's statistics) used the caches."""
        for g in self.groups:
            g.update(clip=None, caches=None)


def stream_step(model, x: torch.Tensor, first: bool, noise: float, encoder_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode and decode one window `x` (n, 3, F, h, w) of a stream through the caches left by the
    windows before it (cleared when `first`). Returns (posterior mean, reconstruction in [-1, 1])."""
    if first:
        model.clear_cache()
    mu = encode_chunks(model, x, 0, encoder_grad=encoder_grad, carry=True, first=first)
    return mu, decode_tail(model, with_noise(mu, noise), 0, carry=True, first=first)


def detach_caches(model) -> None:
    """Cut the caches' history after a step: the next window reads their values, not their graph."""
    model._enc_feat_map = [t.detach() if torch.is_tensor(t) else t for t in model._enc_feat_map]
    model._feat_map = [t.detach() if torch.is_tensor(t) else t for t in model._feat_map]


def tail_frames(lead: int) -> int:
    """Index of the first frame decoded from latent frame `lead` (the causal first frame is alone)."""
    return 0 if lead == 0 else 1 + 4 * (lead - 1)


def zero_init_residual(model):
    """Zero the last layer of every residual branch so the residual VAE starts as its shortcut path."""
    from torch import nn
    from diffusers.models.autoencoders import autoencoder_kl_wan as W

    n = 0
    for mod in model.modules():
        tgt = []
        if isinstance(mod, W.WanResidualBlock):
            tgt = [mod.conv2]
        elif isinstance(mod, W.WanAttentionBlock):
            tgt = [mod.proj]
        elif isinstance(mod, W.WanResidualDownBlock) and mod.downsampler is not None:
            d = mod.downsampler
            tgt = [d.time_conv] if d.mode == "downsample3d" else [d.resample[-1]]
        elif isinstance(mod, W.WanResidualUpBlock) and mod.upsampler is not None and mod.avg_shortcut is not None:
            tgt = [mod.upsampler.resample[-1]]
        for t in tgt:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)
            n += 1
    return n


class PatchDiscriminator(torch.nn.Module):
    """Per-frame PatchGAN (pix2pix): 3 strided 4x4 convs with GroupNorm and LeakyReLU, then a 1-channel
    3x3 conv; a 64x64 frame gives an 8x8 grid of real/fake logits, each seeing a ~30 px patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        nn = torch.nn
        layers, c_in = [], 3
        for i, c in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1)]
            if i:
                layers += [nn.GroupNorm(8, c)]
            layers += [nn.LeakyReLU(0.2)]
            c_in = c
        layers += [nn.Conv2d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (n, 3, F, h, w) in [-1, 1] -> logits (n*F, 1, h/8, w/8)."""
        n, c, f, h, w = video.shape
        return self.net(video.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w))


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """||d rec / d last|| / ||d adv / d last||, clamped: the adversarial gradient at the decoder's last
    layer is scaled to the reconstruction one (Esser et al. 2021, taming-transformers)."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def new_decoder(old, width: int):
    """`old`'s config with `decoder_base_dim=width`, its encoder, quant_conv and post_quant_conv
    copied, the decoder freshly initialised."""
    import diffusers

    config = {k: v for k, v in old.config.items() if not k.startswith("_")}
    model = diffusers.AutoencoderKLWan(**{**config, "decoder_base_dim": width})
    for name in ("encoder", "quant_conv", "post_quant_conv"):
        getattr(model, name).load_state_dict(getattr(old, name).state_dict())
    return model


def save(model, out: Path, seed: int, keep_stats: bool = False) -> None:
    """Latent statistics on held-out 64x64 clips -> config latents_mean / latents_std (unless
    `keep_stats`: a frozen encoder keeps the ones it has), then save."""
    model.eval()
    if keep_stats:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        print(f"saved {out} (decoder only; latent statistics kept)", flush=True)
        return
    mus = []
    with torch.no_grad():
        for i in range(32):
            spec = sample_spec(np.random.default_rng([seed + EVAL_SEED_OFFSET, i]), seconds=EVAL_FRAMES / FPS, fps=FPS)
            x = torch.from_numpy(render(spec)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            mus.append(model.encode(x).latent_dist.mean[0].flatten(1))  # (C, T*h*w)
    mu = torch.cat(mus, 1)
    mean, std = mu.mean(1), mu.std(1).clamp_min(1e-4)
    model.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                             latents_std=[round(float(v), 6) for v in std])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    print(f"saved {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB); "
          f"latents_mean {mean.numpy().round(3).tolist()} latents_std {std.numpy().round(3).tolist()}", flush=True)


def check_args(args) -> None:
    """The flag combinations train_vae.py refuses, before anything is built."""
    if args.decoder_base_dim is not None and (args.init is None or not args.freeze_encoder):
        raise SystemExit("--decoder-base-dim needs --init and --freeze-encoder: it keeps that VAE's encoder")
    if args.freeze_encoder and args.init is None:
        raise SystemExit("--freeze-encoder needs --init: a random encoder is not worth keeping")
    if args.stream_seconds and ((args.frames - 1) % 4 or args.frames < 5 or args.warmup_latents):
        raise SystemExit("--stream-seconds needs --frames 4k+1 with k >= 1 and no --warmup-latents")
    if args.stream_groups < 1:
        raise SystemExit(f"--stream-groups must be at least 1, got {args.stream_groups}")


def build_model(args):
    """The VAE to train: a new one, the --init one, or the --init one with a new decoder of
    --decoder-base-dim; with --freeze-encoder its encoder takes no gradients."""
    import diffusers

    z = CONFIG["z_dim"]
    if args.decoder_base_dim is not None:
        model = new_decoder(diffusers.AutoencoderKLWan.from_pretrained(args.init), args.decoder_base_dim)
    elif args.init is not None:  # continue a saved VAE (optimizer state starts fresh)
        model = diffusers.AutoencoderKLWan.from_pretrained(args.init)
    else:
        model = diffusers.AutoencoderKLWan(**{**CONFIG, "base_dim": args.base_dim}, is_residual=args.residual,
                                           latents_mean=[0.0] * z, latents_std=[1.0] * z)
    if args.zero_init and args.init is None:
        print(f"zero-initialised {zero_init_residual(model)} residual branch outputs", flush=True)
    if args.freeze_encoder:
        for mod in (model.encoder, model.quant_conv):
            mod.requires_grad_(False)
    return model


@torch.no_grad()
def batch_psnrs(diff: torch.Tensor, m: torch.Tensor) -> tuple[float, float, float, float, float]:
    """PSNR of a batch's reconstruction error `diff` (images in [-1, 1], peak-to-peak 2): whole,
    first frame, the rest, background (`m` == 0) and object pixels."""
    def db(sq_err):
        return float(10 * torch.log10(4.0 / sq_err.mean().clamp_min(1e-10)))

    sq = diff.square().mean(1, keepdim=True)  # (n, 1, F, h, w)
    p = db(sq)
    p_first = db(sq[:, :, :1])
    p_rest = db(sq[:, :, 1:]) if sq.shape[2] > 1 else p_first
    return p, p_first, p_rest, db(sq[m == 0]), db(sq[m > 0]) if (m > 0).any() else p


def main(argv=None) -> None:
    args = parse_args(argv)
    check_args(args)
    # the whole command line first: a run stopped early (and continued with --init) leaves no
    # train_report.json, and its log is then the only record of how the VAE was made
    print("train_vae.py " + " ".join(map(str, sys.argv[1:] if argv is None else argv)), flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 1])
    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    config = {k: v for k, v in model.config.items() if not k.startswith("_") and not k.startswith("latents_")}
    print(f"AutoencoderKLWan {n_params / 1e6:.2f} M params, config {config}", flush=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"training {sum(p.numel() for p in trainable) / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    disc = PatchDiscriminator() if args.gan > 0 else None
    d_opt = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0) if disc else None
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    full_from = int(args.steps * (1 - args.full_frac))
    streams = Streams(rng, (args.frames - 1) // 4, args.stream_seconds, args.stream_groups) if args.stream_seconds else None
    t_start = time.perf_counter()
    model.train()
    hist = []
    for step in range(args.steps):
        full = step >= full_from
        crop, n = (64, max(1, args.batch // 4)) if full else (args.crop, args.batch)
        if streams is not None:
            x, y, m, first = streams.next_window(n, crop)
            streams.enter(model)
            mu, rec = stream_step(model, x, first, args.noise, encoder_grad=not args.freeze_encoder)
        else:
            lead = int(rng.integers(0, args.warmup_latents + 1)) if args.warmup_latents else 0  # latent frames run without gradients
            x, y, m = batch(rng, n, args.frames, crop, extra=4 * lead)
            mu = encode_chunks(model, x, lead, encoder_grad=not args.freeze_encoder)
            rec = decode_tail(model, with_noise(mu, args.noise), lead)
            y, m = y[:, :, tail_frames(lead):], m[:, :, tail_frames(lead):]
        w = 1.0 + args.obj_weight * m
        diff = rec - y
        l1 = (w * diff.abs()).mean()
        l2 = (w * diff.square()).mean()
        kl = 0.5 * mu.square().mean()  # the mean part of the KL: keeps the latent scale bounded
        loss = l1 + l2 + args.kl * kl
        adv_w = 0.0
        if disc is not None and step >= args.gan_start:
            disc.requires_grad_(False)
            adv = -disc(rec).mean()
            adv_w = adaptive_weight(l1 + l2, adv, model.decoder.conv_out.weight) * args.gan
            loss = loss + adv_w * adv
            adv_w = float(adv_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        if streams is not None:
            streams.leave(model)
        d_loss = 0.0
        if disc is not None:  # hinge loss on clean targets vs reconstructions
            disc.requires_grad_(True)
            d = torch.relu(1 - disc(y)).mean() + torch.relu(1 + disc(rec.detach())).mean()
            d_opt.zero_grad(set_to_none=True)
            d.backward()
            d_opt.step()
            d_loss = float(d)
        p, p_first, p_rest, p_bg, p_obj = batch_psnrs(diff, m)
        hist.append((float(l1.detach()), p, float(kl.detach()), p_first, p_rest, p_bg, p_obj, d_loss, adv_w))
        if args.save_every and step and step % args.save_every == 0:
            save(model, args.out, args.seed, keep_stats=args.freeze_encoder)
            model.train()
            if streams is not None:
                streams.restart()
        if step % 20 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t_start
            recent = np.mean(hist[-20:], 0)
            eta = el / (step + 1) * (args.steps - step - 1)
            print(f"step {step:5d}/{args.steps} {'64x64' if full else f'{crop}x{crop}'} l1 {recent[0]:.4f} "
                  f"psnr {recent[1]:5.2f} (first {recent[3]:5.2f} rest {recent[4]:5.2f} bg {recent[5]:5.2f} obj {recent[6]:5.2f}) kl {recent[2]:.2f} lr {sched.get_last_lr()[0]:.2e} "
                  + (f"d {recent[7]:.3f} adv-w {recent[8]:.3f} " if disc is not None else "")
                  + f"elapsed {el / 60:5.1f} min eta {eta / 60:5.1f} min", flush=True)
    train_s = time.perf_counter() - t_start

    save(model, args.out, args.seed, keep_stats=args.freeze_encoder)

    t0 = time.perf_counter()
    report = evaluate(args.out, args.seed, args.eval_clips, args.long_seconds)
    report.update({
        "train": {"init": str(args.init) if args.init else None, "steps": args.steps, "seed": args.seed, "threads": args.threads, "batch": args.batch,
                  "frames": args.frames, "crop": args.crop, "full_frac": args.full_frac, "lr": args.lr,
                  "kl": args.kl, "noise": args.noise, "obj_weight": args.obj_weight, "gan": args.gan, "gan_start": args.gan_start, "freeze_encoder": args.freeze_encoder,
                  "warmup_latents": args.warmup_latents, "stream_seconds": args.stream_seconds, "stream_groups": args.stream_groups, "wall_s": round(train_s, 1),
                  "final_train_psnr_64": float(np.mean([h[1] for h in hist[-20:]]))},
        "params": n_params, "config": config, "eval_s": round(time.perf_counter() - t0, 1),
    })
    (args.out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
