"""Video VAEs behind one small interface: `wan:PATH`, `ltx:PATH`, `cogvideox:PATH`, `tiny`.

The latent generator of SemanticGen (paper §3) works on the latents of a video VAE; the paper
builds on Wan2.1, whose VAE is causal in time (4x time, 8x space). `encode` returns the
*normalised* posterior mean, the way diffusers' Wan pipelines feed latents to the DiT, and
`decode` undoes that normalisation.

Long videos: for Wan the encoder and decoder are driven chunk by chunk here, with the causal
convolution cache carried between chunks (1 frame, then 4 at a time to encode; one latent frame
at a time to decode), so device memory does not grow with video length and the result equals a
whole-video pass. LTX and CogVideoX are encoded/decoded in one call by their own classes.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch

from semgen_cli.components._common import (
    TINY_SEED, fingerprint, freeze, state_fingerprint, load_error, place, quiet_loading, parse_spec, pick_subfolder, read_config,
    require_folder, seeded, toy_folder,
)
from semgen_cli.errors import ConfigError, InputError

KINDS = ("wan", "ltx", "cogvideox")
_CLASSES = {"wan": "AutoencoderKLWan", "ltx": "AutoencoderKLLTXVideo", "cogvideox": "AutoencoderKLCogVideoX"}

# The tiny VAE: the real Wan class, a few thousand parameters, the same 4x/8x strides.
TINY_WAN_CONFIG = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
)


DECODER_PARTS = ("decoder.", "post_quant_conv.")
"""State-dict prefixes of the decoder side: the latents do not depend on them."""


def encoder_fingerprint(kind: str, module: torch.nn.Module) -> str:
    """Fingerprint of what the latents depend on: every weight outside the decoder side and the
    config without decoder-only keys (`decoder_base_dim`, ...; the latent statistics stay in).

    Two VAEs with the same encoder fingerprint give the same normalised latents, so runs trained
    on one's latents stay valid with the other's decoder: a decoder can be retrained or widened on
    a frozen encoder, as Stability did for Stable Diffusion's VAE (sd-vae-ft-mse).
    """
    state = {k: v for k, v in module.state_dict().items() if not k.startswith(DECODER_PARTS)}
    config = {k: v for k, v in dict(module.config).items() if "decoder" not in k}
    return state_fingerprint(f"{kind}-encoder", type(module).__name__, state, config)


class VAE:
    """A frozen video VAE. `encode` uint8 frames (F, H, W, 3) -> normalised latents (C, T, h, w).
    `fingerprint` covers all of it; `encoder_fingerprint` only what the latents depend on."""

    def __init__(self, spec: str, kind: str, module: torch.nn.Module, fingerprint: str,
                 device: str | torch.device, dtype: torch.dtype):
        self.spec, self.kind, self.module, self.fingerprint = spec, kind, module, fingerprint
        self.device, self.dtype = torch.device(device), dtype
        cfg = module.config
        if kind == "wan":
            self.latent_channels = int(cfg.z_dim)
            self.temporal_stride = int(cfg.scale_factor_temporal or 4)
            self.spatial_stride = int(cfg.scale_factor_spatial or 8)
            mean, std, scale = cfg.latents_mean, cfg.latents_std, 1.0
        elif kind == "ltx":
            self.latent_channels = int(cfg.latent_channels)
            self.temporal_stride = int(module.temporal_compression_ratio)
            self.spatial_stride = int(module.spatial_compression_ratio)
            mean, std, scale = module.latents_mean.tolist(), module.latents_std.tolist(), float(cfg.scaling_factor)
        else:  # cogvideox
            self.latent_channels = int(cfg.latent_channels)
            self.temporal_stride = int(cfg.temporal_compression_ratio)
            self.spatial_stride = 2 ** (len(cfg.block_out_channels) - 1)
            mean, std, scale = None, None, float(cfg.scaling_factor)
        c = self.latent_channels
        mean = torch.zeros(c) if mean is None else torch.tensor(mean, dtype=torch.float32)
        std = torch.ones(c) if std is None else torch.tensor(std, dtype=torch.float32)
        if mean.numel() != c or std.numel() != c:
            raise InputError(f"VAE {spec!r}: latents_mean/latents_std have {mean.numel()}/{std.numel()} "
                             f"entries but the VAE has {c} latent channels; fix its config.json")
        # normalised = (mu - mean) * scale / std, per channel, as the diffusers pipelines do.
        self.scaling = {"mean": mean.tolist(), "std": std.tolist(), "scale": scale}
        self._mean = mean.view(c, 1, 1, 1)
        self._std = std.view(c, 1, 1, 1)
        self._scale = scale

    @functools.cached_property
    def encoder_fingerprint(self) -> str:
        """Hashed on first use (extract records it; generate needs it only when a decoder differs)."""
        return encoder_fingerprint(self.kind, self.module)

    # -- shapes ---------------------------------------------------------------------------------
    def valid_frames(self, n: int) -> int:
        """Largest frame count <= n the VAE accepts (stride*k + 1); 0 if n < 1."""
        if n < 1:
            return 0
        return (n - 1) // self.temporal_stride * self.temporal_stride + 1

    def frames_for_latents(self, t: int) -> int:
        return self.temporal_stride * (t - 1) + 1

    def latents_for_frames(self, f: int) -> int:
        return (f - 1) // self.temporal_stride + 1

    def describe(self) -> dict:
        return {
            "class": type(self.module).__name__, "spec": self.spec, "fingerprint": self.fingerprint,
            "encoder_fingerprint": self.encoder_fingerprint,
            "latent_channels": self.latent_channels, "temporal_stride": self.temporal_stride,
            "spatial_stride": self.spatial_stride, "dtype": str(self.dtype).removeprefix("torch."),
            "scaling": self.scaling,
        }

    # -- normalisation --------------------------------------------------------------------------
    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean (C, T, h, w) -> the normalised latents the DiT sees."""
        mean, std = self._mean.to(mu), self._std.to(mu)
        return (mu - mean) * self._scale / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean.to(z), self._std.to(z)
        return z * std / self._scale + mean

    # -- encode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """uint8 frames (F, H, W, 3), F valid -> normalised posterior mean (C, T, h, w), float32 on CPU."""
        frames = self._check_frames(frames)
        if self.kind == "wan":
            return torch.cat(list(self._wan_encode_chunks(frames)), dim=1)
        x = self._to_input(frames)  # (1, 3, F, H, W)
        if self.kind == "ltx":
            mu = self.module.encode(x).latent_dist.mean
        else:
            mu = self.module.encode(x)[0].mean
        return self.normalize(mu[0].float()).cpu()

    def _wan_encode_chunks(self, frames: torch.Tensor) -> Iterator[torch.Tensor]:
        """Run Wan's causal encoder on 1 frame, then 4 at a time, keeping the conv cache."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

        m = self.module
        cache = [None] * _count_causal_convs(m.encoder)
        c = self.latent_channels
        starts = [0] + list(range(1, frames.shape[0], self.temporal_stride))
        for i, s in enumerate(starts):
            e = 1 if i == 0 else s + self.temporal_stride
            x = self._to_input(frames[s:e])  # (1, 3, f, H, W) on device
            if m.config.patch_size is not None:
                x = patchify(x, patch_size=m.config.patch_size)
            out = m.encoder(x, feat_cache=cache, feat_idx=[0])
            mu = m.quant_conv(out)[0, :c]  # (C, t, h, w); quant_conv is a 1x1x1 conv
            yield self.normalize(mu.float()).cpu()

    def _check_frames(self, frames) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 \
                or frames.shape[-1] != 3:
            raise InputError(f"VAE {self.spec!r}: frames must be uint8 (F, H, W, 3), got "
                             f"{getattr(frames, 'dtype', type(frames))} {tuple(getattr(frames, 'shape', ()))}")
        f, h, w, _ = frames.shape
        if f < 1 or self.valid_frames(f) != f:
            raise InputError(f"VAE {self.spec!r}: {f} frames is not a valid count; "
                             f"trim to {self.temporal_stride}k+1 frames (vae.valid_frames({f}) = {self.valid_frames(f)})")
        if h % self.spatial_stride or w % self.spatial_stride:
            raise InputError(f"VAE {self.spec!r}: frame size {h}x{w} is not a multiple of "
                             f"{self.spatial_stride}; resize or crop the video first")
        return frames

    def _to_input(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.device).permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, F, H, W)
        return x.to(self.dtype) / 127.5 - 1.0

    # -- decode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents (C, T, h, w) -> uint8 frames (4(T-1)+1, H, W, 3)."""
        return np.concatenate(list(self.iter_decode(latents, chunk_latent_frames=max(1, latents.shape[1]))), 0)

    @torch.no_grad()
    def iter_decode(self, latents: torch.Tensor, chunk_latent_frames: int = 4) -> Iterator[np.ndarray]:
        """Stream uint8 frames (f, H, W, 3), `chunk_latent_frames` latent frames at a time.

        For Wan the causal decoder cache is carried between chunks, so the concatenation equals
        `decode` and memory stays flat; other VAEs decode whole and are cut into chunks.
        """
        if chunk_latent_frames < 1:
            raise ConfigError(f"chunk_latent_frames must be >= 1, got {chunk_latent_frames}")
        if latents.ndim != 4 or latents.shape[0] != self.latent_channels:
            raise InputError(f"VAE {self.spec!r}: latents must be ({self.latent_channels}, T, h, w), "
                             f"got {tuple(latents.shape)}")
        z = self.denormalize(latents.to(self.device, torch.float32)).to(self.dtype).unsqueeze(0)
        t_total = z.shape[2]
        if self.kind != "wan":
            if self.kind == "ltx":
                temb = torch.zeros(1, device=self.device, dtype=self.dtype) \
                    if self.module.config.timestep_conditioning else None
                video = self.module.decode(z, temb=temb).sample
            else:
                video = self.module.decode(z).sample
            frames = _to_uint8(video[0])
            for s in range(0, t_total, chunk_latent_frames):
                a = 0 if s == 0 else self.frames_for_latents(s)
                b = self.frames_for_latents(min(s + chunk_latent_frames, t_total))
                yield frames[a:b]
            return

        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        m = self.module
        cache = [None] * _count_causal_convs(m.decoder)
        for s in range(0, t_total, chunk_latent_frames):
            x = m.post_quant_conv(z[:, :, s:s + chunk_latent_frames])  # 1x1x1 conv
            outs = []
            for i in range(x.shape[2]):  # the Wan decoder takes one latent frame per call
                outs.append(m.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0],
                                      first_chunk=(s + i == 0)))
            out = torch.cat(outs, 2)
            if m.config.patch_size is not None:
                out = unpatchify(out, patch_size=m.config.patch_size)
            yield _to_uint8(out[0])


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def _count_causal_convs(module: torch.nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def load_vae(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VAE:
    """Resolve a VAE spec (`wan:PATH`, `ltx:PATH`, `cogvideox:PATH`, `tiny`, `toy`) to a frozen VAE."""
    import diffusers  # noqa: F401  (imported first so quiet_loading can quiet its logger)

    with quiet_loading():
        return _load_vae(spec, device, dtype)


def _load_vae(spec: str, device, dtype: torch.dtype) -> VAE:
    import diffusers

    if spec == "toy":  # the bundled toy-world VAE, recorded as "toy" so runs stay portable
        vae = _load_vae("wan:" + toy_folder("vae", "VAE"), device, dtype)
        vae.spec = "toy"
        return vae
    kind, path = parse_spec(spec, "VAE", KINDS, ("tiny",))
    if kind == "tiny":
        with seeded(TINY_SEED):
            module = diffusers.AutoencoderKLWan(**TINY_WAN_CONFIG)
        module = freeze(module)
        fp = fingerprint(f"tiny-wan-vae:seed{TINY_SEED}", module, module.config)
        return VAE(spec, "wan", place(module, device, dtype), fp, device, dtype)

    folder = pick_subfolder(require_folder(path, spec, "VAE"), "vae")
    config = read_config(folder, spec, "VAE")
    cls_name = _CLASSES[kind]
    found = config.get("_class_name")
    if found is not None and found != cls_name:
        raise InputError(f"VAE folder {folder} holds a {found}, not a {cls_name}: "
                         f"use the spec prefix that matches it, or another folder")
    cls = getattr(diffusers, cls_name)
    try:
        module = cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many kinds; the user needs one line
        raise load_error("VAE", spec, folder, exc) from exc
    module = freeze(module)
    fp = fingerprint(kind, module, module.config)
    return VAE(spec, kind, place(module, device, dtype), fp, device, dtype)
