"""Run under `torchrun --nproc_per_node=K` by tests/test_parallel.py: a tiny swin DiT with random
weights and inputs, its output (and an Euler sample with CFG) computed by every rank alone and
through the parallel wrappers; exits non-zero when they differ by more than 1e-5."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from semgen_cli.flow import euler_sample
from semgen_cli.models.dit import DiT, DiTConfig
from semgen_cli.parallel import ParallelPlan, attach, join
from semgen_cli.parallel.window import plain_windows


def tiny(window: int = 4, semantic: int = 3) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(in_channels=4, patch=(1, 2, 2), dim=24, layers=4, heads=2, ffn_dim=32, text_dim=8, freq_dim=16,
                    attention="swin", window=window, semantic_dim=semantic)
    model = DiT(cfg)
    for p in model.parameters():  # the zero-initialised head and sigma embedding would hide differences
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def inputs(T: int, Ts: int, B: int = 2):
    g = torch.Generator().manual_seed(T * 100 + Ts)
    cond = {
        "text": torch.randn(B, 5, 8, generator=g),
        "semantic": torch.randn(B, Ts, 2, 2, 3, generator=g) if Ts else None,
        "semantic_sigma": torch.full((B,), 0.3),
        "semantic_times": (torch.arange(Ts) * (T - 1) / max(1, Ts - 1)).expand(B, Ts).contiguous() if Ts else None,
    }
    return torch.randn(B, 4, T, 4, 4, generator=g), torch.rand(B, generator=g), {k: v for k, v in cond.items() if v is not None}


def agreement() -> None:
    """Rank 1 fails to load, rank 0 does not: both must raise rank 1's one-line error."""
    from semgen_cli.errors import InputError
    from semgen_cli.parallel import load

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    plan = join(ParallelPlan("window", rank=rank, world=world, window=world, windows=99))

    def make():
        if rank == 1:
            raise InputError("--latent-run runs/x: model.safetensors is truncated; retrain it")
        return type("P", (), {"latent_dit": tiny(), "semantic_dit": None})()

    try:
        load(plan, make)
    except InputError as err:
        print(f"rank {rank} raised {type(err).__name__} shared={getattr(err, 'shared', False)}: {err}", flush=True)
        return
    sys.exit(f"rank {rank}: no error raised")


def main() -> None:
    mode = sys.argv[1]
    if mode == "agree":
        return agreement()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    g = 2 if "guidance" in mode else 1
    plan = join(ParallelPlan(mode, rank=rank, world=world, guidance=g, window=world // g, windows=99))
    worst = 0.0
    # lengths: windows that divide T, a last window kept short, a last sliver joined to the one before,
    # semantic frames sparse or none, and the shortest sequence with one window per rank
    cases = [(16, 4), (18, 3), (13, 2), (21, 5), (9, 0), (8 * (world // g), 2)]
    for T, Ts in cases:
        if plain_windows(T, 4) < plan.window:
            continue
        model = tiny()
        x, t, cond = inputs(T, Ts)
        with torch.no_grad():
            want = model(x, t, **cond)
            pipe = type("P", (), {"latent_dit": model, "semantic_dit": None})()
            parts = attach(plan, pipe)
            got = pipe.latent_dit(x, t, **cond)
            want_z = euler_sample(model if not parts.get("window") else _plain(model), x[:1], 3, cfg_scale=3.0,
                                  cond={k: v[:1] for k, v in cond.items()}, uncond={"text": torch.zeros_like(cond["text"][:1])})
            got_z = euler_sample(pipe.latent_dit, x[:1], 3, cfg_scale=3.0,
                                 cond={k: v[:1] for k, v in cond.items()}, uncond={"text": torch.zeros_like(cond["text"][:1])})
        d = max(float((want - got).abs().max()), float((want_z - got_z).abs().max()))
        worst = max(worst, d)
        sent = sum(p.bytes_sent for p in parts.values())
        print(f"rank {rank} T={T} Ts={Ts}: max diff {d:.2e}, sent {sent} bytes", flush=True)
        if d > 1e-5:
            sys.exit(f"rank {rank}: {mode} differs from one process by {d:.3g} at T={T}, Ts={Ts}")
        if world > 1 and sent == 0:
            sys.exit(f"rank {rank}: {mode} sent nothing at T={T}")
    dist.barrier(plan.groups["control"])
    print(f"rank {rank}: {mode} OK, worst {worst:.2e}")


def _plain(model):
    """The same model without its shard (the single-process reference)."""
    class Plain:
        def __call__(self, *a, **k):
            shard, model.shard = model.shard, None
            try:
                return model(*a, **k)
            finally:
                model.shard = shard
    return Plain()


if __name__ == "__main__":
    main()
