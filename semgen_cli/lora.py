"""LoRA adapters on a semgen DiT, through `peft` (issue 30 §1; DESIGN §2: stage 1 fine-tunes Wan).

Paper §3.2 fine-tunes a pre-trained video DiT (Wan2.1) into the stage-1 latent generator; at 14B
full fine-tuning does not fit one node, so the DiT's attention and FFN projections can train
low-rank adapters instead (LoRA, Hu et al. 2021) while the layers semgen adds (the in-context
semantic input, a stage-2 patch embedding and head) and the compressor train fully.

- `apply_lora(dit, spec, fully_trained, external)` injects peft LoRA layers (`inject_adapter_in_model`)
  into the linear layers of the transformer blocks that `spec.targets` name, freezes everything else
  of the DiT but the `fully_trained` prefixes, and, when the base comes from a recorded source
  (`external`), marks the frozen weights `external_weights`: the trainer then leaves them out of
  checkpoints and the EMA (`semgen_cli.training`), so a run stores only what trained.
- `base_fingerprint(dit, fully_trained)`: the fingerprint of the base weights, recorded in the run.
- `merged(run, state)`: a run's sampling weights with its adapters merged into the base, which is
  read again from the recorded path and checked against the recorded fingerprint (`peft`'s
  `merge_and_unload`); `runs._Run.sampling_weights` applies it, so every reader of a run
  (generate, train-semantic, --init RUN) gets a plain DiT.
- `merge_run(run, out)`: a standalone run folder with the adapters folded in (`semgen merge`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semgen_cli.errors import ConfigError, InputError, MismatchError

DEFAULT_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                   "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.fc1", "ffn.fc2")
"""The linear layers of each transformer block that get adapters by default: attention and FFN
(every linear layer of a `semgen_cli.models.blocks.DiTBlock`)."""


def _matches(name: str, target: str) -> bool:
    """Whether layer `name` is one `target` names: its end (`q`, `ffn.fc1`) or a part of it (`self_attn`)."""
    return name == target or name.endswith("." + target) or f".{target}." in f".{name}."


@dataclass
class LoraSpec:
    rank: int
    """Rank r of the adapters (W + (α/r)·B·A, A: r × in, B: out × r)."""
    alpha: float | None = None
    """Scale α of the adapters; None: α = r (scale 1)."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """Linear layers of each block to adapt, by the end of their name within the block (q matches
    self_attn.q and cross_attn.q; self_attn matches its four projections)."""

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"--lora-rank must be a whole number >= 1, got {self.rank!r}")
        if self.alpha is not None and not (0 < self.alpha < float("inf")):
            raise ConfigError(f"--lora-alpha must be a positive number, got {self.alpha}")
        self.targets = tuple(t.strip() for t in self.targets if t.strip())
        if not self.targets:
            raise ConfigError("--lora-targets: no layer named; leave the flag out for the attention and FFN projections")
        for target in self.targets:  # checked again on the model (`target_modules`); here before anything is written
            if not any(_matches(n, target) for n in DEFAULT_TARGETS):
                raise ConfigError(f"--lora-targets {target!r} matches no linear layer of the DiT's blocks (they are: {', '.join(DEFAULT_TARGETS)})")

    @classmethod
    def from_flags(cls, rank: int | None, alpha: float | None, targets: str | None) -> "LoraSpec | None":
        """The spec of `--lora-rank/--lora-alpha/--lora-targets` (comma-separated), None without --lora-rank."""
        if rank is None:
            if alpha is not None or targets is not None:
                raise ConfigError("--lora-alpha and --lora-targets need --lora-rank R")
            return None
        return cls(rank, alpha, tuple(targets.split(",")) if targets is not None else DEFAULT_TARGETS)

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


def block_linears(dit: nn.Module) -> list[str]:
    """Full names of the nn.Linear layers inside the DiT's transformer blocks."""
    return [n for n, m in dit.named_modules() if n.startswith("blocks.") and isinstance(m, nn.Linear)]


