"""Forward+backward time and peak memory of one DiT block, full vs shifted-window attention.

Paper §3.4: full attention over VAE tokens grows quadratically with video length, swin attention
(windows of T_w latent frames, shifted by T_w/2 on odd layers) linearly. This times one
``DiTBlock`` (self-attention, text cross-attention, FFN, AdaLN) at several video lengths and
prints a table plus the ratios t(60 s)/t(10 s) (quadratic: 36x, linear: 6x).

Token assumptions (flags): latents at ``--latent-fps`` frames per second (Wan2.1: 16 fps video /
temporal stride 4 = 4 latent fps; 24 fps video in the paper = 6), ``--tokens-h x --tokens-w``
tokens per latent frame after the 1x2x2 patch (480x832 video: /8 VAE, /2 patch = 30x52).
Optional in-context semantic tokens: ``--semantic-tokens`` per semantic frame at
``--semantic-fps`` (Qwen2.5-VL: 2 frames at 1.6 fps merge into one, so 0.8 semantic frames/s;
480x832 -> 17x29 after 28-pixel merging).

Times are the best of ``--repeats`` steps after a warm-up; with ``--device cpu --threads 1``
they are the process's CPU time, so other jobs on a shared machine do not distort them.

Defaults: on CUDA the ``wan-1.3b`` width (1536, 12 heads, FFN 8960) at 30x52 tokens in bf16,
reporting MFU against ``--peak-tflops`` (989 = H100 SXM dense bf16); on CPU a small width and
4x8 tokens per frame in fp32 so a run takes a couple of minutes. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA, and on CPU the growth of the peak resident set
(``ru_maxrss``) of a fresh process per measurement.

    python benchmarks/attention.py                 # CPU defaults
    python benchmarks/attention.py --device cuda   # wan-1.3b width, 480x832
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time


def _flops(L: int, attended: float, Lt: int, D: int, F: int) -> float:
    """Forward+backward FLOPs of one block: 3x the forward's matmuls."""
    fwd = (
        2 * 4 * L * D * D  # self-attention q, k, v, o
        + 2 * 2 * L * attended * D  # q k^T and attn v (each token sees `attended` keys)
        + 2 * 2 * L * D * D + 2 * 2 * Lt * D * D  # cross-attention q, o and text k, v
        + 2 * 2 * L * Lt * D  # cross-attention scores and values
        + 2 * 2 * L * D * F  # FFN
    )
    return 3.0 * fwd


