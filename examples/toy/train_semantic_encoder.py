"""Train the toy semantic encoder of the embedded default: a small transformers Qwen2.5-VL vision
tower (the class `load_semantic_encoder("qwen2.5-vl:...")` builds) whose merged tokens carry the
toy world's semantics with their spatial layout.

    python examples/toy/train_semantic_encoder.py --out semgen_cli/assets/toy/semantic [--steps 1500]

Input pipeline = what `semgen extract --fps 8 --semantic-fps 1.6 --semantic-size 112` feeds it:
toy clips at 8 fps sampled at 1.6 fps (every 5th frame, `semgen_cli.io.video.sample_indices`), so
one temporal patch holds two frames 0.625 s apart (the bundle now extracts at 3.2 fps, pairs
0.3125 s apart, where the tower still finds the object: examples/toy/diagnostics/plan_probe.py); frames resized 64 -> 112 with
`resize_center_crop` (bilinear, antialiased, as extract does) and patchified by `qwen_patchify`
(smart_resize keeps 112, giving 8x8 patches -> a 4x4 grid of merged tokens, one per 16x16 px
cell of the 64x64 frame). At the loader's defaults a 64x64 frame would become 56x56 -> only 2x2
merged tokens, too coarse for layout, hence `--semantic-size 112`.

Heads (trained jointly, then discarded; only the tower is saved):
- per merged token: objectness (BCE; the cell holds >= 8 object pixels in either frame of the
  temporal patch), and, in cells with the object, its colour (8), shape (3) and motion (5);
- per temporal patch (mean+max pooled tokens): object colour (8), shape (3), background (4),
  motion (5, incl. still).
A few % of training patches repeat one frame twice (what Qwen's padding does to an odd last
frame); their motion is not a target. Half the inputs pass through a simulated yuv420p round trip,
since extract reads H.264 mp4s.

After training the tower is saved with `save_pretrained` (config model_type `qwen2_5_vl_vision`,
safetensors) and evaluated through the real loader on held-out clips rendered in memory AND written
to mp4 by `semgen_cli.toy.dataset` and read back by `semgen_cli.io.video.read_video`, with the
trained heads and with a freshly fitted linear probe. Results: `<out>/train_report.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semgen_cli.components.semantic_encoder import qwen_patchify
from semgen_cli.io.video import resize_center_crop, sample_indices
from semgen_cli.toy.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, render, sample_spec

FPS, SEM_FPS, SEM_SIZE = 8.0, 1.6, 112
STRIDE = int(round(FPS / SEM_FPS))  # 5 frames between semantic frames at 8 fps
CELL_MIN_PIXELS = 8
COLOUR_NAMES, BG_NAMES = list(COLOURS), list(BACKGROUNDS)
VISION = dict(
    depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=64,
    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
    fullatt_block_indexes=[1, 3],
)
EVAL_SEED_OFFSET = 10_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32, help="temporal patches per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-clips", type=int, default=64)
    p.add_argument("--heads", type=Path, default=Path(tempfile.gettempdir()) / "toy_semantic_heads.pt",
                   help="where the (discarded) training heads are kept for --eval-only")
    p.add_argument("--eval-only", action="store_true", help="skip training; evaluate --out with --heads")
    return p.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------
def yuv420_roundtrip(frames: np.ndarray) -> np.ndarray:
    """Approximate an H.264 yuv420p round trip of uint8 (F, H, W, 3) (chroma over 2x2 blocks)."""
    x = frames.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb, cr = (b - y) * 0.564, (r - y) * 0.713
    f, h, w = y.shape

    def sub(c):
        c = c.reshape(f, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return np.repeat(np.repeat(c, 2, axis=1), 2, axis=2)

    cb, cr = sub(cb), sub(cr)
    r2, b2 = y + 1.403 * cr, y + 1.773 * cb
    g2 = (y - 0.299 * r2 - 0.114 * b2) / 0.587
    return np.clip(np.round(np.stack([r2, g2, b2], -1)), 0, 255).astype(np.uint8)


def cell_targets(frames: np.ndarray, bg_rgb, grid: int = 4) -> np.ndarray:
    """(F, 64, 64, 3) pair of frames -> bool (grid, grid): the cell holds >= CELL_MIN_PIXELS object
    pixels in at least one frame."""
    obj = (frames != np.array(bg_rgb, dtype=np.uint8)).any(-1)  # (F, H, W)
    f, h, w = obj.shape
    counts = obj.reshape(f, grid, h // grid, grid, w // grid).sum(axis=(2, 4))  # (F, g, g)
    return (counts >= CELL_MIN_PIXELS).any(0)


def labels(spec) -> dict:
    return {"colour": COLOUR_NAMES.index(spec.colour), "shape": SHAPES.index(spec.shape),
            "background": BG_NAMES.index(spec.background), "motion": MOTIONS.index(spec.motion)}


def to_tower_input(pairs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of uint8 (2, 64, 64, 3) -> (pixel_values, grid_thw) for one batched call."""
    pv, grids = [], []
    for p in pairs:
        x, g = qwen_patchify(resize_center_crop(p, SEM_SIZE))
        pv.append(x)
        grids.append(g)
    return torch.cat(pv), torch.cat(grids)


