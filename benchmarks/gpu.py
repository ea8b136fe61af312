"""Wan2.1-T2V-1.3B-sized stage 1 on one accelerator: denoising steps and training steps.

Paper §3.4: stage 1 attends over VAE tokens plus in-context semantic tokens; full attention grows
quadratically with length, shifted windows (T_w latent frames, shifted by T_w/2 on odd layers)
linearly. This measures, on semgen's DiT at the published 1.3B width (wan-1.3b preset: 1536 wide,
30 blocks, 12 heads, FFN 8960, UMT5 text 4096 wide):

1. one stage-1 denoising step (one DiT forward, no CFG) over 10 s, 30 s and 60 s of 480x832 video,
   full against shifted-window attention, under each SDPA backend
   (`torch.nn.attention.sdpa_kernel`: flash, efficient, cudnn, math), in seconds and MFU;
2. one training step (forward, backward, AdamW) over 5 s at 480x832, with and without gradient
   checkpointing, and with LoRA adapters (peft, rank R on the attention and FFN projections, the
   semantic layers trained fully) when semgen's train-latent has `--lora-rank` (or `--lora-rank R`
   here), in seconds and peak memory.

Tokens: Wan's VAE at 16 fps, stride 4 in time and 8 in space, then the 1x2x2 patch: 1 + 4·s latent
frames of 30x52 tokens for s seconds at 480x832; Qwen2.5-VL semantic tokens at 1.6 fps merged 2 in
time (0.8 frames/s) of 17x30 (476x840 after smart_resize, /28), compressed to 8 channels; 512 text
tokens.

FLOP model (MFU = FLOPs / seconds / the device's dense bf16 peak): a forward costs 2 FLOPs per
multiply-add of every Linear of the DiT per token (video + semantic tokens; the text projections
per text token), plus per block 4·L·A·D for self-attention scores and values (A keys per query:
L for full attention, the tokens of a window for swin) and 4·L·Lt·D for cross-attention; a
training step costs 3x the forward, 4x with gradient checkpointing (the forward is run again).
Peaks (dense bf16, TFLOP/s) come from the vendors' data sheets by device name (`PEAK_TFLOPS`);
`--peak-tflops` overrides; on CPU no MFU is reported.

    python benchmarks/gpu.py                     # CUDA, the sizes above
    python benchmarks/gpu.py --small             # CPU, a narrow DiT and a small grid (seconds)
    python benchmarks/gpu.py --out gpu.json      # also write the rows as JSON
    python benchmarks/gpu.py --activations       # bytes a token one block keeps for backward (CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import time

import torch

PEAK_TFLOPS = {  # dense bf16 tensor-core peaks, TFLOP/s, matched against torch.cuda.get_device_name
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "H100": 756.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
}
BACKENDS = ("flash", "efficient", "cudnn", "math")


@dataclasses.dataclass
class Geometry:
    """Token counts of one clip: video grid, semantic grid, text length."""
    fps: float = 16.0
    temporal_stride: int = 4
    tokens_h: int = 30
    tokens_w: int = 52
    semantic_fps: float = 0.8
    semantic_h: int = 17
    semantic_w: int = 30
    text_tokens: int = 512

    def latent_frames(self, seconds: float) -> int:
        return 1 + int(seconds * self.fps) // self.temporal_stride

    def semantic_frames(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self.semantic_fps))


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def forward_flops(dit, geo: Geometry, seconds: float, window: int | None) -> float:
    """FLOPs of one DiT forward under the model in the module docstring."""
    cfg = dit.config
    frames, per_frame = geo.latent_frames(seconds), geo.tokens_h * geo.tokens_w
    sem = geo.semantic_frames(seconds) * geo.semantic_h * geo.semantic_w
    L, Lt, D = frames * per_frame + sem, geo.text_tokens, cfg.dim
    linear = sum(m.in_features * m.out_features for m in dit.modules() if isinstance(m, torch.nn.Linear))
    text_linear = sum(m.in_features * m.out_features for n, m in dit.named_modules()
                      if isinstance(m, torch.nn.Linear) and (".cross_attn.k" in n or ".cross_attn.v" in n
                                                             or n.startswith("text_embed")))
    attended = L if window is None else min(L, L * window / frames)
    per_block = 4 * L * attended * D + 4 * L * Lt * D
    return 2 * (linear - text_linear) * L + 2 * text_linear * Lt + cfg.layers * per_block


def build(small: bool, attention: str, window: int, device, dtype, lora_rank: int = 0):
    from semgen_cli.models.dit import DiT
    from semgen_cli.models.presets import preset

    kw = dict(in_channels=16, text_dim=64 if small else 4096, semantic_dim=8, attention=attention, window=window)
    cfg = preset("wan-1.3b", **kw) if not small else preset("tiny", **kw, dim=48, heads=4, ffn_dim=96)
    with torch.device(device):
        dit = DiT(cfg)
    dit = dit.to(dtype)
    if lora_rank:
        from semgen_cli.lora import LoraSpec, apply_lora

        apply_lora(dit, LoraSpec(lora_rank), ("semantic_embed.", "sigma_embed."))  # as train-latent --lora-rank does
    return dit


def inputs(geo: Geometry, seconds: float, text_dim: int, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    T = geo.latent_frames(seconds)
    x = torch.randn(1, 16, T, geo.tokens_h * 2, geo.tokens_w * 2, generator=g)
    sem = torch.randn(1, geo.semantic_frames(seconds), geo.semantic_h, geo.semantic_w, 8, generator=g)
    text = torch.randn(1, geo.text_tokens, text_dim, generator=g)
    return [a.to(device, dtype) for a in (x, sem, text)] + [torch.full((1,), 0.5, device=device)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB, the process's peak


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def failure(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def denoise_rows(args, geo, device, dtype, peak):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    rows = []
    for attention in ("full", "swin"):
        dit = build(args.small, attention, args.window, device, dtype).eval()
        for seconds in args.seconds:
            x, sem, text, t = inputs(geo, seconds, dit.config.text_dim, device, dtype)
            flops = forward_flops(dit, geo, seconds, None if attention == "full" else args.window)
            for backend in args.backends:
                row = dict(kind="denoise", attention=attention, seconds=seconds, backend=backend,
                           tokens=x.shape[2] * geo.tokens_h * geo.tokens_w + sem.shape[1] * geo.semantic_h * geo.semantic_w)
                reset_peak(device)
                try:
                    with torch.no_grad(), sdpa_kernel(kernels[backend]):
                        s = timed(lambda m=dit, a=(x, t, text), e=sem: m(*a, semantic=e), device, args.repeats)
                    row.update(step_s=round(s, 4), tflop=round(flops / 1e12, 2), peak_gb=round(peak_memory_gb(device), 2))
                    if peak:
                        row["mfu"] = round(flops / s / (peak * 1e12), 4)
                except (RuntimeError, torch.OutOfMemoryError) as exc:
                    row["error"] = failure(exc)
                rows.append(row)
                print(json.dumps(row), flush=True)
        del dit
    return rows


def _train_step(dit, opt, args, sem, device, dtype) -> None:
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = dit(*args, semantic=sem).float().pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def train_rows(args, geo, device, dtype, peak):
    rows = []
    variants = [("full", False, 0), ("full", True, 0)]
    if args.lora_rank:
        variants += [("lora", False, args.lora_rank), ("lora", True, args.lora_rank)]
    for name, checkpointing, rank in variants:
        row = dict(kind="train", weights=name if not rank else f"lora r{rank}", gradient_checkpointing=checkpointing,
                   seconds=args.train_seconds, attention="swin")
        reset_peak(device)
        try:
            dit = build(args.small, "swin", args.window, device, torch.float32, lora_rank=rank).train()
            dit.gradient_checkpointing = checkpointing
            trainable = [p for p in dit.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(trainable, lr=1e-5)
            x, sem, text, t = inputs(geo, args.train_seconds, dit.config.text_dim, device, torch.float32)

            s = timed(lambda m=dit, o=opt, a=(x, t, text), e=sem: _train_step(m, o, a, e, device, dtype),
                      device, args.repeats)
            flops = (4 if checkpointing else 3) * forward_flops(dit, geo, args.train_seconds, args.window)
            row.update(step_s=round(s, 4), trainable=sum(p.numel() for p in trainable),
                       peak_gb=round(peak_memory_gb(device), 2))
            if peak:
                row["mfu"] = round(flops / s / (peak * 1e12), 4)
            del dit, opt
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            row["error"] = failure(exc)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def saved_bytes_per_token(small: bool, frames=(1, 2)) -> dict:
    """Bytes autograd keeps per token for backward, one DiT block at the 1.3B width in bf16 autocast,
    flash SDPA (no L x L matrix), counted with saved_tensors_hooks (each storage once) at two lengths:
    the slope is the per-token activation memory of a block without gradient checkpointing."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dit = build(small, "full", 8, "cpu", torch.float32).train()
    geo = Geometry(tokens_h=4, tokens_w=6, text_tokens=16) if small else Geometry()
    block, D = dit.blocks[0], dit.config.dim
    counts = []
    for f in frames:
        L = f * geo.tokens_h * geo.tokens_w
        x = torch.randn(1, L, D, requires_grad=True)
        from semgen_cli.models.dit import video_positions

        rope = dit.rope(video_positions(f, geo.tokens_h, geo.tokens_w)[None])
        context = torch.randn(1, geo.text_tokens, D)
        mod = torch.randn(1, 1, 6, D)
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), sdpa_kernel(SDPBackend.FLASH_ATTENTION), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            block(x, context, mod, (L,), rope)
        counts.append((L, sum(seen.values())))
    (l1, b1), (l2, b2) = counts
    return {"dim": D, "bytes_per_token_per_block": round((b2 - b1) / (l2 - l1)), "tokens": [l1, l2]}


