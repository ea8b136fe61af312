"""Train a self-supervised toy semantic encoder: the same transformers Qwen2.5-VL vision tower as
the bundled caption-aligned one (`train_semantic_encoder.py`: same config, same input pipeline),
trained with NO labels and NO captions, by masked-patch reconstruction. The paper leaves other
semantic encoders as future work (App. C, "Systematic Analysis of Different Semantic Encoders":
encoders trained by vision-text alignment against self-supervised ones, e.g. VideoMAE, V-JEPA);
this tower is that second paradigm on the toy world.

    python examples/toy/train_ssl_encoder.py --out runs/ssl-tower [--steps 400] [--seed 0]
    python examples/toy/train_ssl_encoder.py --probe toy qwen2.5-vl:runs/ssl-tower [--json FILE]

Input: two frames of a toy clip rendered in memory, 2 or 3 frames apart at 8 fps (what
`semgen extract --fps 8 --semantic-fps 3.2` pairs up) or, in a few % of the inputs, one frame
twice (Qwen's padding of an odd last frame); resized 64 -> 112 and patchified exactly as the
loader does (`--semantic-size 112`: 8x8 patches of 14 px, a 4x4 grid of merged tokens). Half the
inputs pass through a simulated yuv420p round trip (extract reads H.264 mp4s).

Objective (SimMIM / VideoMAE-style, on the tower's merged tokens): a random half of the merged
tokens have their four input patches replaced by a learnt mask vector (pixel space; used only in
training, so the saved tower is the plain Qwen class). A small MLP decoder, discarded after
training, maps every merged token (out_hidden_size 64) to the pixels of its 16x16 cell of the
64x64 frames, both frames of the temporal patch: the masked cells must be inpainted from the
context the tower gathers, the visible ones reconstructed through the 64-wide token. Targets are
the clean frames in [-1, 1]. The loss weights a pixel 16x when its colour differs from its frame's
most common colour (computed from the pixels alone, so no renderer label enters): the object
covers ~5 % of a frame and would otherwise be drowned by the flat background. The renderer's
ground truth (colour, shape, motion, background) is used only by the probe, after training.

Probe (`--probe SPEC...`, and at the end of training): each tower is loaded by
`semgen_cli.components.load_semantic_encoder` (the user's loader) and its features of held-out
clips sampled at `--probe-fps` are fitted with fresh linear heads (`train_semantic_encoder.Heads`:
per temporal patch colour, shape, background, motion from mean+max pooled tokens; per token
objectness), on one set of clips and scored on another. Results go to `<out>/train_report.json`
(loaders ignore it) or to `--json FILE`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import train_semantic_encoder as cap  # the caption tower's data pipeline and probe heads (this script's folder)

from semgen_cli.io.video import resize_center_crop, sample_indices
from semgen_cli.toy.world import render, sample_spec

FPS, SEM_SIZE, GRID = cap.FPS, cap.SEM_SIZE, 4
CELL = 64 // GRID  # 16 px of the 64x64 frame per merged token
GAPS = (2, 3)  # frames between the two frames of a temporal patch at 3.2 fps from 8 fps
OBJECT_WEIGHT = 16.0
PROBE_SEED = 20_000  # held-out clips of the probe: never drawn by training (seeded [seed, 3])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder to write the tower into (save_pretrained)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    p.add_argument("--batch", type=int, default=32, help="temporal patches per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mask-ratio", type=float, default=0.5, help="fraction of merged tokens masked per input")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--probe", nargs="+", metavar="SPEC", help="only probe these encoder specs (e.g. toy qwen2.5-vl:DIR)")
    p.add_argument("--probe-clips", type=int, default=96, help="held-out clips to fit the probe on (and as many to score it on; 0: no probe after training)")
    p.add_argument("--probe-fps", type=float, default=3.2, help="rate the probe's clips are sampled at (the pipeline's --semantic-fps)")
    p.add_argument("--json", type=Path, help="with --probe: write the results here (atomically) as well as to stdout")
    args = p.parse_args(argv)
    if args.probe is None and args.out is None:
        p.error("--out is required unless --probe is given")
    if not 0.0 <= args.mask_ratio < 1.0:
        p.error("--mask-ratio must be in [0, 1)")
    if args.probe and args.probe_clips < 1:
        p.error("--probe needs --probe-clips of at least 1")
    if args.steps < 1 or args.batch < 1:
        p.error("--steps and --batch must be at least 1")
    return args


# -- data ------------------------------------------------------------------------------------------
def unlabelled_batch(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n frame pairs: (inputs, clean targets), each uint8 (2, 64, 64, 3). Nothing but pixels."""
    inputs, targets = [], []
    for _ in range(n):
        gap = int(rng.choice(GAPS))
        clip = render(sample_spec(rng, seconds=(gap + 1) / FPS, fps=FPS))
        pair = clip[[0, 0]] if rng.random() < 0.05 else clip[[0, gap]]
        targets.append(pair)
        inputs.append(cap.yuv420_roundtrip(pair) if rng.random() < 0.5 else pair)
    return inputs, targets


