"""Time per stage and peak memory of `semgen generate` at 10, 30 and 60 seconds, swin vs full attention.

Paper §3.4: stage 2 plans the whole video with full attention over the (few) semantic tokens;
stage 1 renders VAE latents with shifted-window attention, so its cost is linear in the length;
the VAE decodes chunk by chunk into the mp4 writer, so its memory stays flat. This measures each
stage at several lengths in one process, with stage 1 also run with ``attention="full"`` (the
latent DiT config copied with full attention, same weights) beside it, and prints a table and
the ratios t(60)/t(10) and mem(60)/mem(10) (linear: 6x, quadratic: 36x, flat: 1x).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` per stage (reset at the stage start); on CPU
the growth of the process's peak resident set during the stage (``VmHWM`` reset through
``/proc/self/clear_refs`` at the stage start), i.e. what the stage itself adds on top of the
loaded models. Stage timings are wall clock (``--threads 1`` by default on CPU so timings are
stable on a shared machine).

By default it builds tiny runs in a temp folder (toy-data → extract → fit-compressor →
train-latent → train-semantic, untrained: only the cost matters); pass ``--latent-run`` and
``--semantic-run`` to measure real ones.

    python benchmarks/generate.py                             # tiny runs on CPU, ~2 minutes
    python benchmarks/generate.py --size 128x128 --steps 4    # more tokens per frame
    python benchmarks/generate.py --latent-run runs/latent --semantic-run runs/semantic --device cuda
    python benchmarks/generate.py --ranks 1 2 --seconds 10 60     # 1 vs 2 ranks (torchrun), see docs/multigpu.md

With ``--ranks``, the runs are built once and each rank count is one ``torchrun
--nproc_per_node=K`` of this script in worker mode (``--parallel``, default window): it reports
the stage-1 time and the whole-video time (text + stage 2 + stage 1 + decode, rank 0's clock)
per length and rank count, and the bytes each rank sent per Euler step (halo exchanges and
output gathers of stage 1, CFG halves of each stage), beside the bytes the formula of
docs/multigpu.md predicts for the halo exchanges.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle moving left on a black background"


def build_tiny_runs(root: Path, preset: str = "tiny") -> tuple[Path, Path]:
    """The tiny pipeline of the tests, through the library."""
    from semgen_cli.steps.extract import ExtractConfig, extract
    from semgen_cli.steps.fit_compressor import FitCompressorConfig, fit_compressor
    from semgen_cli.steps.train_latent import TrainLatentConfig, train_latent
    from semgen_cli.steps.train_semantic import TrainSemanticConfig, train_semantic
    from semgen_cli.toy.dataset import ToyDataConfig, write_toy_dataset
    from semgen_cli.training import TrainConfig

    write_toy_dataset(root / "videos", ToyDataConfig(count=4, seconds=4, seed=3))
    extract(ExtractConfig(str(root / "videos"), out=str(root / "data"), fps=8, num_workers=0))
    fit_compressor(FitCompressorConfig(str(root / "data"), out=str(root / "comp")), TrainConfig(steps=5, batch_size=2))
    train_latent(TrainLatentConfig(str(root / "data"), out=str(root / "lat"), compressor=str(root / "comp"), preset=preset), TrainConfig(steps=2, batch_size=2))
    train_semantic(TrainSemanticConfig(str(root / "data"), latent_run=str(root / "lat"), out=str(root / "sem"), preset=preset), TrainConfig(steps=2, batch_size=2))
    return root / "lat", root / "sem"


def run(a: argparse.Namespace, work: Path) -> dict:
    import torch

    from semgen_cli.pipeline import Pipeline
    from semgen_cli.profiling import Stages
    from semgen_cli.steps.generate import GenerateConfig, generate, resolve

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.latent_run and a.semantic_run:
        lat, sem = Path(a.latent_run), Path(a.semantic_run)
    else:
        t0 = time.perf_counter()
        lat, sem = build_tiny_runs(work / "runs", a.preset)
        print(f"built tiny runs ({a.preset}) in {time.perf_counter() - t0:.0f} s under {work / 'runs'}", flush=True)

    def config(seconds: float, **kw) -> GenerateConfig:
        return GenerateConfig(
            prompts=[PROMPT], out=str(work / f"bench-{seconds:g}s.mp4"), seconds=seconds, latent_run=str(lat), semantic_run=str(sem),
            semantic_steps=a.steps, latent_steps=a.steps, seed=0, device=a.device, dtype=a.dtype, size=a.size, **kw,
        )

    rows, full_pipe = [], None
    for seconds in a.seconds:
        # 1. the whole pipeline as `semgen generate` runs it (stage 1 with the run's own attention)
        res = generate(config(seconds))
        v = res.videos[0]
        r = resolve(config(seconds))
        C, T, h, w = r.latent_shape
        ph, pw = r.lat.dit["patch"][1:]
        row = {
            "seconds": seconds, "frames": v.frames, "latent_frames": T,
            "latent_tokens": T * (h // ph) * (w // pw), "semantic_tokens": r.semantic_tokens * r.semantic_grid[0] * r.semantic_grid[1],
            "attention": r.lat.dit["attention"],
            "time": dict(v.seconds_per_stage), "memory": {k: m["above_start"] for k, m in v.memory_per_stage.items()},
            "peak": {k: m["peak"] for k, m in v.memory_per_stage.items()},
        }
        # 2. stage 1 again with the same weights but full attention
        full_cfg = config(seconds, attention="full")
        r_full = resolve(full_cfg)
        if full_pipe is None:
            full_pipe = Pipeline(full_cfg, r_full)
        full_pipe.cfg, full_pipe.r = full_cfg, r_full
        stages = Stages(full_pipe.device)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn((1, *r_full.latent_shape), generator=g)
        plan = torch.randn((1, r_full.semantic_tokens, *r_full.semantic_grid, r_full.channels), generator=g)
        with torch.inference_mode():
            cond, uncond = full_pipe.text(PROMPT)
            stages.begin("latent")
            try:
                full_pipe.latents(plan.to(full_pipe.device), cond, uncond, noise, torch.zeros_like(plan))
                stages.end()
                row["time"]["latent_full"] = stages.seconds["latent"]
                row["memory"]["latent_full"] = stages.memory["latent"]["above_start"]
            except torch.cuda.OutOfMemoryError:
                row["time"]["latent_full"] = row["memory"]["latent_full"] = None
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"  {seconds:g} s done: " + ", ".join(f"{k} {t:.2f} s" for k, t in row["time"].items() if t is not None), flush=True)
    return {"device": res.device, "dtype": res.dtype, "memory_kind": res.memory_kind, "steps": a.steps, "rows": rows,
            "size": list(r.size), "latent_run": str(lat), "semantic_run": str(sem), "threads": torch.get_num_threads()}


def report(out: dict) -> None:
    mib = 1024 * 1024
    rows = out["rows"]
    stages = ["semantic", "latent", "latent_full", "decode"]
    names = {"semantic": "stage 2 (full)", "latent": f"stage 1 ({rows[0]['attention']})", "latent_full": "stage 1 (full)", "decode": "VAE decode+write"}
    print(f"\ndevice {out['device']}, {out['dtype']}, {out['threads']} threads; {out['steps']} Euler steps per stage (CFG on, so 2 evaluations each); "
          f"{out['size'][0]}x{out['size'][1]}; memory = growth of {out['memory_kind']} during the stage")
    head = f"{'seconds':>7} {'frames':>6} {'lat tok':>8} {'sem tok':>7} | " + " | ".join(f"{names[s]:>18}" for s in stages)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for s in stages:
            t, m = r["time"].get(s), r["memory"].get(s)
            cells.append(f"{'OOM':>18}" if t is None else f"{t:8.2f} s {m / mib:6.1f} MiB")
        print(f"{r['seconds']:>7g} {r['frames']:>6} {r['latent_tokens']:>8} {r['semantic_tokens']:>7} | " + " | ".join(cells))
    first, last = rows[0], rows[-1]
    print(f"\nratios {last['seconds']:g} s / {first['seconds']:g} s (length x{last['seconds'] / first['seconds']:g}):")
    for s in stages:
        t0, t1 = first["time"].get(s), last["time"].get(s)
        m0, m1 = first["memory"].get(s), last["memory"].get(s)
        if None in (t0, t1):
            print(f"  {names[s]:<18} OOM")
            continue
        mem = f"{m1 / m0:6.1f}x" if m0 else f"{'n/a':>7} ({m0 / mib:.1f} → {m1 / mib:.1f} MiB)"
        print(f"  {names[s]:<18} t {t1 / t0:6.1f}x   mem {mem}   ({m0 / mib:.1f} → {m1 / mib:.1f} MiB)")


def worker(a: argparse.Namespace, work: Path) -> None:
    """One rank of a `--ranks` measurement: generate each length, write what this rank saw."""
    import torch

    from semgen_cli import parallel
    from semgen_cli.steps.generate import GenerateConfig, generate

    if a.threads:
        torch.set_num_threads(a.threads)
    rank, world = parallel.world()
    rows = []
    for seconds in a.seconds:
        cfg = GenerateConfig(prompts=[PROMPT], out=str(work / f"bench-{world}-{seconds:g}s.mp4"), seconds=seconds, latent_run=a.latent_run,
                             semantic_run=a.semantic_run, semantic_steps=a.steps, latent_steps=a.steps, seed=0, device=a.device,
                             dtype=a.dtype, size=a.size, parallel=a.parallel if world > 1 else "none")
        t0 = time.perf_counter()
        res = generate(cfg)
        wall = time.perf_counter() - t0
        parts = parallel.last_parts()
        stage1 = sum(parts[k].bytes_sent for k in ("window", "latent pair") if k in parts)
        stage2 = parts["semantic pair"].bytes_sent if "semantic pair" in parts else 0
        shard = parts.get("window")
        row = {"seconds": seconds, "wall": wall, "stages": dict(res.videos[0].seconds_per_stage) if res.videos else {},
               "stage1_bytes_per_step": stage1 / a.steps, "stage2_bytes_per_step": stage2 / a.steps,
               "halo_bytes_per_step": shard.halo_bytes / a.steps if shard else 0}
        if shard is not None:  # the formula: per shifted layer, the tokens of this rank's parts of straddling windows
            lay = shard._layout
            dit = json.loads((Path(a.latent_run) / "config.json").read_text())["dit"]
            row["halo_formula"] = (dit["layers"] // 2) * (len(lay.send_left) + len(lay.send_right)) * 2 * dit["dim"] * 4
            row["halo_tokens"] = len(lay.send_left) + len(lay.send_right)
            row["tokens_per_frame"] = int((lay.slots == 0).sum())
        rows.append(row)
    Path(a.worker_out).with_name(f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "world": world, "mode": a.parallel, "rows": rows,
                                                                             "device": res.device, "dtype": res.dtype}))


def ranks(a: argparse.Namespace, work: Path) -> dict:
    """Build (or take) the runs, then one torchrun per rank count; collect every rank's report."""
    import os
    import socket
    import subprocess
    import sys

    if not (a.latent_run and a.semantic_run):
        t0 = time.perf_counter()
        lat, sem = build_tiny_runs(work / "runs", a.preset)
        a.latent_run, a.semantic_run = str(lat), str(sem)
        print(f"built tiny runs ({a.preset}) in {time.perf_counter() - t0:.0f} s under {work / 'runs'}", flush=True)
    out = {"ranks": {}, "steps": a.steps, "mode": a.parallel}
    for k in a.ranks:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        folder = work / f"ranks-{k}"
        folder.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={k}", f"--master_port={port}", __file__, "--worker-out",
               str(folder / "rank.json"), "--latent-run", a.latent_run, "--semantic-run", a.semantic_run, "--steps", str(a.steps),
               "--parallel", a.parallel, "--device", a.device, "--dtype", a.dtype, "--threads", str(a.threads),
               "--seconds", *map(str, a.seconds)] + (["--size", f"{a.size[0]}x{a.size[1]}"] if a.size else [])
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads or 1)})
        if res.returncode:
            raise SystemExit(f"torchrun --nproc_per_node={k} failed:\n{res.stderr[-3000:]}")
        out["ranks"][k] = [json.loads((folder / f"rank-{r}.json").read_text()) for r in range(k)]
        print(f"  {k} rank(s) done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def report_ranks(out: dict) -> None:
    first = next(iter(out["ranks"].values()))[0]
    print(f"\n{first['device']}, {first['dtype']}; {out['steps']} Euler steps per stage; --parallel {out['mode']} for more than one rank")
    head = f"{'seconds':>7} {'ranks':>5} | {'stage 1':>9} {'whole video':>12} | {'sent/step stage 1':>18} {'halo/step':>10} {'formula':>10} | {'stage 2/step':>12}"
    print(head)
    print("-" * len(head))
    base = {}
    for k, reports in out["ranks"].items():
        for i, row in enumerate(reports[0]["rows"]):
            st = row["stages"]
            whole = sum(st.values())
            base.setdefault(row["seconds"], (st["latent"], whole))
            b1, w1 = base[row["seconds"]]
            for rep in reports:
                r = rep["rows"][i]
                times = f"{st['latent']:8.2f}s {whole:11.2f}s" if rep["rank"] == 0 else f"{'':>9} {'':>12}"
                print(f"{row['seconds']:>7g} {str(k) + '/' + str(rep['rank']):>5} | {times} | {r['stage1_bytes_per_step']:>16.0f} B "
                      f"{r['halo_bytes_per_step']:>8.0f} B {r.get('halo_formula', 0):>8.0f} B | {r['stage2_bytes_per_step']:>10.0f} B")
            print(f"{'':>7} {'':>5}   speed-up vs 1 rank: stage 1 {b1 / st['latent']:.2f}x, whole video {w1 / whole:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, nargs="+", default=[10, 30, 60], help="Durations to measure (ratios: last / first).")
    p.add_argument("--latent-run", help="train-latent run (default: build tiny runs in a temp folder).")
    p.add_argument("--semantic-run", help="train-semantic run (default: build tiny runs in a temp folder).")
    p.add_argument("--preset", default="tiny", help="DiT preset of the runs built when none are given (tiny, toy).")
    p.add_argument("--steps", type=int, default=4, help="Euler steps per stage.")
    p.add_argument("--size", default=None, help="HxW (default: the training size).")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default).")
    p.add_argument("--json", dest="json_out", default=None, help="Also write the measurements to this JSON file.")
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="Measure with these numbers of ranks (torchrun), e.g. 1 2.")
    p.add_argument("--parallel", default="window", help="--parallel mode of the runs with more than one rank.")
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker_out:
        from semgen_cli.cli.options import parse_size

        a.size = parse_size(a.size)
        worker(a, Path(a.worker_out).parent)
        return
    if bool(a.latent_run) != bool(a.semantic_run):
        p.error("give both --latent-run and --semantic-run, or neither")
    from semgen_cli.cli.options import parse_size

    a.size = parse_size(a.size)
    with tempfile.TemporaryDirectory(prefix="semgen-bench-") as tmp:
        out = ranks(a, Path(tmp)) if a.ranks else run(a, Path(tmp))
    if a.ranks:
        report_ranks(out)
    else:
        report(out)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