def measure(args: dict) -> dict:
    """Time one block at one length; runs in a fresh process on CPU so ru_maxrss is its own."""
    import torch

    from semgen_cli.models.attention import window_plan
    from semgen_cli.profiling import peak_rss
    from semgen_cli.models.dit import DiTBlock, DiTConfig, RoPE3D, semantic_positions, video_positions

    torch.manual_seed(0)
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args["dtype"]]
    cfg = DiTConfig(dim=args["dim"], heads=args["heads"], ffn_dim=args["ffn_dim"], layers=1,
                    attention=args["attention"], window=args["window"])
    block = DiTBlock(cfg).to(device, dtype)
    T, h, w = args["frames"], args["tokens_h"], args["tokens_w"]
    Nv = T * h * w
    pos = video_positions(T, h, w, device=device)[None]
    slots = torch.arange(T, device=device).repeat_interleave(h * w)
    split = (Nv,)
    Ts, S = args["semantic_frames"], args["semantic_tokens"]
    if Ts and S:
        sh = max(1, int(round((S * h / w) ** 0.5)))
        sw = max(1, S // sh)
        times = ((torch.arange(Ts, device=device) + 0.5) * T / Ts - 0.5)[None]
        pos = torch.cat([pos, semantic_positions(times, sh, sw, h, w)], dim=1)
        slots = torch.cat([slots, times[0].round().clamp(0, T - 1).long().repeat_interleave(sh * sw)])
        split = (Nv, Ts * sh * sw)
    L = pos.shape[1]
    rope = RoPE3D(cfg.head_dim, cfg.rope_theta)(pos)
    plan = window_plan(slots, T, cfg.window, 0) if cfg.attention == "swin" else None
    x = torch.randn(1, L, cfg.dim, device=device, dtype=dtype, requires_grad=True)
    context = torch.randn(1, args["text_len"], cfg.dim, device=device, dtype=dtype)
    mod = torch.randn(1, len(split), 6, cfg.dim, device=device, dtype=dtype) * 0.1

    def step():
        out = block(x, context, mod, split, rope, plan)
        out.float().square().mean().backward()
        x.grad = None
        block.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # on a CPU with one thread, the process's CPU time is immune to other jobs sharing the cores
    clock = time.process_time if device.type == "cpu" and args["threads"] == 1 else time.perf_counter
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # before the first step: the allocator reuses memory, so later steps add no new peak
        base = peak_rss()
    step()  # warm-up
    sync()
    times_s = []
    for _ in range(args["repeats"]):
        start = clock()
        step()
        sync()
        times_s.append(clock() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss() - base
    if plan is None:
        attended = float(L)
    elif plan.perm is None:
        attended = float(cfg.window * h * w)
    else:
        attended = sum(n * length * length for n, length in plan.groups) / L
    return {"time": min(times_s), "peak": peak, "tokens": L,
            "flops": _flops(L, attended, args["text_len"], cfg.dim, cfg.ffn_dim)}


def _run(job: dict, fresh_process: bool) -> dict:
    if not fresh_process:
        return measure(job)
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(measure, (job,))


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--seconds", type=float, nargs="+", default=[10, 20, 40, 60])
    p.add_argument("--latent-fps", type=float, default=4.0, help="latent frames per second (16 fps / VAE stride 4)")
    p.add_argument("--tokens-h", type=int, default=None, help="tokens per frame, height (30 for 480p at GPU width)")
    p.add_argument("--tokens-w", type=int, default=None, help="tokens per frame, width (52 for 832 px)")
    p.add_argument("--window", type=int, default=8, help="swin window T_w in latent frames")
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--ffn-dim", type=int, default=None)
    p.add_argument("--text-len", type=int, default=None)
    p.add_argument("--semantic-tokens", type=int, default=0, help="tokens per semantic frame (0 = none)")
    p.add_argument("--semantic-fps", type=float, default=0.8, help="semantic frames per second")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--peak-tflops", type=float, default=989.0 if cuda else 0.0, help="for MFU; 0 = do not report")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    on_gpu = a.device.startswith("cuda")
    gpu_or_cpu = lambda g, c: g if on_gpu else c  # noqa: E731
    a.tokens_h = a.tokens_h or gpu_or_cpu(30, 4)
    a.tokens_w = a.tokens_w or gpu_or_cpu(52, 8)
    a.dim = a.dim or gpu_or_cpu(1536, 128)
    a.heads = a.heads or gpu_or_cpu(12, 2)
    a.ffn_dim = a.ffn_dim or gpu_or_cpu(8960, 512)
    a.text_len = a.text_len or gpu_or_cpu(512, 64)
    a.dtype = a.dtype or gpu_or_cpu("bf16", "fp32")
    a.repeats = a.repeats or gpu_or_cpu(3, 1)

    timer = "process CPU time (1 thread)" if not on_gpu and a.threads == 1 else "wall time"
    print(f"device {a.device}, {a.dtype}, {timer}, best of {a.repeats}; one DiT block fwd+bwd: dim {a.dim}, heads {a.heads}, ffn {a.ffn_dim}, "
          f"text {a.text_len} tokens")
    print(f"latents {a.latent_fps:g} frames/s x {a.tokens_h}x{a.tokens_w} tokens/frame; swin T_w = {a.window} "
          f"latent frames ({a.window / a.latent_fps:g} s), shift {a.window // 2}"
          + (f"; + {a.semantic_tokens} semantic tokens per semantic frame at {a.semantic_fps:g}/s" if a.semantic_tokens else ""))
    rows = []
    for sec in a.seconds:
        frames = max(1, round(sec * a.latent_fps))
        row = {"seconds": sec, "frames": frames}
        for kind in ("full", "swin"):
            job = dict(vars(a), attention=kind, frames=frames,
                       semantic_frames=max(1, round(sec * a.semantic_fps)) if a.semantic_tokens else 0)
            row[kind] = _run(job, fresh_process=not on_gpu)
        rows.append(row)

    def mem(b):
        return f"{b / 2**20:8.1f} MiB"

    head = f"{'sec':>5} {'frames':>6} {'tokens':>8} | {'full s':>8} {'full mem':>12} | {'swin s':>8} {'swin mem':>12} | full/swin"
    if a.peak_tflops:
        head += " | MFU full  MFU swin"
    print(head)
    for r in rows:
        f, s = r["full"], r["swin"]
        line = (f"{r['seconds']:>5g} {r['frames']:>6} {f['tokens']:>8} | {f['time']:8.3f} {mem(f['peak'])} | "
                f"{s['time']:8.3f} {mem(s['peak'])} | {f['time'] / s['time']:8.2f}x")
        if a.peak_tflops:
            line += f" | {f['flops'] / f['time'] / 1e12 / a.peak_tflops:8.1%} {s['flops'] / s['time'] / 1e12 / a.peak_tflops:8.1%}"
        print(line)
    first, last = rows[0], rows[-1]
    for kind in ("full", "swin"):
        tr = last[kind]["time"] / first[kind]["time"]
        mr = last[kind]["peak"] / max(first[kind]["peak"], 1)
        print(f"{kind}: t({last['seconds']:g}s)/t({first['seconds']:g}s) = {tr:.1f}x, "
              f"mem ratio {mr:.1f}x, achieved {last[kind]['flops'] / last[kind]['time'] / 1e12:.2f} TFLOP/s at {last['seconds']:g}s "
              f"(tokens x{last[kind]['tokens'] / first[kind]['tokens']:.0f}: linear {last[kind]['tokens'] / first[kind]['tokens']:.0f}x, "
              f"quadratic {(last[kind]['tokens'] / first[kind]['tokens']) ** 2:.0f}x)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"args": vars(a), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