def cell_targets(pairs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean pairs -> (pixels (B, 4, 4, 2·16·16·3) in [-1, 1], weights of the same shape).

    A pixel's weight is OBJECT_WEIGHT where its colour differs from its frame's most common colour."""
    x = np.stack(pairs)  # (B, 2, 64, 64, 3) uint8
    flat = x.reshape(*x.shape[:2], -1, 3)
    packed = (flat[..., 0].astype(np.int64) << 16) | (flat[..., 1].astype(np.int64) << 8) | flat[..., 2]
    mode = np.empty(packed.shape[:2], dtype=np.int64)  # (B, 2) each frame's most common colour
    for i in np.ndindex(mode.shape):
        colours, counts = np.unique(packed[i], return_counts=True)
        mode[i] = colours[counts.argmax()]
    rare = (packed != mode[..., None]).reshape(x.shape[:4])  # (B, 2, 64, 64)
    w = np.where(rare, OBJECT_WEIGHT, 1.0)[..., None].repeat(3, -1)  # (B, 2, 64, 64, 3)

    def cells(a):  # (B, 2, 64, 64, 3) -> (B, 4, 4, 2*16*16*3)
        b = a.shape[0]
        a = a.reshape(b, 2, GRID, CELL, GRID, CELL, 3).transpose(0, 2, 4, 1, 3, 5, 6)
        return torch.from_numpy(np.ascontiguousarray(a.reshape(b, GRID, GRID, -1))).float()

    return cells(x.astype(np.float32) / 127.5 - 1.0), cells(w.astype(np.float32))


# -- model pieces used only in training ------------------------------------------------------------
class Decoder(nn.Module):
    """Merged token (d) -> the pixels of its cell, both frames (2·16·16·3)."""

    def __init__(self, d: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 2 * CELL * CELL * 3))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def masked_input(pv: torch.Tensor, b: int, ratio: float, mask_vector: torch.Tensor, g: torch.Generator):
    """Replace the 4 patches of a random `ratio` of each input's 16 merged tokens by `mask_vector`.

    pv (b·64, 1176) in Qwen patch order (merge blocks of 4 consecutive patches) -> (pv', mask (b, 4, 4))."""
    n_tok = GRID * GRID
    k = int(round(ratio * n_tok))
    scores = torch.rand(b, n_tok, generator=g)
    mask = torch.zeros(b, n_tok, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1).indices, True)
    per_patch = mask.repeat_interleave(4, dim=1).reshape(-1, 1).to(pv.device)  # (b·64, 1)
    return torch.where(per_patch, mask_vector.to(pv.dtype).expand_as(pv), pv), mask.reshape(b, GRID, GRID)


def build_tower():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    return Qwen2_5_VisionTransformerPretrainedModel._from_config(Qwen2_5_VLVisionConfig(**cap.VISION), attn_implementation="sdpa")


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 3])
    g = torch.Generator().manual_seed(args.seed)
    dev = torch.device(args.device)
    model = build_tower().to(dev)
    decoder = Decoder(cap.VISION["out_hidden_size"]).to(dev)
    mask_vector = nn.Parameter(torch.zeros(3 * 2 * 14 * 14, device=dev))
    params = list(model.parameters()) + list(decoder.parameters()) + [mask_vector]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Qwen2.5-VL vision tower {n_params / 1e6:.2f} M params, config {cap.VISION}; "
          f"masked-patch reconstruction, mask ratio {args.mask_ratio}", flush=True)
    model.train()
    t0 = time.perf_counter()
    hist = []
    for step in range(args.steps):
        inputs, targets = unlabelled_batch(rng, args.batch)
        pv, grid = cap.to_tower_input(inputs)
        pv, mask = masked_input(pv.to(dev), args.batch, args.mask_ratio, mask_vector, g)
        target, weight = (t.to(dev) for t in cell_targets(targets))
        pred = decoder(cap.features(model, pv, grid.to(dev)))  # (B, 4, 4, 1536)
        err = weight * (pred - target) ** 2
        per_token = err.sum(-1) / weight.sum(-1)  # (B, 4, 4)
        m = mask.to(dev)
        loss_masked = per_token[m].mean() if m.any() else per_token.new_zeros(())
        loss_visible = per_token[~m].mean()
        loss = loss_masked + loss_visible
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        hist.append([loss.item(), loss_masked.item(), loss_visible.item()])
        if step % 25 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t0
            r = np.mean(hist[-25:], 0)
            print(f"step {step:5d}/{args.steps} loss {r[0]:.4f} masked {r[1]:.4f} visible {r[2]:.4f} "
                  f"lr {sched.get_last_lr()[0]:.2e} elapsed {el / 60:5.1f} min "
                  f"eta {el / (step + 1) * (args.steps - step - 1) / 60:5.1f} min", flush=True)
    wall = time.perf_counter() - t0
    # Save into a sibling temp folder, then rename: a stopped run leaves no half-written tower.
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.cpu().eval().save_pretrained(tmp, safe_serialization=True)
    final = dict(zip(("loss", "masked", "visible"), np.mean(hist[-25:], 0).round(5).tolist(), strict=True))
    report = {"objective": "masked-patch reconstruction (no labels, no captions)", "mask_ratio": args.mask_ratio,
              "object_weight": OBJECT_WEIGHT, "gaps_frames": list(GAPS), "params": n_params, "config": cap.VISION,
              "semantic_size": SEM_SIZE,
              "train": {"steps": args.steps, "seed": args.seed, "threads": args.threads, "batch": args.batch, "lr": args.lr,
                        "device": args.device, "wall_s": round(wall, 1), "s_per_step": round(wall / args.steps, 3),
                        "final_train": final}}
    report["preview"] = "reconstruction.png"
    write_preview(model, decoder, mask_vector, args, tmp / "reconstruction.png")
    (tmp / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return report


@torch.no_grad()
def write_preview(model, decoder, mask_vector, args, path: Path, n: int = 4) -> None:
    """A PNG of what the tower learned to see: for n fresh frame pairs (seeded), one row each of
    the first frame, its input with the masked cells white, the reconstruction of both frames from
    the tower's tokens, and the second frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng, g = np.random.default_rng([args.seed, 4]), torch.Generator().manual_seed(args.seed + 1)
    inputs, targets = unlabelled_batch(rng, n)
    pv, grid = cap.to_tower_input(inputs)
    pv, mask = masked_input(pv, n, args.mask_ratio, mask_vector.detach().cpu(), g)
    pred = decoder.cpu().eval()(cap.features(model, pv, grid))  # (n, 4, 4, 2·16·16·3)
    recon = pred.reshape(n, GRID, GRID, 2, CELL, CELL, 3).permute(0, 3, 1, 4, 2, 5, 6).reshape(n, 2, GRID * CELL, GRID * CELL, 3)
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    shown = np.stack(targets).copy()
    cells = np.kron(mask.numpy(), np.ones((CELL, CELL), dtype=bool))  # (n, 64, 64)
    shown[:, 0][cells] = 255
    gap = np.full((GRID * CELL, 4, 3), 255, np.uint8)
    rows = [np.concatenate([targets[i][0], gap, shown[i, 0], gap, recon[i, 0], gap, recon[i, 1], gap, targets[i][1]], 1) for i in range(n)]
    img = np.concatenate([np.concatenate([r, np.full((4, r.shape[1], 3), 255, np.uint8)], 0) for r in rows], 0)
    fig, ax = plt.subplots(figsize=(img.shape[1] / 40, img.shape[0] / 40 + 0.6))
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"frame 1 | input, {args.mask_ratio:.0%} of cells masked (white) | reconstruction of frames 1 and 2 | frame 2", fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# -- probe through the user's loader -----------------------------------------------------------------
def probe_features(spec: str, seed: int, n: int, fps: float):
    """Loader features of n held-out 4 s clips sampled at `fps`: (N_patches, 4, 4, d) and targets."""
    from semgen_cli.components import load_semantic_encoder
    from semgen_cli.components.semantic_encoder import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

    # Qwen's image-path bounds, as the toy tower is loaded and reproduce.sh extracts: a 112x112 frame
    # stays 112x112 (4x4 tokens); `qwen2.5-vl:PATH` alone defaults to the video bounds (12x12)
    enc = load_semantic_encoder(spec, fps=fps, min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    feats, tgt = [], {k: [] for k in ("colour", "shape", "background", "motion", "motion_valid", "cells")}
    for i in range(n):
        s = sample_spec(np.random.default_rng([PROBE_SEED, seed, i]), seconds=4.0, fps=FPS)
        clip = render(s)
        idx = sample_indices(s.num_frames, FPS, fps)
        f = enc.encode(resize_center_crop(clip[idx], SEM_SIZE))  # (T, 4, 4, d)
        for t in range(f.shape[0]):
            ii = idx[2 * t: 2 * t + 2]
            pair = clip[ii] if len(ii) == 2 else clip[[ii[0], ii[0]]]
            feats.append(f[t])
            tgt["cells"].append(cap.cell_targets(pair, cap.BACKGROUNDS[s.background]))
            for k, v in cap.labels(s).items():
                tgt[k].append(v)
            tgt["motion_valid"].append(len(ii) == 2)
    return enc, torch.stack(feats), {k: torch.tensor(np.array(v)) for k, v in tgt.items()}


def probe(spec: str, clips: int = 96, fps: float = 3.2, steps: int = 300) -> dict:
    """Fresh linear heads fitted on one set of held-out clips, scored on another (same protocol for every tower)."""
    enc, x_tr, t_tr = probe_features(spec, 0, clips, fps)
    _, x_te, t_te = probe_features(spec, 1, clips, fps)
    scores = cap.fit_probe(x_tr, t_tr, x_te, t_te, steps=steps)
    return {"spec": spec, "fingerprint": enc.fingerprint, "fps": fps, "clips": [clips, clips],
            "patches": [int(x_tr.shape[0]), int(x_te.shape[0])], **{k: round(v, 4) for k, v in scores.items()}}


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.probe:
        torch.set_num_threads(args.threads)
        out = {"probe": [probe(s, args.probe_clips, args.probe_fps) for s in args.probe]}
        print(json.dumps(out, indent=2), flush=True)
        if args.json:
            write_json_atomic(args.json, out)
        return
    report = train(args)
    if args.probe_clips > 0:
        t0 = time.perf_counter()
        report["linear_probe"] = probe(f"qwen2.5-vl:{args.out}", args.probe_clips, args.probe_fps)
        report["probe_s"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(Path(args.out) / "train_report.json", report)
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