def default_lora_rank() -> int:
    """16 when semgen's train-latent has LoRA (a `lora_rank` setting), else 0 (no LoRA rows)."""
    from semgen_cli.steps.train_latent import TrainLatentConfig

    return 16 if "lora_rank" in {f.name for f in dataclasses.fields(TrainLatentConfig)} else 0


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU, narrow DiT, 4x6 tokens a frame, 1 and 2 s")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --small)")
    p.add_argument("--seconds", type=float, nargs="+", default=None, help="denoising lengths (default 10 30 60)")
    p.add_argument("--train-seconds", type=float, default=None, help="training clip length (default 5)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                   help="SDPA backends (default: all four on CUDA, math and flash on CPU)")
    p.add_argument("--window", type=int, default=8, help="swin window T_w in latent frames")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats after a warm-up (best kept)")
    p.add_argument("--lora-rank", type=int, default=None, help="LoRA rank of the training rows (0: none; "
                   "default: 16 when train-latent has --lora-rank)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--activations", action="store_true", help="only print the per-token activation bytes of a block")
    p.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.activations:
        row = saved_bytes_per_token(args.small)
        print(json.dumps(row))
        return [row]
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    geo = Geometry(tokens_h=4, tokens_w=6, semantic_h=2, semantic_w=3, text_tokens=16) if args.small else Geometry()
    args.seconds = args.seconds or ([1.0, 2.0] if args.small else [10.0, 30.0, 60.0])
    args.train_seconds = args.train_seconds or (1.0 if args.small else 5.0)
    args.backends = args.backends or (["math", "flash"] if device.type == "cpu" else list(BACKENDS))
    args.repeats = args.repeats or (1 if args.small else 2)
    args.lora_rank = default_lora_rank() if args.lora_rank is None else args.lora_rank
    if args.small:
        args.window = min(args.window, 2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = peak_tflops(device, args.peak_tflops)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": device_name, "peak_tflops": peak, "dtype": str(dtype), "torch": torch.__version__}))
    rows = denoise_rows(args, geo, device, dtype, peak)
    if not args.skip_train:
        rows += train_rows(args, geo, device, dtype, peak)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device_name, "peak_tflops": peak, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
