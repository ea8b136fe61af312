"""Drift metrics that need a network, loaded from local folders with transformers classes.

Computed as VBench computes them (docs/drift.md; Vchitect/VBench `vbench/utils.py`,
`subject_consistency.py`, `background_consistency.py`, `aesthetic_quality.py`):

- subject_consistency: DINO ViT-B/16 (`transformers.ViTModel`, e.g. facebook/dino-vitb16), the
  CLS token after the final LayerNorm; frames resized so the shorter side is the model's image
  size (224), bilinear, no antialias, aspect kept, no crop; ImageNet mean/std.
- background_consistency: CLIP ViT-B/32 (`CLIPVisionModelWithProjection`, e.g.
  openai/clip-vit-base-patch32), the projected image embedding; shorter side to 224 bicubic (no
  antialias), centre crop 224, CLIP mean/std.
- Both: F_i L2-normalised, s_i = (max(0, cos(F_{i−1}, F_i)) + max(0, cos(F_first, F_i)))/2 for
  the frames after the segment's first, score = mean s_i (the segment is scored as a clip).
- aesthetic_quality: CLIP ViT-L/14 projected image embedding, L2-normalised, through a head read
  from a safetensors file (LAION's linear 768→1, or improved-aesthetic-predictor's MLP, whose
  Linear layers have no activations between them), divided by 10 per frame, mean over frames.

All models run in float32 (VBench runs CLIP in fp16 on CUDA; expect ~1e-3 differences).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from semgen_cli.errors import ConfigError
from semgen_cli.metrics import Metric

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def fingerprint(files: list[Path]) -> str:
    """First 12 hex digits of the sha256 over the bytes of `files` (in the given order)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:12]


def model_folder(path: str | Path, flag: str) -> tuple[Path, list[Path]]:
    """A model folder with config.json and weights; ConfigError naming `flag` otherwise."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{flag} {root}: no such folder (give a local model folder with config.json and weights)")
    if not (root / "config.json").is_file():
        raise ConfigError(f"{flag} {root}: no config.json in the folder (save the model with save_pretrained)")
    weights = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise ConfigError(f"{flag} {root}: no weight files (*.safetensors) in the folder")
    return root, weights


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return device


def resize_shorter(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(int)` output size: shorter side → size, longer side truncated."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


class FrameEncoder:
    """A frozen image model and its VBench preprocessing: uint8 frames → features (B, D)."""

    def __init__(
        self,
        model: Any,
        forward: Callable[[Any, Any], Any],
        *,
        label: str,
        path: Path,
        fingerprint: str,
        size: int,
        mode: str,
        crop: bool,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: str,
    ) -> None:
        self.model, self.forward = model, forward
        self.label, self.path, self.fingerprint = label, path, fingerprint
        self.size, self.mode, self.crop, self.mean, self.std, self.device = size, mode, crop, mean, std, device

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) of the image the model sees for an h × w frame."""
        return (self.size, self.size) if self.crop else resize_shorter(h, w, self.size)

    def preprocess_text(self) -> str:
        crop = f", centre crop {self.size}×{self.size}" if self.crop else ", aspect kept, no crop"
        norm = "CLIP" if self.mean == CLIP_MEAN else "ImageNet"
        return f"shorter side → {self.size} ({self.mode}, no antialias){crop}, /255, {norm} mean/std"

    def preprocess(self, frames: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (B, 3, H, W), 0–255
        h, w = x.shape[-2:]
        nh, nw = resize_shorter(h, w, self.size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=self.mode, align_corners=False, antialias=False)
        if self.crop:  # torchvision CenterCrop offsets
            top, left = int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))
            x = x[:, :, top : top + self.size, left : left + self.size]
        x = x / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.forward(self.model, self.preprocess(frames))
        return out.float().cpu().numpy()  # (B, D)

    def describe(self) -> dict[str, str]:
        return {"model": f"{self.label} from {self.path}", "fingerprint": self.fingerprint, "image_size": self.preprocess_text()}


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_dino(path: str | Path, device: str = "cpu", flag: str = "--dino") -> FrameEncoder:
    """DINO ViT-B/16 as `transformers.ViTModel` (no pooler); features = CLS after the final LN."""
    root, weights = model_folder(path, flag)
    _quiet_transformers()
    from transformers import AutoConfig, ViTModel

    try:
        config = AutoConfig.from_pretrained(root)
    except Exception as err:
        raise ConfigError(f"{flag} {root}: unreadable config.json ({_short(err)})") from None
    if config.model_type != "vit":
        raise ConfigError(f"{flag} {root}: expected a DINO ViT (model_type 'vit', e.g. facebook/dino-vitb16), got '{config.model_type}'")
    try:
        model = ViTModel.from_pretrained(root, add_pooling_layer=False).eval().to(device)
    except Exception as err:
        raise ConfigError(f"{flag} {root}: could not load the model ({_short(err)})") from None
    label = f"DINO ViT (transformers ViTModel, {config.num_hidden_layers} layers, d={config.hidden_size}, patch {config.patch_size})"
    return FrameEncoder(
        model,
        lambda m, x: m(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0],  # (B, D) CLS
        label=label,
        path=root,
        fingerprint=fingerprint(weights),
        size=int(config.image_size),
        mode="bilinear",
        crop=False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        device=device,
    )