def target_modules(dit: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The block linear layers `targets` name (a name matches its own end: `q` → every `.q`); a
    target matching none is a ConfigError listing the names that exist."""
    names = block_linears(dit)
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in names if _matches(n, target)]
        if not hits:
            within = sorted({n.split(".", 2)[2] for n in names})
            raise ConfigError(f"--lora-targets {target!r} matches no linear layer of the DiT's blocks (they are: {', '.join(within)})")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def base_fingerprint(dit: nn.Module, fully_trained: tuple[str, ...]) -> str:
    """Fingerprint of the DiT's base weights (all but the `fully_trained` prefixes), taken before
    adapters are injected, so the names are the plain semgen ones."""
    from semgen_cli.runs import tensors_fingerprint

    return tensors_fingerprint({k: v for k, v in dit.state_dict().items() if not k.startswith(fully_trained)}, "base:")


def _lora_config(spec_modules: list[str], rank: int, alpha: float):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(spec_modules), lora_dropout=0.0, bias="none")


def apply_lora(dit: nn.Module, spec: LoraSpec, fully_trained: tuple[str, ...] = (), external: bool = True) -> list[str]:
    """Inject LoRA adapters into `dit` in place (peft `inject_adapter_in_model`); only they and the
    parameters under `fully_trained` train. With `external` the frozen weights are marked as read
    from a recorded base (`external_weights`), so checkpoints and the EMA leave them out. Returns
    the adapted module names."""
    from peft import inject_adapter_in_model

    modules = target_modules(dit, spec.targets)
    inject_adapter_in_model(_lora_config(modules, spec.rank, spec.scale_alpha), dit)  # freezes all but the adapters
    for name, p in dit.named_parameters():
        if name.startswith(fully_trained):
            p.requires_grad_(True)
    trained = {n for n, p in dit.named_parameters() if p.requires_grad}
    dit.external_weights = frozenset(k for k in dit.state_dict() if k not in trained) if external else frozenset()
    return modules


def trainable_line(modules: list[nn.Module | None], spec: LoraSpec) -> str:
    """"LoRA rank 4 (alpha 4): 12,345 of 1,234,567 parameters train (1.00%)" over the trained modules
    (the DiT and the compressor)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    total = sum(p.numel() for p in params)
    train = sum(p.numel() for p in params if p.requires_grad)
    return f"LoRA rank {spec.rank} (alpha {spec.scale_alpha:g}): {train:,} of {total:,} parameters train ({100 * train / max(total, 1):.2f}%)"


def record(spec: LoraSpec, modules: list[str], fully_trained: tuple[str, ...], base: str | None, fingerprint: str | None) -> dict[str, Any]:
    """What config.json keeps of LoRA (`lora`): the adapters' shape and the base they sit on
    (`base.source` wan:PATH or a run folder, resolved; None when the base is the run's own
    initialisation, which its checkpoints then hold)."""
    if base is not None:
        base = f"wan:{Path(base[4:]).resolve()}" if base.startswith("wan:") else str(Path(base).resolve())
    return {"rank": spec.rank, "alpha": spec.scale_alpha, "targets": list(spec.targets), "modules": modules,
            "fully_trained": list(fully_trained), "base": {"source": base, "fingerprint": fingerprint} if base else None}


# ----------------------------------------------------------------------------- reading runs back

def run_of(path: str | os.PathLike, flag: str):
    """The typed run (`LatentRun` or `SemanticRun`) in folder `path`."""
    from semgen_cli.io.shards import read_json
    from semgen_cli.runs import LatentRun, SemanticRun

    cfg_path = Path(path) / "config.json"
    step = read_json(cfg_path).get("step") if cfg_path.is_file() else None
    if step not in (LatentRun.STEP, SemanticRun.STEP):
        raise InputError(f"{flag} {path}: not a train-latent or train-semantic run folder (no config.json naming one)")
    return (LatentRun if step == LatentRun.STEP else SemanticRun).from_dir(path, flag)


def load_base(dit: nn.Module, source: str, fully_trained: tuple[str, ...], named: str) -> None:
    """The base weights of `source` (wan:PATH, or a train-latent / train-semantic run folder, its
    sampling DiT with any adapters merged) into `dit` in place; the `fully_trained` prefixes keep
    their initialisation. A missing source is an InputError naming it and what to do."""
    from semgen_cli.runs import split_state

    if source.startswith("wan:"):
        from semgen_cli.models.wan import read_wan

        path = source[4:]
        if not Path(path).exists():
            raise InputError(f"{named}: its LoRA base {path} is missing; put the Wan weights the run was trained on back there, "
                             "or `semgen merge` the run where they are")
        dit.load_wan_state_dict(read_wan(path)[1], fresh=fully_trained)
        return
    if not Path(source).is_dir():
        raise InputError(f"{named}: its LoRA base {source} is missing; put the run the adapters were trained on back there, "
                         "or `semgen merge` the run where it is")
    state = split_state(run_of(source, f"{named}: its LoRA base").sampling_weights(), "dit")
    own = dit.state_dict()
    state = _resized(state, own, source)
    missing = sorted(k for k in own if k not in state and not k.startswith(fully_trained))
    if missing:
        raise MismatchError(f"{named}: its LoRA base {source} has no weight {missing[0]!r}; it is not the run the adapters were trained on")
    dit.load_state_dict({k: v for k, v in state.items() if not k.startswith(fully_trained)}, strict=False)


def _resized(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A base run's DiT weights resized to a finer patch, as `train-latent --init RUN --patch` did."""
    from semgen_cli.io.shards import read_json
    from semgen_cli.models.dit import resize_patch

    w = state.get("patch_embed.weight")
    if w is None or tuple(w.shape) == tuple(own["patch_embed.weight"].shape):
        return state
    old = tuple((read_json(Path(source) / "config.json").get("dit") or {}).get("patch") or w.shape[2:])
    return resize_patch(state, old, tuple(own["patch_embed.weight"].shape[2:]))


def merged_dit_state(dit_config: dict, rec: dict, dit_state: dict[str, torch.Tensor], named: str) -> dict[str, torch.Tensor]:
    """The plain DiT state of a LoRA run (its `dit` config and `lora` record `rec`): its base read
    again and checked against the recorded fingerprint, its adapters and fully trained layers
    loaded, then merged (peft `merge_and_unload`)."""
    from peft.tuners.lora import LoraModel

    from semgen_cli.models.dit import DiT, DiTConfig

    fully_trained = tuple(rec["fully_trained"])
    dit = DiT(DiTConfig.from_dict(dit_config))
    base = rec.get("base")
    if base is not None:
        load_base(dit, base["source"], fully_trained, named)
        have = base_fingerprint(dit, fully_trained)
        if have != base["fingerprint"]:
            where = base["source"][4:] if base["source"].startswith("wan:") else base["source"]
            raise MismatchError(f"{named}: its LoRA base {where} holds other weights ({have}) than the run was trained on "
                                f"({base['fingerprint']}); restore the original base there, or `semgen merge` the run where it is")
    lora = LoraModel(dit, _lora_config(rec["modules"], int(rec["rank"]), float(rec["alpha"])), "default")
    own = dit.state_dict()
    wanted = set(own) if base is None else {k for k, _ in dit.named_parameters() if "lora_" in k or k.startswith(fully_trained)}
    missing, unexpected = sorted(wanted - set(dit_state)), sorted(set(dit_state) - set(own))
    if missing or unexpected:
        raise MismatchError(f"{named}: its checkpoint does not fit its LoRA record ({'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]}); "
                            "it was written by another semgen or edited")
    dit.load_state_dict(dit_state, strict=False)
    return {k: v.detach().clone() for k, v in lora.merge_and_unload().state_dict().items()}


def merged(run, state: dict[str, torch.Tensor], named: str) -> dict[str, torch.Tensor]:
    """A LoRA run's sampling weights `state` with its `dit.*` entries replaced by the merged DiT
    (`merged_dit_state`): what `run.sampling_weights()` gives every reader of the run."""
    from semgen_cli.runs import split_state

    dit = merged_dit_state(run.dit, run.lora, split_state(state, "dit"), named)
    return {**{k: v for k, v in state.items() if not k.startswith("dit.")}, **{f"dit.{k}": v for k, v in dit.items()}}


def merge_run(path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """`semgen merge RUN --out NEW`: a standalone copy of LoRA run `path` whose newest checkpoint
    holds the merged DiT (model and EMA weights), readable by every step that reads a run and
    needing no base. Written into a temporary folder and renamed; refuses an existing `out`."""
    from semgen_cli.io.shards import file_record, read_json, write_json_atomic, write_text_atomic
    from semgen_cli.training import EMA_FILE, LATEST, MODEL_FILE, STATE, latest_checkpoint, load_checkpoint_weights
    from semgen_cli.training.state import _save_safetensors

    run, out = run_of(path, "merge"), Path(out)
    if not run.lora:
        raise InputError(f"merge {path}: not a LoRA run (trained without --lora-rank); it already is standalone")
    if out.exists():
        raise ConfigError(f"--out {out} already exists; choose a new folder")
    ckpt = latest_checkpoint(run.path)
    state = read_json(ckpt / STATE, "checkpoint state")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dest = tmp / "checkpoints" / ckpt.name
    dest.mkdir(parents=True)
    try:
        files = {}
        for name, which in ((MODEL_FILE, "model"), (EMA_FILE, "ema")):
            if (ckpt / name).is_file():
                weights = merged(run, load_checkpoint_weights(ckpt, which), f"merge {path}")
                _save_safetensors(weights, dest / name, {"format": "pt", "step": str(state.get("step")), "merged_lora": "1"})
                files[name] = file_record(dest / name)
        write_json_atomic(dest / STATE, {**state, "files": files, "merged_from": str(run.path.resolve())})
        write_text_atomic(dest.parent / LATEST, ckpt.name + "\n")
        type(run).write({**run.to_dict(), "lora": None, "merged_lora": {"run": str(run.path.resolve()), **run.lora}}, tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run": str(path), "out": str(out), "checkpoint": ckpt.name, "files": sorted(files)}


# ----------------------------------------------------------------------------- wiring into the trainers

def setup(dit: nn.Module, spec: LoraSpec, base: str | None, fully_trained: tuple[str, ...]) -> dict[str, Any]:
    """Adapters on `dit`, whose base weights are loaded: with `base` (wan:PATH or a run folder) its
    fingerprint is taken first and the frozen weights are left out of the run; without one (a DiT
    trained from its own initialisation) the run's checkpoints hold them. Returns the `lora` record."""
    fingerprint = base_fingerprint(dit, fully_trained) if base else None
    modules = apply_lora(dit, spec, fully_trained, external=base is not None)
    return record(spec, modules, fully_trained, base, fingerprint)


def check_resumed(out: str | os.PathLike, before: dict | None, now: dict | None) -> None:
    """On --resume: the same adapters on the same base as the run was trained with."""
    if before == now:
        return
    b, n = (before or {}).get("base") or {}, (now or {}).get("base") or {}
    if before and now and b.get("source") == n.get("source") and b.get("fingerprint") != n.get("fingerprint"):
        where = n["source"][4:] if n["source"].startswith("wan:") else n["source"]
        raise MismatchError(f"--init {where}: holds other weights ({n['fingerprint']}) than {out} was trained on "
                            f"({b['fingerprint']}); restore the original base or choose a new --out")
    said = (lambda r: f"LoRA rank {r['rank']} on {(r.get('base') or {}).get('source') or 'its own initialisation'}" if r else "without LoRA")
    raise MismatchError(f"{out}: the run was trained {said(before)}, not {said(now)}; pass the same --init and --lora-* flags or choose a new --out")
