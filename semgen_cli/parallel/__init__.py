"""`semgen generate` on several ranks (``torchrun --nproc_per_node=K semgen generate …``).

Three ways to spread the work, on torch.distributed (NCCL on GPUs, gloo on CPU):

- **prompt**: with several prompts, rank ``r`` makes prompts ``r, r + K, r + 2K, …`` and writes
  them; each video is the one a single process makes for that prompt and seed (the seed of a
  prompt never depends on the rank);
- **guidance**: a pair of ranks per video, the conditional and the unconditional pass of CFG on
  different ranks, in both stages (:mod:`semgen_cli.parallel.guidance`);
- **window**: stage 1 split by whole shifted windows (paper §3.4; :mod:`semgen_cli.parallel.window`);
  stage 2 (few tokens) runs on every rank of the group and rank 0's plan is broadcast.

They combine as ``guidance+window`` (``K = 2 × W``: rank ``g·W + w`` is window rank ``w`` of the
guidance half ``g``). ``auto`` picks prompt-parallel when there are at least as many prompts as
ranks; else every rank on stage 1's windows when it has at least one window per rank; else a
guidance pair (when stage 1 uses CFG) times as many window ranks as the rest allow. Windows come
first because they keep each rank's CFG batch (cond + uncond) whole: the guidance split halves
the batch of every matmul, and BLAS (CPU and GPU) picks other kernels for other batch sizes, so
its velocities differ from one process's by about 1e-6, which the Euler steps and the H.264
encoder can turn into a few pixels several levels apart; window-parallel keeps the batch and, on
the CPU, reproduces one process's video bit for bit in the tests.
In the per-video modes only rank 0 decodes and writes; in prompt mode each rank writes its own
videos. Library code here raises and never prints; the CLI says what each rank did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MODES = ("auto", "none", "prompt", "guidance", "window", "guidance+window")


def world() -> tuple[int, int]:
    """(rank, world size) torchrun describes (``RANK``, ``WORLD_SIZE``); (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class ParallelPlan:
    """How the ranks of one `generate` share the work: ``prompt × guidance × window`` ranks."""

    mode: str = "none"
    rank: int = 0
    world: int = 1
    guidance: int = 1
    """Ranks per CFG pass pair: 1 or 2."""
    window: int = 1
    """Ranks sharing stage 1's windows."""
    windows: int = 1
    """Plain windows stage 1 has at this length (the most window ranks it can use)."""
    groups: dict = field(default_factory=dict, repr=False)
    """Process groups once joined: "window", "pair" (this rank's), "control" (gloo, all ranks)."""

    @property
    def active(self) -> bool:
        return self.world > 1

    def takes(self, i: int) -> bool:
        """Whether this rank makes prompt ``i``."""
        if self.mode == "prompt":
            return i % self.world == self.rank
        return self.mode != "none" or self.rank == 0

    @property
    def writes(self) -> bool:
        """Whether this rank decodes and writes the videos it takes."""
        return self.mode == "prompt" or self.rank == 0

    def describe(self) -> str:
        """One line for the settings table and the summary, e.g. "2 ranks: window-parallel stage 1"."""
        n = f"{self.world} rank{'s' if self.world != 1 else ''}"
        if not self.active:
            return n
        return n + ": " + {
            "none": "rank 0 generates, the others wait (--parallel none)",
            "prompt": "prompt-parallel (the ranks take the prompts in turn; each writes its own)",
            "guidance": "guidance-parallel (conditional and unconditional CFG passes on different ranks, both stages)",
            "window": f"window-parallel stage 1 ({self.windows} windows over {self.window} ranks; stage 2 on each, rank 0's plan broadcast)",
            "guidance+window": f"2 for guidance × {self.window} for stage-1 windows ({self.windows} windows)",
        }[self.mode]


def choose(mode: str, world: int, rank: int, prompts: int, cfg: bool, windows: int) -> ParallelPlan:
    """The plan for ``--parallel mode`` on ``world`` ranks, ``prompts`` prompts, CFG in stage 1 or
    not, and stage 1 of ``windows`` plain windows (1 for full attention). ConfigError (one line
    naming --parallel) where the mode cannot use the ranks."""
    from semgen_cli.errors import ConfigError

    if mode not in MODES:
        raise ConfigError(f"--parallel must be one of {', '.join(MODES)}, got {mode!r}")
    base = dict(rank=rank, world=world, windows=windows)
    if world == 1:
        return ParallelPlan("none", **base)
    if mode == "auto":
        return _auto(prompts, cfg, base)
    if mode == "none":
        return ParallelPlan("none", **base)
    if mode == "prompt":
        if prompts < 2:
            raise ConfigError("--parallel prompt needs several prompts (--prompts-file); for one video use --parallel guidance or window")
        return ParallelPlan("prompt", **base)
    return _per_video(mode, world, cfg, windows, base)


def _auto(prompts: int, cfg: bool, base: dict) -> ParallelPlan:
    world, windows = base["world"], base["windows"]
    if prompts >= world:
        return ParallelPlan("prompt", **base)
    for g in ((1, 2) if cfg else (1,)):  # windows first: the CFG batch stays whole (see below)
        w = world // g
        if g * w == world and w <= windows:
            return ParallelPlan("guidance" if w == 1 else "window" if g == 1 else "guidance+window", guidance=g, window=w, **base)
    return ParallelPlan("prompt" if prompts > 1 else "none", **base)


def _per_video(mode: str, world: int, cfg: bool, windows: int, base: dict) -> ParallelPlan:
    from semgen_cli.errors import ConfigError

    g = 2 if "guidance" in mode else 1
    if g == 2 and not cfg:
        raise ConfigError(f"--parallel {mode}: CFG is off in stage 1 (--latent-cfg 1), so there is no second pass to run; use --parallel window")
    w = world // g
    if mode == "guidance" and world != 2:
        raise ConfigError(f"--parallel guidance takes 2 ranks, torchrun started {world}; use --parallel guidance+window for more")
    if "window" in mode:
        if g * w != world:
            raise ConfigError(f"--parallel {mode}: {world} ranks do not split into 2 guidance × window ranks; start an even number")
        if w > windows:
            raise ConfigError(f"--parallel {mode}: stage 1 has {windows} shifted-attention window{'s' if windows != 1 else ''} at this length, "
                              f"too few for {w} window ranks; start at most {windows * g} ranks or ask for more --seconds")
    return ParallelPlan(mode, guidance=g, window=w, **base)


_JOINED: dict = {}
"""The plan this process joined, by what it was chosen from (`plan_for` is called by the CLI and
again by `generate`: the groups are made once)."""


def plan_for(cfg, r) -> ParallelPlan:
    """The joined plan of a `generate` (a GenerateConfig ``cfg`` with ``parallel``, its Resolved ``r``)."""
    from semgen_cli.parallel.window import plain_windows

    rank, size = world()
    dit = r.lat.dit
    frames = r.latent_frames // int(dit["patch"][0])
    swin = (cfg.attention or dit["attention"]) == "swin"
    windows = plain_windows(frames, int(dit["window"])) if swin and size > 1 else 1  # arithmetic: no tensor of the length
    key = (getattr(cfg, "parallel", "auto"), size, len(cfg.prompts), cfg.latent_cfg != 1, windows)
    if key not in _JOINED:
        _JOINED.clear()
        _JOINED[key] = join(choose(key[0], size, rank, key[2], key[3], windows))
    return _JOINED[key]


def load(plan: ParallelPlan, make):
    """``make()`` (the pipeline) on every rank, then the failure agreement: if any rank failed to
    load, every rank raises that rank's one-line error. Returns the pipeline, spread by `attach`
    (its wrappers in ``pipeline.parallel_parts``)."""
    pipe, error = None, None
    try:
        pipe = make()
    except Exception as err:  # noqa: BLE001  (reported to every rank, then raised)
        if not plan.active:
            raise
        error = err
    agree(plan, error)
    _JOINED["agreed"] = True
    pipe.parallel_parts = _JOINED["parts"] = attach(plan, pipe)
    return pipe


def last_parts() -> dict:
    """The wrappers of the pipeline `load` spread last (for the benchmark's byte counts)."""
    return _JOINED.get("parts", {})


def past_agreement() -> bool:
    """Whether this process passed `load`'s agreement: a later error may be this rank's alone."""
    return bool(_JOINED.get("agreed"))


def init() -> None:
    """Join torchrun's default process group once (NCCL on CUDA, gloo on the CPU); no-op in one process."""
    import atexit
    import datetime

    import torch
    import torch.distributed as dist

    if world()[1] > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # a rank may wait at a collective while rank 0 decodes and writes a long video
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
        # left to interpreter teardown, gloo's connections can abort a rank whose peer exited first
        atexit.register(_close)


def _close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def from_rank0(obj):
    """Rank 0's ``obj`` (picklable) on every rank, e.g. the name of a folder rank 0 made."""
    if world()[1] == 1:
        return obj
    import torch.distributed as dist

    init()
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if world()[1] > 1:
        import torch.distributed as dist

        init()
        dist.barrier()


def join(plan: ParallelPlan) -> ParallelPlan:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU) and make the plan's groups.
    Every rank calls this with the same plan (the same flags), so the groups come out the same."""
    if not plan.active:
        return plan
    import torch.distributed as dist

    init()
    if not plan.groups:
        plan.groups["control"] = dist.new_group(backend="gloo")
        g, w = plan.guidance, plan.window
        for gi in range(g):  # every rank makes every group, in the same order
            ranks = [gi * w + wi for wi in range(w)]
            group = dist.new_group(ranks) if w > 1 else None
            if plan.rank in ranks and plan.mode in ("window", "guidance+window"):
                plan.groups["window"] = group
        for wi in range(w):
            ranks = [gi * w + wi for gi in range(g)]
            group = dist.new_group(ranks) if g > 1 else None
            if plan.rank in ranks and g > 1:
                plan.groups["pair"] = group
    return plan


def attach(plan: ParallelPlan, pipe) -> dict:
    """Spread a loaded pipeline's DiTs as the plan says; returns the wrappers that count bytes
    ({"window": WindowShard, "latent pair": GuidanceSplit, "semantic pair": ...})."""
    parts: dict = {}
    if "window" in plan.groups:
        from semgen_cli.parallel.window import WindowShard

        pipe.latent_dit.shard = parts["window"] = WindowShard(plan.groups["window"])
    if "pair" in plan.groups:
        from semgen_cli.parallel.guidance import GuidanceSplit

        pipe.latent_dit = parts["latent pair"] = GuidanceSplit(pipe.latent_dit, plan.groups["pair"])
        if pipe.semantic_dit is not None:
            pipe.semantic_dit = parts["semantic pair"] = GuidanceSplit(pipe.semantic_dit, plan.groups["pair"])
    return parts


def same_plan(plan: ParallelPlan, tensor):
    """Rank 0's semantic plan on every window rank (each made it alike; the broadcast makes sure)."""
    if "window" not in plan.groups or tensor is None:
        return tensor
    import torch.distributed as dist

    group = plan.groups["window"]
    dist.broadcast(tensor, dist.get_process_group_ranks(group)[0], group=group)
    return tensor