def load_clip(path: str | Path, flag: str, device: str = "cpu") -> FrameEncoder:
    """CLIP vision tower + projection (`CLIPVisionModelWithProjection`), from a full CLIPModel
    folder (openai/clip-vit-*) or a vision-only one; features = projected image embeddings."""
    root, weights = model_folder(path, flag)
    _quiet_transformers()
    from transformers import AutoConfig, CLIPVisionModelWithProjection

    try:
        config = AutoConfig.from_pretrained(root)
    except Exception as err:
        raise ConfigError(f"{flag} {root}: unreadable config.json ({_short(err)})") from None
    if config.model_type == "clip":
        vision = config.vision_config
        vision.projection_dim = config.projection_dim  # the top-level value is the one the weights have
    elif config.model_type == "clip_vision_model":
        vision = config
    else:
        raise ConfigError(f"{flag} {root}: expected a CLIP model (model_type 'clip'), got '{config.model_type}'")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(root, config=vision).eval().to(device)
    except Exception as err:
        raise ConfigError(f"{flag} {root}: could not load the model ({_short(err)})") from None
    label = (
        f"CLIP ViT (transformers CLIPVisionModelWithProjection, {vision.num_hidden_layers} layers, "
        f"patch {vision.patch_size}, projection d={vision.projection_dim})"
    )
    return FrameEncoder(
        model,
        lambda m, x: m(pixel_values=x).image_embeds,  # (B, projection_dim)
        label=label,
        path=root,
        fingerprint=fingerprint(weights),
        size=int(vision.image_size),
        mode="bicubic",
        crop=True,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        device=device,
    )


