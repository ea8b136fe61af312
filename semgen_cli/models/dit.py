"""The video DiT of both SemanticGen stages: Wan2.1-style blocks with in-context semantic tokens.

Paper §3.1 and appendix A (the base model: 3D self-attention, text cross-attention, timestep
modulation with normalisation before every attention / FFN), §3.2 "in-context conditioning"
(compressed semantic tokens concatenated to the noisy latents, ``z_input := [z_t, z_sem]``, with
RAE-style noise on ``z_sem``) and §3.4 (shifted-window attention for long videos).

One class serves both stages through its config:

- stage 1 (latent generator): VAE latents ``(B, 16, T, H, W)``, patch ``(1, 2, 2)``,
  ``semantic_dim > 0``, ``attention="swin"`` for long videos;
- stage 2 (semantic generator): compressed semantic tokens ``(B, 8, Ts, hs, ws)``,
  patch ``(1, 1, 1)`` (each token is its own patch), ``semantic_dim = 0``, full attention.

The layer layout mirrors diffusers' ``WanTransformer3DModel`` so Wan2.1 weights load one-to-one
(see ``semgen_cli/models/wan.py``): with full attention and no semantic tokens the output equals
Wan's for the same weights. Differences from Wan, all inert for Wan weights:

- ``t`` is in ``[0, 1]`` (rectified flow, ``semgen_cli.flow``); the sinusoidal embedding sees
  ``t * timestep_scale`` (1000, the value diffusers' Wan pipeline feeds its transformer).
- RoPE is computed from explicit (possibly fractional) positions, not a table of 1024.
- An optional text key-padding mask (Wan attends to all text tokens, zero padding included).
- An optional video key-padding mask ``token_mask`` for full attention (stage 2 batches clips
  of different lengths padded at the end; :func:`frame_mask_to_token_mask` builds it).
- Semantic tokens: ``semantic_embed`` (Linear to width) and ``sigma_embed`` (noise level), both
  absent from Wan checkpoints and left freshly initialised.

Semantic tokens (stage 1): a semantic frame at latent time ``tau`` gets RoPE time ``tau``; its
token at grid cell ``(i, j)`` of an ``hs x ws`` grid gets spatial position
``((i + 0.5) * Hp / hs - 0.5, (j + 0.5) * Wp / ws - 0.5)`` on the ``Hp x Wp`` patch grid (cell
centres aligned; fractional positions are fine for RoPE). They are modulated (AdaLN) by the
time embedding plus an embedding of their own noise level ``semantic_sigma`` (the ``sigma`` of
``z_sem + sigma * eps``, the same input at training and at inference), read text like the video
tokens, and are dropped before the output head.

The layers (embeddings, RoPE, attention, the block and its AdaLN ``modulate`` / ``gate``) live in
``semgen_cli/models/blocks.py``; this module holds the config, the token positions and the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from semgen_cli.config import from_dict_strict
from semgen_cli.errors import ConfigError
from semgen_cli.models.attention import WindowPlan, window_plan
from semgen_cli.models.blocks import DiTBlock, LayerNormFP32, MLPEmbedder, RoPE3D, modulate, timestep_embedding

ATTENTION_KINDS = ("full", "swin")
QK_NORMS = ("rms_norm_across_heads", None)


@dataclass
class DiTConfig:
    """Architecture of a :class:`DiT`. Its fields are the model's ``config.json``."""

    in_channels: int = 16
    """Channels of the input (16 for Wan2.1 VAE latents, 8 for compressed semantics)."""
    out_channels: int | None = None
    """Channels of the predicted velocity; None means ``in_channels``."""
    patch: tuple[int, int, int] = (1, 2, 2)
    """Patch size (t, h, w); ``(1, 1, 1)`` is the patchless stage-2 mode (one token per cell)."""
    dim: int = 1536
    """Model width."""
    layers: int = 30
    """Number of transformer blocks."""
    heads: int = 12
    """Attention heads; ``dim / heads`` must be even and at least 6 (3D RoPE)."""
    ffn_dim: int = 8960
    """Hidden width of the feed-forward network."""
    text_dim: int = 4096
    """Width of the text-encoder embeddings fed to cross-attention."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    eps: float = 1e-6
    """Epsilon of LayerNorm / RMSNorm."""
    rope_theta: float = 10000.0
    """RoPE base of each of the t/h/w axes."""
    qk_norm: str | None = "rms_norm_across_heads"
    """Normalisation of q and k: RMSNorm over the full width (Wan) or None."""
    cross_attn_norm: bool = True
    """Affine LayerNorm before text cross-attention (True in Wan2.1)."""
    attention: str = "full"
    """Self-attention: "full" or "swin" (shifted windows along time, paper §3.4)."""
    window: int = 8
    """Swin window ``T_w`` in latent frames; odd layers shift by ``window // 2``."""
    semantic_dim: int = 0
    """Channels of in-context semantic tokens (compressor dim); 0 = no semantic tokens."""
    timestep_scale: float = 1000.0
    """``t`` in [0, 1] is multiplied by this before the sinusoidal embedding (Wan uses 0..1000)."""

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self._check_sizes()
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"DiT attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.attention == "swin" and self.window < 2:
            raise ConfigError(f"DiT swin window must be at least 2 latent frames, got {self.window}")
        if self.qk_norm not in QK_NORMS:
            raise ConfigError(f"DiT qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.semantic_dim < 0:
            raise ConfigError(f"DiT semantic_dim must be >= 0 (0 = none), got {self.semantic_dim}")
        if self.eps <= 0 or self.rope_theta <= 0 or self.timestep_scale <= 0:
            raise ConfigError("DiT eps, rope_theta and timestep_scale must be positive")

    def _check_sizes(self) -> None:
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ConfigError(f"DiT patch must be three positive ints (t, h, w), got {self.patch}")
        for name in ("in_channels", "out_channels", "dim", "layers", "heads", "ffn_dim", "text_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DiT {name} must be positive, got {getattr(self, name)}")
        if self.freq_dim < 2 or self.freq_dim % 2:
            raise ConfigError(f"DiT freq_dim must be a positive even number, got {self.freq_dim}")
        if self.dim % self.heads:
            raise ConfigError(f"DiT dim {self.dim} is not divisible by heads {self.heads}")
        head_dim = self.dim // self.heads
        if head_dim % 2 or head_dim < 6:
            raise ConfigError(f"DiT head dim {head_dim} (dim / heads) must be even and >= 6 for 3D RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        return from_dict_strict(cls, d, "DiT config")

    @classmethod
    def from_wan_config(cls, wan: dict, **overrides) -> "DiTConfig":
        """Config of the DiT equivalent to a diffusers ``WanTransformer3DModel`` config dict."""
        if wan.get("image_dim") is not None or wan.get("added_kv_proj_dim") is not None:
            raise ConfigError("this is an image-to-video Wan model (image_dim is set); semgen loads T2V Wan models")
        if wan.get("pos_embed_seq_len") is not None:
            raise ConfigError("Wan configs with pos_embed_seq_len (FLF2V) are not supported; use a T2V model")
        heads, head_dim = int(wan.get("num_attention_heads", 40)), int(wan.get("attention_head_dim", 128))
        d = dict(
            in_channels=int(wan.get("in_channels", 16)),
            out_channels=wan.get("out_channels") or int(wan.get("in_channels", 16)),
            patch=tuple(wan.get("patch_size", (1, 2, 2))),
            dim=heads * head_dim,
            layers=int(wan.get("num_layers", 40)),
            heads=heads,
            ffn_dim=int(wan.get("ffn_dim", 13824)),
            text_dim=int(wan.get("text_dim", 4096)),
            freq_dim=int(wan.get("freq_dim", 256)),
            eps=float(wan.get("eps", 1e-6)),
            qk_norm=wan.get("qk_norm", "rms_norm_across_heads"),
            cross_attn_norm=bool(wan.get("cross_attn_norm", True)),
        )
        d.update(overrides)
        return cls(**d)


# ----------------------------------------------------------------------------- token positions


def video_positions(frames: int, height: int, width: int, device=None) -> torch.Tensor:
    """Integer (t, h, w) positions of a time-major token grid -> (frames*height*width, 3)."""
    grid = torch.meshgrid(
        torch.arange(frames, device=device),
        torch.arange(height, device=device),
        torch.arange(width, device=device),
        indexing="ij",
    )
    return torch.stack(grid, dim=-1).reshape(-1, 3).float()


def frame_mask_to_token_mask(frame_mask: torch.Tensor, H_p: int, W_p: int) -> torch.Tensor:
    """Token mask of :meth:`DiT.forward` from a per-frame mask: ``frame_mask`` (B, T) bool, True =
    real frame, over the *patch* frames (latent frames / temporal patch; latent frames for
    stage 2's patch (1, 1, 1)), ``H_p x W_p`` patch tokens per frame -> (B, T*H_p*W_p) bool,
    time-major like the DiT's token order."""
    if frame_mask.ndim != 2:
        raise ValueError(f"frame_mask must be (B, T), got shape {tuple(frame_mask.shape)}")
    if H_p < 1 or W_p < 1:
        raise ValueError(f"H_p and W_p must be positive, got {H_p} x {W_p}")
    return frame_mask.to(torch.bool).repeat_interleave(H_p * W_p, dim=1)


def semantic_positions(times: torch.Tensor, hs: int, ws: int, height: int, width: int) -> torch.Tensor:
    """RoPE positions of semantic tokens: ``times`` (B|1, Ts) latent times -> (B|1, Ts*hs*ws, 3).

    Spatial cell centres of the ``hs x ws`` grid are mapped onto the ``height x width`` patch grid.
    """
    B, Ts = times.shape
    dt = torch.float32
    ii = (torch.arange(hs, device=times.device, dtype=dt) + 0.5) * (height / hs) - 0.5  # (hs,)
    jj = (torch.arange(ws, device=times.device, dtype=dt) + 0.5) * (width / ws) - 0.5  # (ws,)
    pos = torch.stack(
        [
            times.to(dt)[:, :, None, None].expand(B, Ts, hs, ws),
            ii[None, None, :, None].expand(B, Ts, hs, ws),
            jj[None, None, None, :].expand(B, Ts, hs, ws),
        ],
        dim=-1,
    )  # (B, Ts, hs, ws, 3)
    return pos.reshape(B, Ts * hs * ws, 3)


def semantic_latent_times(num_semantic: int, num_latent: int, device=None) -> torch.Tensor:
    """Default latent times of ``num_semantic`` semantic frames spanning the same clip as
    ``num_latent`` latent frames: the centre of each semantic frame's equal share of the clip,
    ``(k + 0.5) * T / Ts - 0.5`` (latent frame ``t`` sits at time ``t``) -> (Ts,) float32."""
    k = torch.arange(num_semantic, device=device, dtype=torch.float32)
    return (k + 0.5) * (num_latent / num_semantic) - 0.5


def semantic_times_from_fps(
    num_semantic: int, semantic_fps: float, latent_fps: float, temporal_patch: int = 2, device=None
) -> torch.Tensor:
    """Latent times of semantic frames from frame rates: semantic frame ``k`` merges
    ``temporal_patch`` frames sampled at ``semantic_fps`` (Qwen2.5-VL: 2 frames at 1.6 fps); its
    centre in seconds times ``latent_fps`` (video fps / VAE temporal stride) -> (Ts,) float32."""
    k = torch.arange(num_semantic, device=device, dtype=torch.float32)
    seconds = (k * temporal_patch + (temporal_patch - 1) / 2) / semantic_fps
    return seconds * latent_fps


# ----------------------------------------------------------------------------- model


class DiT(nn.Module):
    """Wan2.1-compatible video DiT predicting the rectified-flow velocity ``v = eps - z0``."""

    shard = None
    """A :class:`semgen_cli.parallel.window.WindowShard`: run this rank's windows only (window-parallel stage 1)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        D = cfg.dim
        self.patch_embed = nn.Conv3d(cfg.in_channels, D, kernel_size=cfg.patch, stride=cfg.patch)
        self.rope = RoPE3D(cfg.head_dim, cfg.rope_theta)
        self.time_embed = MLPEmbedder(cfg.freq_dim, D, nn.SiLU())
        self.time_proj = nn.Linear(D, 6 * D)
        self.text_embed = MLPEmbedder(cfg.text_dim, D, nn.GELU(approximate="tanh"))
        if cfg.semantic_dim:
            self.semantic_embed = nn.Linear(cfg.semantic_dim, D)
            self.sigma_embed = MLPEmbedder(cfg.freq_dim, D, nn.SiLU())
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.layers))
        self.norm_out = LayerNormFP32(D, eps=cfg.eps, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.randn(1, 2, D) / D**0.5)
        self.head = nn.Linear(D, cfg.out_channels * math.prod(cfg.patch))
        self.gradient_checkpointing = False
        """Recompute each block in the backward pass (less memory, ~30% more compute)."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation for training from scratch: xavier linears, zero biases, small
        embedders, zero output head and zero noise-level embedding (so semantic tokens start
        modulated like video tokens)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.flatten(1))
        nn.init.zeros_(self.patch_embed.bias)
        for emb in (self.time_embed, self.text_embed):
            nn.init.normal_(emb.fc1.weight, std=0.02)
            nn.init.normal_(emb.fc2.weight, std=0.02)
        if self.config.semantic_dim:
            nn.init.zeros_(self.sigma_embed.fc2.weight)
        nn.init.zeros_(self.head.weight)

    @classmethod
    def from_wan(cls, source, **overrides) -> "DiT":
        """A DiT holding the weights of a diffusers ``WanTransformer3DModel`` (a module, or a
        folder saved with ``save_pretrained`` / a pipeline folder with ``transformer/``).
        ``overrides`` change non-weight fields (attention, window, semantic_dim...)."""
        from semgen_cli.models.wan import read_wan

        wan_config, state_dict = read_wan(source)
        model = cls(DiTConfig.from_wan_config(wan_config, **overrides))
        model.load_wan_state_dict(state_dict)
        return model

    def load_wan_state_dict(self, state_dict: dict[str, torch.Tensor], fresh: tuple[str, ...] = ()) -> list[str]:
        """Copy Wan weights in (not those of the parameters under the prefixes `fresh`); returns
        the semgen parameters left as initialised."""
        from semgen_cli.models.wan import load_wan_state_dict

        return load_wan_state_dict(self, state_dict, fresh)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        semantic: torch.Tensor | None = None,
        semantic_sigma: torch.Tensor | None = None,
        semantic_times: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity for noisy input ``x`` at flow time ``t``.

        Args:
            x: (B, C, T, H, W) noisy latents (T, H, W divisible by the patch).
            t: (B,) flow time in [0, 1] (0 = data, 1 = noise).
            text: (B, Lt, text_dim) text embeddings.
            text_mask: (B, Lt) bool, True = attend; None attends to every text token (Wan).
            semantic: (B, Ts, hs, ws, semantic_dim) in-context semantic tokens, or None.
            semantic_sigma: (B,) or (1,) noise level of ``semantic``, the ``sigma`` of
                ``z_sem + sigma * eps`` (paper §3.2, as RAE; 0 = clean); None means 0.
            semantic_times: (Ts,) or (B, Ts) latent time of each semantic frame; None means
                evenly spread over the clip (:func:`semantic_latent_times`; it depends on T,
                so pass it explicitly when T is padded).
            token_mask: (B, Nv) bool over the patch tokens of ``x`` in time-major order
                (``Nv = T/pt * H/ph * W/pw``), True = real token; padded tokens are never
                attended as self-attention keys (semantic tokens always are). Full attention
                only. Outputs at padded positions are finite but meaningless. Padding belongs
                at the end of the time axis so real tokens keep their RoPE positions; build it
                with :func:`frame_mask_to_token_mask`. None: every token is real.
        Returns:
            (B, out_channels, T, H, W) velocity.
        """
        cfg = self.config
        video_mask = self._check_inputs(x, text_mask, semantic, semantic_times, token_mask)
        B, _, T, H, W = x.shape
        Tp, Hp, Wp = T // cfg.patch[0], H // cfg.patch[1], W // cfg.patch[2]
        Nv = Tp * Hp * Wp

        # 1. Patch embedding and video positions
        h = self.patch_embed(x.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)  # (B, Nv, D), time-major
        pos = video_positions(Tp, Hp, Wp, device=x.device)[None]  # (1, Nv, 3)
        slots = torch.arange(Tp, device=x.device).repeat_interleave(Hp * Wp)  # (Nv,) latent frame of each token
        split: tuple[int, ...] = (Nv,)  # token segments: video tokens (then semantic tokens)

        # 2. In-context semantic tokens: projected, concatenated, placed on the latent time axis
        if semantic is not None:
            _, Ts, hs, ws, _ = semantic.shape
            times = semantic_latent_times(Ts, Tp, device=x.device) if semantic_times is None else semantic_times.to(x.device)
            times = times[None] if times.ndim == 1 else times  # (B|1, Ts)
            s = self.semantic_embed(semantic.to(h.dtype)).reshape(B, Ts * hs * ws, -1)  # (B, Ns, D)
            h = torch.cat([h, s], dim=1)  # (B, Nv + Ns, D)
            spos = semantic_positions(times, hs, ws, Hp, Wp).to(pos.dtype)  # (B|1, Ns, 3)
            pos = torch.cat([pos.expand(spos.shape[0], -1, -1), spos], dim=1)  # (B|1, L, 3)
            split = (Nv, Ts * hs * ws)
            if cfg.attention == "swin":  # the same frames for every sample (checked)
                sem_slots = torch.round(times[0]).clamp(0, Tp - 1).long()  # (Ts,)
                slots = torch.cat([slots, sem_slots.repeat_interleave(hs * ws)])  # (L,)

        # 3. 3D RoPE
        rope = self.rope(pos)  # cos, sin (B|1, L, Dh/2)

        # 4. Conditions: time (+ the semantic noise level) -> AdaLN modulation per token segment, text -> context
        temb = self.time_embed(timestep_embedding(t * cfg.timestep_scale, cfg.freq_dim).to(h.dtype))  # (B, D)
        cond = temb[:, None]  # (B, 1, D)
        if semantic is not None:
            sigma = torch.zeros(B, device=x.device) if semantic_sigma is None else torch.as_tensor(semantic_sigma, device=x.device).expand(B)
            semb = temb + self.sigma_embed(timestep_embedding(sigma * cfg.timestep_scale, cfg.freq_dim).to(h.dtype))
            cond = torch.stack([temb, semb], dim=1)  # (B, 2, D)
        mod = self.time_proj(F.silu(cond)).unflatten(-1, (6, -1))  # (B, S, 6, D)
        context = self.text_embed(text.to(h.dtype))  # (B, Lt, D)
        key_mask = video_mask
        if video_mask is not None and semantic is not None:  # semantic tokens are always real
            key_mask = torch.cat([video_mask, video_mask.new_ones(B, h.shape[1] - Nv)], dim=1)  # (B, L)

        # 5. Window plans (swin): even layers unshifted, odd layers shifted by T_w / 2
        plans: tuple[WindowPlan | None, WindowPlan | None] = (None, None)
        if cfg.attention == "swin":
            plans = (window_plan(slots, Tp, cfg.window, 0), window_plan(slots, Tp, cfg.window, cfg.window // 2))

        if self.shard is not None:  # window-parallel: this rank's windows (its tokens, their RoPE and plans)
            h, rope, split, plans = self.shard.enter(h, rope, slots, split, Tp, cfg.window if cfg.attention == "swin" else 0)

        # 6. Transformer blocks
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, context, mod, split, rope, plans[i % 2], text_mask, key_mask, use_reentrant=False)
            else:
                h = block(h, context, mod, split, rope, plans[i % 2], text_mask, key_mask)

        # 7. Output head on the video tokens only (semantic tokens are dropped), unpatchify
        shift, scale = (self.head_modulation + temb[:, None].float()).chunk(2, dim=1)  # (B, 1, D) each
        h = h[:, : split[0]]  # (B, Nv, D); this rank's video tokens under window-parallel
        h = modulate(self.norm_out(h), shift, scale, (h.shape[1],)).type_as(h)
        out = self.head(h)  # (B, Nv, pt*ph*pw*C_out)
        if self.shard is not None:
            out = self.shard.leave(out)  # every rank's video tokens, in order
        out = out.reshape(B, Tp, Hp, Wp, *cfg.patch, -1)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C_out, Tp, pt, Hp, ph, Wp, pw)
        return out.reshape(B, -1, T, H, W)

    def _check_inputs(self, x, text_mask, semantic, semantic_times, token_mask) -> torch.Tensor | None:
        """Refuse, with a ValueError saying what to pass instead, inputs this DiT cannot take.

        Returns ``token_mask`` as a bool mask on ``x``'s device, or None where every video token
        is real (so the mask-free fused SDPA kernels run)."""
        cfg = self.config
        B, C, T, H, W = x.shape
        pt, ph, pw = cfg.patch
        if C != cfg.in_channels:
            raise ValueError(f"DiT expects {cfg.in_channels} input channels, got {C}")
        if T % pt or H % ph or W % pw:
            raise ValueError(f"input (T, H, W) = {(T, H, W)} is not divisible by the patch {cfg.patch}")
        grid = (T // pt, H // ph, W // pw)
        if token_mask is not None:
            self._check_token_mask_shape(token_mask, B, grid)
        if semantic is not None:
            self._check_semantic(semantic, semantic_times, B, grid[0])
        if text_mask is not None and not bool(text_mask.any(dim=-1).all()):
            raise ValueError("text_mask masks every text token of a sample; keep at least one (e.g. the EOS token)")
        if token_mask is None:
            return None
        token_mask = token_mask.to(device=x.device, dtype=torch.bool)
        everything, some = torch.stack([token_mask.all(), token_mask.any(dim=-1).all()]).tolist()  # one sync
        if not some and semantic is None:
            raise ValueError("token_mask masks every video token of a sample; each sample needs a real token")
        return None if everything else token_mask

    def _check_token_mask_shape(self, token_mask: torch.Tensor, B: int, grid: tuple[int, int, int]) -> None:
        if self.config.attention != "full":
            raise ValueError(
                f"token_mask needs full attention; this DiT uses {self.config.attention!r} attention "
                "(pad-free batches or attention='full', as stage 2 uses)"
            )
        Nv = math.prod(grid)
        if tuple(token_mask.shape) != (B, Nv):
            raise ValueError(
                f"token_mask must be (B, Nv) = {(B, Nv)} over the {grid[0]}x{grid[1]}x{grid[2]} patch-token grid, "
                f"got {tuple(token_mask.shape)} (see frame_mask_to_token_mask)"
            )

    def _check_semantic(self, semantic: torch.Tensor, semantic_times: torch.Tensor | None, B: int, Tp: int) -> None:
        cfg = self.config
        if not cfg.semantic_dim:
            raise ValueError("this DiT was built without semantic tokens (semantic_dim=0)")
        if semantic.ndim != 5 or semantic.shape[0] != B or semantic.shape[-1] != cfg.semantic_dim:
            raise ValueError(f"semantic must be (B={B}, Ts, hs, ws, {cfg.semantic_dim}), got {tuple(semantic.shape)}")
        if semantic_times is None:  # evenly spread: the same for every sample
            return
        Ts = semantic.shape[1]
        if semantic_times.shape[-1] != Ts:
            raise ValueError(f"semantic_times has {semantic_times.shape[-1]} entries for {Ts} semantic frames")
        if cfg.attention == "swin":  # one window plan serves the whole batch
            slots = torch.round(semantic_times.reshape(-1, Ts)).clamp(0, Tp - 1).long()  # (B|1, Ts)
            if not bool((slots == slots[:1]).all()):
                raise ValueError("swin attention needs the same semantic_times for every sample of a batch")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def resize_patch(state: dict[str, torch.Tensor], old: tuple[int, int, int], new: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """A DiT state dict trained with patch `old`, rewritten for the finer patch `new`.

    Each old patch splits into whole new patches (every `old[i]` a multiple of `new[i]`); only the
    patch embedding and the output head change shape, the blocks are kept. The new embedding is
    the old one's response to a patch that repeats the new patch's content in every slot (its
    kernel summed over the slots), and each new output is the mean of the old outputs over the
    slots of the same sub-position. So on input that is constant over the old patches a new token
    starts as the old token, as FlexiViT resizes patch embeddings (Beyer et al. 2023); RoPE then
    counts positions on the finer grid, which fine-tuning adapts to.
    """
    old, new = tuple(old), tuple(new)
    if len(old) != 3 or len(new) != 3 or any(o % n for o, n in zip(old, new, strict=True)):
        raise ConfigError(f"patch {old} cannot be resized to {new}: each size must divide the old one")
    groups = tuple(o // n for o, n in zip(old, new, strict=True))
    out = dict(state)
    w = state["patch_embed.weight"]  # (D, C, *old)
    D, C = w.shape[:2]
    w = w.reshape(D, C, groups[0], new[0], groups[1], new[1], groups[2], new[2])
    out["patch_embed.weight"] = w.sum(dim=(2, 4, 6)).contiguous()
    hw, hb = state["head.weight"], state["head.bias"]  # rows in (pt, ph, pw, C_out) order
    c_out = hw.shape[0] // math.prod(old)
    hw = hw.reshape(groups[0], new[0], groups[1], new[1], groups[2], new[2], c_out, -1)
    hb = hb.reshape(groups[0], new[0], groups[1], new[1], groups[2], new[2], c_out)
    out["head.weight"] = hw.mean(dim=(0, 2, 4)).reshape(-1, hw.shape[-1]).contiguous()
    out["head.bias"] = hb.mean(dim=(0, 2, 4)).reshape(-1).contiguous()
    return out