def agree(plan: ParallelPlan, error: BaseException | None) -> None:
    """Every rank reports whether it failed (one all-gather on the gloo control group); if any
    did, every rank raises the same one-line error, the first failing rank's (its SemgenError
    class kept, others as ConfigError), so every rank ends with that line."""
    if not plan.active:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    from semgen_cli import errors

    mine = None
    if error is not None:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        mine = (type(error).__name__ if isinstance(error, errors.SemgenError) else "", text)
    reports: list = [None] * plan.world
    dist.all_gather_object(reports, mine, group=plan.groups["control"])
    failed = [(r, m) for r, m in enumerate(reports) if m is not None]
    if not failed:
        return
    r, (kind, text) = failed[0]
    cls = getattr(errors, kind, None) if kind else None
    cls = cls if isinstance(cls, type) and issubclass(cls, errors.SemgenError) else errors.ConfigError
    if not kind:
        text = f"rank {r} of {plan.world} failed: {text}"
    err = cls(text)
    err.shared = True  # every rank raises it: the CLI prints it on rank 0 only
    raise err from None


def gather_objects(plan: ParallelPlan, items: list) -> list:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
    if not plan.active:
        return items
    import torch.distributed as dist

    out: list = [None] * plan.world
    dist.all_gather_object(out, items, group=plan.groups["control"])
    return [x for part in out for x in part]


def bytes_sent(parts: dict) -> int:
    """Bytes this rank has sent so far through the wrappers `attach` made."""
    return sum(p.bytes_sent for p in parts.values())


__all__ = ["MODES", "ParallelPlan", "agree", "attach", "barrier", "bytes_sent", "choose", "from_rank0", "gather_objects", "init", "join", "last_parts", "load", "past_agreement", "plan_for", "same_plan", "world"]