class AestheticHead:
    """Linear layers read from a safetensors file, applied in order with nothing between them
    (LAION's `weight`/`bias` linear, or improved-aesthetic-predictor's `layers.N.*` MLP, whose
    ReLUs are commented out and whose Dropouts are identities at inference)."""

    def __init__(self, path: str | Path, flag: str = "--aesthetic-head") -> None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file (give the aesthetic head as a .safetensors file)")
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:
            raise ConfigError(f"{flag} {path}: not a readable safetensors file ({_short(err)})") from None
        prefixes = sorted({k[: -len("weight")] for k in tensors if k.endswith("weight")}, key=_natural)
        layers = []
        for p in prefixes:
            w = tensors[p + "weight"].astype(np.float32)
            b = tensors.get(p + "bias", np.zeros(w.shape[0], np.float32)).astype(np.float32)
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ConfigError(f"{flag} {path}: tensor {p}weight has shape {w.shape}, expected (out, in) linear weights")
            layers.append((w, b))
        if not layers:
            raise ConfigError(f"{flag} {path}: no linear weights found (expected keys 'weight'/'bias' or 'layers.N.weight')")
        for (w0, _), (w1, _) in itertools.pairwise(layers):
            if w1.shape[1] != w0.shape[0]:
                raise ConfigError(f"{flag} {path}: layer shapes do not chain ({w0.shape} then {w1.shape})")
        if layers[-1][0].shape[0] != 1:
            raise ConfigError(f"{flag} {path}: the head must output one score, its last layer outputs {layers[-1][0].shape[0]}")
        self.layers, self.path = layers, path
        self.in_dim = layers[0][0].shape[1]
        self.fingerprint = fingerprint([path])
        dims = [self.in_dim] + [w.shape[0] for w, _ in layers]
        self.label = ("linear " if len(layers) == 1 else f"MLP of {len(layers)} linear layers ") + "→".join(map(str, dims))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, D) → (B,) raw scores (≈1–10 for the LAION heads)."""
        y = x.astype(np.float64)
        for w, b in self.layers:
            y = y @ w.T.astype(np.float64) + b
        return y[:, 0]


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _short(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:160]


class _Encoded(Metric):
    """Runs an encoder on the wanted frames of each chunk and keeps one row per frame."""

    batch = 16

    def __init__(self, encoder: FrameEncoder) -> None:
        self.encoder = encoder

    def begin(self, num_frames: int, wanted: np.ndarray | None = None) -> None:
        self.num_frames = num_frames
        self.wanted = np.ones(num_frames, bool) if wanted is None else wanted
        self.rows: np.ndarray | None = None  # (N, D) once the width is known
        self.input_hw: tuple[int, int] | None = None

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return self.encoder(frames)

    def update(self, frames: np.ndarray, start: int) -> None:
        if self.input_hw is None:
            self.input_hw = self.encoder.input_size(*frames.shape[1:3])
        sel = np.nonzero(self.wanted[start : start + len(frames)])[0]
        for i in range(0, len(sel), self.batch):
            idx = sel[i : i + self.batch]
            out = self.encode(frames[idx])
            if self.rows is None:
                shape = (self.num_frames,) + out.shape[1:]
                self.rows = np.full(shape, np.nan, dtype=np.float64)
            self.rows[start + idx] = out

    def segment_rows(self, a: int, b: int) -> np.ndarray:
        assert self.rows is not None and not np.isnan(self.rows[a:b]).any(), "segment frames were not encoded"
        return self.rows[a:b]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.encoder.describe()}


class Consistency(_Encoded):
    """VBench subject/background consistency of a segment scored as a clip."""

    kind = "score"
    scale = "0–1 (1 = every frame's feature equals the first's and the previous one's)"
    unit_interval = True
    aggregation = (
        "per frame after the segment's first: (max(0, cos(F_prev, F_i)) + max(0, cos(F_first, F_i)))/2, "
        "mean over the segment's n − 1 frames (F_first = the segment's first frame)"
    )
    higher_is_better = True
    min_frames = 2

    def __init__(self, name: str, encoder: FrameEncoder, definition: str) -> None:
        super().__init__(encoder)
        self.name, self.definition = name, definition

    def encode(self, frames: np.ndarray) -> np.ndarray:
        f = self.encoder(frames).astype(np.float64)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)  # L2-normalised (B, D)

    def score(self, a: int, b: int) -> float:
        return consistency(self.segment_rows(a, b))


def consistency(features: np.ndarray) -> float:
    """VBench's consistency of one clip from its L2-normalised features (N, D), N ≥ 2."""
    prev = np.maximum(0.0, np.sum(features[1:] * features[:-1], axis=1))  # (N-1,)
    first = np.maximum(0.0, features[1:] @ features[0])  # (N-1,)
    return float(((prev + first) / 2).mean())


class Aesthetic(_Encoded):
    name = "aesthetic_quality"
    kind = "score"
    definition = "VBench aesthetic_quality: LAION head on the L2-normalised CLIP ViT-L/14 image embedding, / 10"
    scale = "≈0–1 (raw LAION score 1–10 divided by 10)"
    unit_interval = True
    aggregation = "per frame, mean over the segment's frames"
    higher_is_better = True

    def __init__(self, encoder: FrameEncoder, head: AestheticHead) -> None:
        super().__init__(encoder)
        self.head = head
        if head.in_dim != encoder.model.config.projection_dim:
            raise ConfigError(
                f"--aesthetic-head {head.path}: expects {head.in_dim}-d features but the --clip-l14 model gives "
                f"{encoder.model.config.projection_dim}-d (use the head trained for that CLIP)"
            )

    def encode(self, frames: np.ndarray) -> np.ndarray:
        f = self.encoder(frames).astype(np.float64)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return self.head(f) / 10.0  # (B,)

    def score(self, a: int, b: int) -> float:
        return float(self.segment_rows(a, b).mean())

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["model"] += f"; head {self.head.label} from {self.head.path}"
        d["fingerprint"] += f"+{self.head.fingerprint}"
        return d


SUBJECT_DEF = "VBench subject_consistency: DINO ViT-B/16 CLS features, mean of first-frame and previous-frame cosine"
BACKGROUND_DEF = "VBench background_consistency: CLIP ViT-B/32 image embeddings, mean of first-frame and previous-frame cosine"
