"""Semantic encoders: `qwen2.5-vl:PATH` (the paper's choice), `vjepa2:PATH`, `videomae:PATH`, `tiny`.

SemanticGen (paper §3.2) takes semantic features from the Qwen2.5-VL vision tower: frames at
1.6 fps, 14x14 patches, temporal patch 2, 2x2 merge, giving `d x F/2 x H/28 x W/28` tokens.
Only the vision tower is built and only its weights are read, also from a full Qwen2.5-VL
checkpoint. transformers' video processors need torchvision, which semgen does not install, so
Qwen's patchify is written here in plain torch (`qwen_patchify`: smart_resize, Pillow's bicubic
in Pillow's pass order, CLIP normalisation, patch order) and tested equal to
`Qwen2VLImageProcessorPil`. Frames are bounded by the pixel limits of Qwen2.5-VL's *video*
processor (`Qwen2VLVideoProcessor`: 128·28² to 768·28² pixels per frame), not of its image
processor (56² to 1280·28²), since the paper feeds the tower videos; semgen's own `toy` and
`tiny` towers keep the image bounds they were built with.

The Qwen tower attends within each temporal patch only (2-D rotary positions, per-frame
`cu_seqlens`), so long videos are encoded a few temporal patches at a time with exactly the
result of one pass.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from semgen_cli.components._common import (
    TINY_SEED, fingerprint, freeze, load_error, place, quiet_loading, parse_spec, read_config, require_folder, seeded,
    toy_folder,
)
from semgen_cli.errors import ConfigError, InputError

KINDS = ("qwen2.5-vl", "vjepa2", "videomae")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
QWEN_MIN_PIXELS = 56 * 56  # Qwen2-VL image processor's bounds (Qwen2VLImageProcessor.size)
QWEN_MAX_PIXELS = 28 * 28 * 1280
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28  # Qwen2-VL video processor's bounds (Qwen2VLVideoProcessor.size)
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28

TINY_QWEN_VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56,
    fullatt_block_indexes=[1],
)


# -- Qwen2.5-VL patchify in plain torch ------------------------------------------------------------
def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_MAX_PIXELS) -> tuple[int, int]:
    """Qwen's target size: both sides multiples of `factor`, area within [min, max], aspect kept."""
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise InputError(f"frame size {height}x{width} cannot be encoded: the aspect ratio must be below 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (N, 3, H, W) values in [0, 255] exactly as Pillow's `Image.resize` does
    it: Pillow's antialiased bicubic taps (a = -0.5, support widened by the reduction), its 22-bit
    fixed-point weights and rounding, two one-axis passes each clipped to uint8 levels, in
    Pillow's pass order (`_vertical_first`). Returns float32 levels in [0, 255]."""
    h, w = size
    vertical_first = _vertical_first(x.shape[-2], x.shape[-1], h, w)
    out = []
    for frame in x.to(torch.int32).split(1):  # a frame at a time keeps the int32 buffers in cache
        if vertical_first:
            out.append(_pillow_pass(_pillow_pass(frame, -2, h), -1, w))
        else:
            out.append(_pillow_pass(_pillow_pass(frame, -1, w), -2, h))
    return torch.cat(out).float()


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights for 8-bit images


def _vertical_first(height: int, width: int, h: int, w: int) -> bool:
    """Pillow's pass order for a (height, width) -> (h, w) resize: the vertical pass first when
    the height shrinks by more than twice the columns the width loses, else the horizontal one.
    The rule was read off Pillow's output over a grid of sizes (both orders tried, only one
    matches), and `test_pillow_pass_order_rule` checks it against the installed Pillow."""
    return h < height and 2 * (width - w) < height - h


def _bicubic(t: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), evaluated in its order of operations."""
    t = np.abs(t)
    near = ((-0.5 + 2.0) * t - (-0.5 + 3.0)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * -0.5
    return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))


def _pillow_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis:
    source indices (n_out, K) and int32 weights (n_out, K), zero beyond each output's window."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    k = int(math.ceil(support)) * 2 + 1
    center = (np.arange(n_out) + 0.5) * scale
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int) cast truncates
    n = np.minimum((center + support + 0.5).astype(np.int64), n_in) - lo
    pos = lo[:, None] + np.arange(k)[None, :]  # (n_out, K)
    wts = np.where(np.arange(k)[None, :] < n[:, None], _bicubic((pos - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.zeros(n_out)
    for j in range(k):  # summed left to right, as Pillow does
        total += wts[:, j]
    wts = np.where(total[:, None] != 0, wts / np.where(total == 0, 1.0, total)[:, None], wts)
    fixed = np.trunc(np.where(wts < 0, -0.5 + wts * (1 << _PRECISION_BITS), 0.5 + wts * (1 << _PRECISION_BITS)))
    return torch.from_numpy(np.minimum(pos, n_in - 1)), torch.from_numpy(fixed.astype(np.int32))


def _pillow_pass(x: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """One of Pillow's passes along `axis` (-1: horizontal, -2: vertical) of int32 levels."""
    if x.shape[axis] == n_out:
        return x
    idx, wts = _pillow_taps(x.shape[axis], n_out)
    idx, wts = idx.to(x.device), wts.to(x.device)
    rows = x.movedim(axis, 0)  # the resized axis first, so each tap gathers whole rows
    rest = rows.shape[1:]
    rows = rows.reshape(rows.shape[0], -1).contiguous()  # (n_in, R)
    acc = torch.full((n_out, rows.shape[1]), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for j in range(idx.shape[1]):
        acc += rows[idx[:, j]] * wts[:, j, None]
    out = (acc >> _PRECISION_BITS).clamp_(0, 255)  # Pillow's clip8
    return out.reshape(n_out, *rest).movedim(0, axis)


def qwen_patchify(frames, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS,
                  patch: int = 14, temporal_patch: int = 2, merge: int = 2,
                  mean=CLIP_MEAN, std=CLIP_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (F, H, W, 3) -> (pixel_values (t*h*w, 3*tp*p*p) float32, grid_thw (1, 3) long).

    F is padded to a multiple of `temporal_patch` by repeating the last frame (as Qwen's video
    processor does; a single image becomes two equal frames). Patch order is Qwen's: time, then
    2x2 merge blocks row-major, then the 2x2 patches inside a block, each patch flattened as
    (C, tp, p, p).
    """
    frames = _as_uint8_video(frames, "qwen patchify")
    f, height, width, _ = frames.shape
    if f % temporal_patch:
        pad = temporal_patch - f % temporal_patch
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], 0)
    rh, rw = smart_resize(height, width, patch * merge, min_pixels, max_pixels)
    x = resize_uint8(frames.permute(0, 3, 1, 2), (rh, rw))  # (F, 3, H', W') in [0, 255]
    x = x / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    gt, gh, gw = x.shape[0] // temporal_patch, rh // patch, rw // patch
    x = x.reshape(gt, temporal_patch, 3, gh // merge, merge, patch, gw // merge, merge, patch)
    # (gt, tp, C, bh, mh, ph, bw, mw, pw) -> (gt, bh, bw, mh, mw, C, tp, ph, pw)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(gt * gh * gw, 3 * temporal_patch * patch * patch)
    return pixel_values.contiguous(), torch.tensor([[gt, gh, gw]], dtype=torch.long)


def _as_uint8_video(frames, what: str) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 \
            or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InputError(f"{what}: frames must be uint8 (F, H, W, 3) with F >= 1, got "
                         f"{getattr(frames, 'dtype', type(frames))} {tuple(getattr(frames, 'shape', ()))}")
    return frames


# -- the encoder -----------------------------------------------------------------------------------
class SemanticEncoder:
    """A frozen video feature encoder. `encode` uint8 (F, H, W, 3) -> features (T, h, w, d)."""

    def __init__(self, spec: str, kind: str, module: torch.nn.Module, fingerprint: str,
                 device, dtype: torch.dtype, fps: float, min_pixels: int, max_pixels: int,
                 chunk_temporal_patches: int):
        self.spec, self.kind, self.module, self.fingerprint = spec, kind, module, fingerprint
        self.device, self.dtype, self.fps = torch.device(device), dtype, float(fps)
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.chunk_temporal_patches = int(chunk_temporal_patches)
        cfg = module.config
        if kind == "qwen2.5-vl":
            self.dim = int(cfg.out_hidden_size)
            self.patch, self.temporal_patch, self.merge = int(cfg.patch_size), int(cfg.temporal_patch_size), \
                int(cfg.spatial_merge_size)
            self.mean, self.std = CLIP_MEAN, CLIP_STD
            self.clip_frames = None
        else:
            self.dim = int(cfg.hidden_size)
            self.patch, self.temporal_patch, self.merge = int(cfg.patch_size), int(cfg.tubelet_size), 1
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
            self.size = int(cfg.crop_size if kind == "vjepa2" else cfg.image_size)
            self.clip_frames = int(cfg.frames_per_clip if kind == "vjepa2" else cfg.num_frames)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') frames are resized to before patchify."""
        if self.kind == "qwen2.5-vl":
            return smart_resize(height, width, self.patch * self.merge, self.min_pixels, self.max_pixels)
        return self.size, self.size

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) token grid of `encode` for frames of that size (H'/28, W'/28 for Qwen)."""
        rh, rw = self.resized_size(height, width)
        step = self.patch * self.merge
        return rh // step, rw // step

    def tokens_for_frames(self, f: int) -> int:
        """T of `encode` for F frames: ceil(F / temporal_patch)."""
        return -(-f // self.temporal_patch)

    def describe(self) -> dict:
        return {
            "class": type(self.module).__name__, "spec": self.spec, "fingerprint": self.fingerprint,
            "dim": self.dim, "fps": self.fps, "patch": self.patch, "temporal_patch": self.temporal_patch,
            "merge": self.merge, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """uint8 frames (F, H, W, 3) sampled at `fps` -> float32 CPU features (ceil(F/2), h, w, d)."""
        frames = _as_uint8_video(frames, f"semantic encoder {self.spec!r}")
        if self.kind == "qwen2.5-vl":
            return self._encode_qwen(frames)
        return self._encode_clips(frames)

    def _encode_qwen(self, frames: torch.Tensor) -> torch.Tensor:
        step = self.chunk_temporal_patches * self.temporal_patch
        outs = []
        for s in range(0, frames.shape[0], step):
            pixel_values, grid = qwen_patchify(
                frames[s:s + step], self.min_pixels, self.max_pixels, self.patch, self.temporal_patch,
                self.merge, self.mean, self.std)
            gt, gh, gw = grid[0].tolist()
            out = self.module(pixel_values.to(self.device, self.dtype), grid_thw=grid.to(self.device))
            # pooler_output holds the merged tokens already put back from window order into
            # patchify order: time, then merge blocks row-major, i.e. a (t, h/2, w/2) grid.
            feats = out.pooler_output.reshape(gt, gh // self.merge, gw // self.merge, self.dim)
            outs.append(feats.float().cpu())
        return torch.cat(outs, 0)

    def _encode_clips(self, frames: torch.Tensor) -> torch.Tensor:
        """V-JEPA 2 / VideoMAE: clips of `clip_frames` frames at size x size; the last clip is
        padded by repeating its last frame and the padded tokens are dropped."""
        t_out = self.tokens_for_frames(frames.shape[0])
        g = self.size // self.patch
        outs = []
        for s in range(0, frames.shape[0], self.clip_frames):
            clip = frames[s:s + self.clip_frames]
            if clip.shape[0] < self.clip_frames:
                pad = self.clip_frames - clip.shape[0]
                clip = torch.cat([clip, clip[-1:].expand(pad, -1, -1, -1)], 0)
            x = resize_uint8(clip.permute(0, 3, 1, 2), (self.size, self.size)) / 255.0
            x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
            x = x.unsqueeze(0).to(self.device, self.dtype)  # (1, F, 3, S, S)
            if self.kind == "vjepa2":
                hidden = self.module(pixel_values_videos=x, skip_predictor=True).last_hidden_state
            else:
                hidden = self.module(pixel_values=x).last_hidden_state
            outs.append(hidden[0].reshape(-1, g, g, self.dim).float().cpu())  # (t, g, g, d)
        return torch.cat(outs, 0)[:t_out]


# -- loading ---------------------------------------------------------------------------------------
def load_semantic_encoder(spec: str, device="cpu", dtype: torch.dtype = torch.float32, *,
                          fps: float = 1.6, min_pixels: int | None = None,
                          max_pixels: int | None = None,
                          chunk_temporal_patches: int = 8) -> SemanticEncoder:
    """Resolve `qwen2.5-vl:PATH`, `vjepa2:PATH`, `videomae:PATH`, `tiny` or `toy` to a frozen encoder.

    `fps` is the rate frames are sampled at before `encode` (recorded, not applied here);
    `min_pixels`/`max_pixels` bound Qwen's smart_resize (None: `default_pixel_bounds(spec)`);
    `chunk_temporal_patches` is how many temporal patches the Qwen tower sees per call (exact,
    since it attends within a patch)."""
    with quiet_loading():
        return _load_semantic_encoder(spec, device, dtype, fps, min_pixels, max_pixels, chunk_temporal_patches)


def default_pixel_bounds(spec: str) -> tuple[int, int]:
    """(min_pixels, max_pixels) per frame when none are given: Qwen2.5-VL's video bounds for a
    Qwen checkpoint; the image bounds for semgen's own `toy` tower (trained on 112x112 frames,
    which the video bounds would blow up to 308x308) and the `tiny` test tower."""
    if spec in ("toy", "tiny"):
        return QWEN_MIN_PIXELS, QWEN_MAX_PIXELS
    return QWEN_VIDEO_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS


def _load_semantic_encoder(spec, device, dtype, fps, min_pixels, max_pixels,
                           chunk_temporal_patches) -> SemanticEncoder:
    lo, hi = default_pixel_bounds(spec)
    min_pixels = lo if min_pixels is None else int(min_pixels)
    max_pixels = hi if max_pixels is None else int(max_pixels)
    if fps <= 0:
        raise ConfigError(f"semantic fps must be > 0, got {fps}")
    if not 0 < min_pixels <= max_pixels:
        raise ConfigError(f"--min-pixels and --max-pixels need 0 < min <= max, got {min_pixels} and {max_pixels}")
    if chunk_temporal_patches < 1:
        raise ConfigError(f"chunk_temporal_patches must be >= 1, got {chunk_temporal_patches}")
    extra = dict(fps=fps, min_pixels=min_pixels, max_pixels=max_pixels,
                 chunk_temporal_patches=chunk_temporal_patches)
    if spec == "toy":  # the bundled toy-world tower, recorded as "toy" so runs stay portable
        encoder = _load_semantic_encoder("qwen2.5-vl:" + toy_folder("semantic", "semantic encoder"), device, dtype, fps,
                                         min_pixels, max_pixels, chunk_temporal_patches)
        encoder.spec = "toy"
        return encoder
    kind, path = parse_spec(spec, "semantic encoder", KINDS, ("tiny",))
    if kind == "tiny":
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        with seeded(TINY_SEED):
            module = Qwen2_5_VisionTransformerPretrainedModel._from_config(
                Qwen2_5_VLVisionConfig(**TINY_QWEN_VISION), attn_implementation="sdpa")
        module = freeze(module)
        fp = fingerprint(f"tiny-qwen2.5-vl-vision:seed{TINY_SEED}", module, module.config)
        return SemanticEncoder(spec, "qwen2.5-vl", place(module, device, dtype), fp, device, dtype, **extra)

    folder = require_folder(path, spec, "semantic encoder")
    config = read_config(folder, spec, "semantic encoder")
    if kind == "qwen2.5-vl":
        module = _load_qwen_vision(folder, config, spec)
    else:
        module = _load_video_model(folder, config, spec, kind)
    module = freeze(module)
    fp = fingerprint(kind, module, module.config)
    return SemanticEncoder(spec, kind, place(module, device, dtype), fp, device, dtype, **extra)


def _load_qwen_vision(folder: Path, config: dict, spec: str) -> torch.nn.Module:
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLConfig, Qwen2_5_VLVisionConfig,
    )
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    model_type = config.get("model_type")
    if model_type == "qwen2_5_vl_vision":
        try:
            return Qwen2_5_VisionTransformerPretrainedModel.from_pretrained(
                folder, local_files_only=True, attn_implementation="sdpa")
        except Exception as exc:
            raise load_error("semantic encoder", spec, folder, exc) from exc
    if model_type != "qwen2_5_vl":
        raise InputError(f"semantic encoder folder {folder} holds model_type {model_type!r}, not a "
                         f"Qwen2.5-VL checkpoint (qwen2_5_vl or qwen2_5_vl_vision): check the spec {spec!r}")
    # A full checkpoint: build only the vision tower and read only its tensors from the shards.
    vision_config = Qwen2_5_VLConfig.from_pretrained(folder, local_files_only=True).vision_config
    if not isinstance(vision_config, Qwen2_5_VLVisionConfig):
        vision_config = Qwen2_5_VLVisionConfig(**vision_config.to_dict())
    state = _read_prefixed_tensors(folder, ("model.visual.", "visual."), spec)
    module = _build_without_init(Qwen2_5_VisionTransformerPretrainedModel, vision_config)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"Qwen2.5-VL checkpoint {folder} does not match its vision config "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. "
                         f"{(missing or unexpected)[0]}): re-save it with save_pretrained")
    return module


def _build_without_init(cls, config) -> torch.nn.Module:
    """Construct a transformers model whose weights are about to be overwritten, skipping the
    random init where transformers offers it."""
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        return cls._from_config(config, attn_implementation="sdpa")


def _read_prefixed_tensors(folder: Path, prefixes: tuple[str, ...], spec: str) -> dict:
    """Read only the tensors whose names start with one of `prefixes` (prefix stripped)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({folder / f for k, f in weight_map.items() if k.startswith(prefixes)})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(f"Qwen2.5-VL folder {folder} (spec {spec!r}) has no vision weights in "
                         f"*.safetensors: save the checkpoint with safe_serialization")
    state = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    for p in prefixes:
                        if key.startswith(p):
                            state[key[len(p):]] = f.get_tensor(key)
                            break
        except Exception as exc:
            raise InputError(f"cannot read {file} ({exc}): the file is corrupt or not safetensors") from exc
    if not state:
        raise InputError(f"Qwen2.5-VL folder {folder} (spec {spec!r}) holds no 'visual.*' tensors: "
                         f"point the spec at a Qwen2.5-VL checkpoint")
    return state


def _load_video_model(folder: Path, config: dict, spec: str, kind: str) -> torch.nn.Module:
    import transformers

    want = {"vjepa2": ("vjepa2", "VJEPA2Model"), "videomae": ("videomae", "VideoMAEModel")}[kind]
    if config.get("model_type") != want[0]:
        raise InputError(f"semantic encoder folder {folder} holds model_type {config.get('model_type')!r}, "
                         f"not {want[0]!r}: use the spec prefix that matches it")
    try:
        return getattr(transformers, want[1]).from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise load_error("semantic encoder", spec, folder, exc) from exc