def train_batch(rng: np.random.Generator, n: int):
    pairs, tgt = [], {"colour": [], "shape": [], "background": [], "motion": [], "motion_valid": [], "cells": []}
    for _ in range(n):
        spec = sample_spec(rng, seconds=(STRIDE + 1) / FPS, fps=FPS)
        clip = render(spec)
        pair = clip[[0, STRIDE]]
        padded = rng.random() < 0.05
        if padded:
            pair = clip[[0, 0]]
        tgt["cells"].append(cell_targets(pair, BACKGROUNDS[spec.background]))
        if rng.random() < 0.5:
            pair = yuv420_roundtrip(pair)
        pairs.append(pair)
        for k, v in labels(spec).items():
            tgt[k].append(v)
        tgt["motion_valid"].append(not padded)
    pv, grid = to_tower_input(pairs)
    out = {k: torch.tensor(np.array(v)) for k, v in tgt.items()}
    return pv, grid, out


# -- heads ---------------------------------------------------------------------------------------
class Heads(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.obj = nn.Linear(d, 1)
        self.tok = nn.ModuleDict({"colour": nn.Linear(d, 8), "shape": nn.Linear(d, 3), "motion": nn.Linear(d, 5)})
        self.clip = nn.ModuleDict({"colour": nn.Linear(2 * d, 8), "shape": nn.Linear(2 * d, 3),
                                   "background": nn.Linear(2 * d, 4), "motion": nn.Linear(2 * d, 5)})

    def forward(self, feats: torch.Tensor) -> dict:
        """feats (B, h, w, d) -> logits."""
        x = self.norm(feats)
        b = x.shape[0]
        tok = x.reshape(b, -1, x.shape[-1])
        pooled = torch.cat([tok.mean(1), tok.max(1).values], -1)
        out = {"obj": self.obj(x)[..., 0]}
        out.update({f"tok_{k}": h(x) for k, h in self.tok.items()})
        out.update({k: h(pooled) for k, h in self.clip.items()})
        return out


def loss_fn(logits: dict, t: dict) -> torch.Tensor:
    cells = t["cells"].float()
    loss = F.binary_cross_entropy_with_logits(logits["obj"], cells)
    for k in ("colour", "shape", "background"):
        loss = loss + F.cross_entropy(logits[k], t[k])
    mv = t["motion_valid"]
    if mv.any():
        loss = loss + F.cross_entropy(logits["motion"][mv], t["motion"][mv])
    m = cells.bool()  # (B, h, w)
    for k in ("colour", "shape", "motion"):
        lg = logits[f"tok_{k}"]  # (B, h, w, n)
        lab = t[k].view(-1, 1, 1).expand(m.shape)
        mask = m & (mv.view(-1, 1, 1) if k == "motion" else torch.ones_like(m))
        if mask.any():
            loss = loss + 0.5 * F.cross_entropy(lg[mask], lab[mask])
    return loss


def features(model, pv, grid) -> torch.Tensor:
    """Run the tower; merged tokens (B, 4, 4, d) for B single-temporal-patch inputs."""
    out = model(pv, grid_thw=grid).pooler_output
    b = grid.shape[0]
    gh, gw = int(grid[0, 1]) // 2, int(grid[0, 2]) // 2
    return out.reshape(b, gh, gw, -1)


# -- evaluation through the real loader ------------------------------------------------------------
def eval_specs(seed: int, n: int):
    return [sample_spec(np.random.default_rng([seed + EVAL_SEED_OFFSET, i]), seconds=4.0, fps=FPS) for i in range(n)]


def loader_features(enc, frames_list: list[np.ndarray]) -> list[torch.Tensor]:
    return [enc.encode(f) for f in frames_list]


def collect(enc, specs, sem_frames_list):
    """Features (N_patches, 4, 4, d) plus targets from the loader's encode of 1.6 fps frames."""
    feats, tgt = [], {"colour": [], "shape": [], "background": [], "motion": [], "motion_valid": [], "cells": []}
    for spec, sem_frames in zip(specs, sem_frames_list, strict=True):
        f = enc.encode(sem_frames)  # (T, 4, 4, d)
        idx = sample_indices(spec.num_frames, FPS, SEM_FPS)  # indices into the 8 fps clip
        clip = render(spec)
        for t in range(f.shape[0]):
            ii = idx[2 * t: 2 * t + 2]
            pair = clip[ii] if len(ii) == 2 else clip[[ii[0], ii[0]]]
            feats.append(f[t])
            tgt["cells"].append(cell_targets(pair, BACKGROUNDS[spec.background]))
            for k, v in labels(spec).items():
                tgt[k].append(v)
            tgt["motion_valid"].append(len(ii) == 2)
    return torch.stack(feats), {k: torch.tensor(np.array(v)) for k, v in tgt.items()}


def metrics(logits: dict, t: dict) -> dict:
    out = {}
    for k in ("colour", "shape", "background"):
        out[f"{k}_acc"] = float((logits[k].argmax(-1) == t[k]).float().mean())
    mv = t["motion_valid"]
    out["motion_acc"] = float((logits["motion"][mv].argmax(-1) == t["motion"][mv]).float().mean())
    pred, gt = logits["obj"] > 0, t["cells"].bool()
    out["objectness_iou"] = float((pred & gt).sum() / (pred | gt).sum().clamp_min(1))
    out["objectness_cell_acc"] = float((pred == gt).float().mean())
    m = gt
    for k in ("colour", "shape"):
        lab = t[k].view(-1, 1, 1).expand(m.shape)
        out[f"token_{k}_acc_in_object_cells"] = float((logits[f"tok_{k}"].argmax(-1)[m] == lab[m]).float().mean())
    return out


def fit_probe(x_tr, t_tr, x_te, t_te, steps: int = 300) -> dict:
    """Fresh linear heads on frozen loader features (same head layout, no LayerNorm tricks)."""
    torch.manual_seed(0)
    heads = Heads(x_tr.shape[-1])
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(heads(x_tr), t_tr).backward()
        opt.step()
    with torch.no_grad():
        return metrics(heads(x_te), t_te)


def evaluate(folder: Path, heads: Heads, seed: int, n_clips: int) -> dict:
    from semgen_cli.components import load_semantic_encoder
    from semgen_cli.components.semantic_encoder import default_pixel_bounds
    from semgen_cli.io.video import read_video
    from semgen_cli.toy.dataset import ToyDataConfig, write_toy_dataset

    lo, hi = default_pixel_bounds("toy")  # the bounds `semgen extract --semantic toy` uses
    enc = load_semantic_encoder(f"qwen2.5-vl:{folder}", fps=SEM_FPS, min_pixels=lo, max_pixels=hi)
    report = {"fingerprint": enc.fingerprint, "grid_for_64": list(enc.grid_for(64, 64)),
              "grid_for_112": list(enc.grid_for(SEM_SIZE, SEM_SIZE)), "heldout_clips": n_clips}
    specs = eval_specs(seed, n_clips)
    mem = [resize_center_crop(render(s)[sample_indices(s.num_frames, FPS, SEM_FPS)], SEM_SIZE) for s in specs]
    x, t = collect(enc, specs, mem)
    with torch.no_grad():
        report["in_memory_heads"] = metrics(heads(x), t)
    # A fresh linear probe: fit on half of the in-memory held-out clips, test on the other half.
    half = (x.shape[0] // 2) // 3 * 3
    report["fresh_probe_in_memory"] = fit_probe(x[:half], {k: v[:half] for k, v in t.items()},
                                                x[half:], {k: v[half:] for k, v in t.items()})
    report["patches_in_memory"] = int(x.shape[0])
    # The same kind of clips through mp4 (toy-data's H.264), read back the way extract reads them.
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ToyDataConfig(count=n_clips, seed=seed + EVAL_SEED_OFFSET + 7, seconds=4.0)
            write_toy_dataset(Path(tmp) / "v", cfg)
            mp4_specs = [cfg.spec(i) for i in range(n_clips)]
            mp4 = [read_video(Path(tmp) / "v" / f"clip-{i:06d}.mp4", fps=SEM_FPS, size=SEM_SIZE) for i in range(n_clips)]
        x2, t2 = collect(enc, mp4_specs, mp4)
        with torch.no_grad():
            report["mp4_heads"] = metrics(heads(x2), t2)
        report["patches_mp4"] = int(x2.shape[0])
    except Exception as exc:  # toy-data's writer is another module; do not lose the rest
        report["mp4_heads"] = f"skipped: {type(exc).__name__}: {exc}"
    return report


# -- training ------------------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parse_args(argv)
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 2])
    if args.eval_only:
        heads = Heads(VISION["out_hidden_size"])
        heads.load_state_dict(torch.load(args.heads, weights_only=True))
        heads.eval()
        report = evaluate(args.out, heads, args.seed, args.eval_clips)
        print(json.dumps(report, indent=2), flush=True)
        old = args.out / "train_report.json"
        if old.is_file():
            report = {**json.loads(old.read_text()), **report}
        old.write_text(json.dumps(report, indent=2) + "\n")
        return
    model = Qwen2_5_VisionTransformerPretrainedModel._from_config(Qwen2_5_VLVisionConfig(**VISION),
                                                                   attn_implementation="sdpa")
    heads = Heads(VISION["out_hidden_size"])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Qwen2.5-VL vision tower {n_params / 1e6:.2f} M params, config {VISION}", flush=True)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    model.train()
    t_start = time.perf_counter()
    hist = []
    for step in range(args.steps):
        pv, grid, t = train_batch(rng, args.batch)
        logits = heads(features(model, pv, grid))
        loss = loss_fn(logits, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            m = metrics(logits, t)
        hist.append([float(loss)] + [m[k] for k in ("colour_acc", "shape_acc", "background_acc", "motion_acc", "objectness_iou")])
        if step % 25 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t_start
            r = np.mean(hist[-25:], 0)
            eta = el / (step + 1) * (args.steps - step - 1)
            print(f"step {step:5d}/{args.steps} loss {r[0]:.3f} col {r[1]:.2f} shp {r[2]:.2f} bg {r[3]:.2f} "
                  f"mot {r[4]:.2f} iou {r[5]:.2f} lr {sched.get_last_lr()[0]:.2e} "
                  f"elapsed {el / 60:5.1f} min eta {eta / 60:5.1f} min", flush=True)
    train_s = time.perf_counter() - t_start

    model.eval()
    heads.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    torch.save(heads.state_dict(), args.heads)
    print(f"saved {args.out} ({sum(f.stat().st_size for f in args.out.iterdir()) / 1e6:.2f} MB)", flush=True)
    t0 = time.perf_counter()
    report = evaluate(args.out, heads, args.seed, args.eval_clips)
    report.update({
        "train": {"steps": args.steps, "seed": args.seed, "threads": args.threads, "batch": args.batch,
                  "lr": args.lr, "wall_s": round(train_s, 1),
                  "final_train": dict(zip(("loss", "colour", "shape", "background", "motion", "iou"),
                                          np.mean(hist[-25:], 0).round(4).tolist(), strict=True))},
        "params": n_params, "config": VISION, "semantic_size": SEM_SIZE, "semantic_fps": SEM_FPS,
        "eval_s": round(time.perf_counter() - t0, 1),
    })
    (args.out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
