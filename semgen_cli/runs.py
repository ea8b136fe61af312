"""The run folders that training steps write, as typed objects (DESIGN §4 "Runs").

A run folder holds `config.json` (the resolved config of the step that made it, with the data's
component fingerprints) and the trainer's checkpoints. Later steps read shapes and fingerprints
from here instead of asking again, and refuse artifacts that do not belong together.

`CompressorRun`, `LatentRun` and `SemanticRun` are the three kinds (fit-compressor, train-latent,
train-semantic). Each has a `version`; `migrate` fills the keys an older folder lacks with the
value they implied when it was written, and refuses keys it does not know (docs/formats.md lists
them all). `check_pair` is the one rule for a stage 2 that belongs to a stage 1.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from semgen_cli.errors import InputError, MismatchError
from semgen_cli.geometry import ClipGeometry
from semgen_cli.io.shards import read_json, write_json_atomic

RUN_VERSION = 1
"""Version of the config.json layout this semgen writes (folders without `version` are version 0)."""


def tensors_fingerprint(tensors: dict[str, torch.Tensor], prefix: str = "") -> str:
    """Short sha256 over sorted names, shapes and fp32 bytes of a state dict."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return f"{prefix}{h.hexdigest()[:12]}"


def read_run(path: str | Path, step: str, flag: str) -> dict:
    """`config.json` of a run made by `step` (e.g. "train-latent"); errors name the `flag`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{flag} {path}: no such run folder")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{flag} {path}: no config.json; not a run folder written by `semgen {step}`")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: not a run config (a JSON {type(cfg).__name__}, not an object); not written by `semgen {step}`")
    if cfg.get("step") != step:
        if "step" not in cfg:
            raise InputError(f"{cfg_path}: no 'step' key; not a run config written by `semgen {step}` (emptied or replaced?)")
        raise MismatchError(f"{flag} {path}: made by `semgen {cfg.get('step')}`, expected a `semgen {step}` run")
    missing = [k for k, kind in _RUN_KEYS.get(step, {}).items() if not isinstance(cfg.get(k), kind)]
    missing += [f"data.{k}" for k in ("components", "producer") if isinstance(cfg.get("data"), dict) and not isinstance(cfg["data"].get(k), dict)]
    if missing:
        raise InputError(f"{cfg_path}: missing or malformed {', '.join(missing)}; not a complete `semgen {step}` run config")
    return cfg


_RUN_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "fit-compressor": {"compressor": dict, "features": str, "data": dict},
    "train-latent": {"settings": dict, "dit": dict, "data": dict, "latent_shape": list, "shift": (int, float), "window": dict},
    "train-semantic": {"settings": dict, "dit": dict, "data": dict, "latent_run": dict, "channels": int, "semantic_grid": list,
                       "shift": (int, float), "max_seconds": (int, float)},
}
"""What a run's config.json must hold for the steps that read it (types of the top-level values)."""


def check_same_data(out: str | Path, data: str | Path, allow: bool) -> None:
    """On --resume: refuse a run folder that was trained on another data folder, unless `allow`
    (--allow-new-data); the run's config.json would otherwise silently change its data path."""
    out = Path(out)
    if not (out / "config.json").is_file():
        return
    before = read_json(out / "config.json")
    old = (before.get("data") or {}).get("path") if isinstance(before, dict) and isinstance(before.get("data"), dict) else None
    new = str(Path(data).resolve())
    if old and old != new and not allow:
        raise MismatchError(f"{out}: the run was trained on {old}, not {new}; pass --allow-new-data to continue it on this data, or choose a new --out")


def verify_run(path: str | Path):
    """Recheck every weight file of a run folder against the bytes and sha256 recorded when it was
    written (each checkpoint's state.json; a fit-compressor run's config.json for its weights).
    Yields (file, ok, note): a file recorded by an older semgen has only its header checked."""
    from semgen_cli.io.shards import check_file_record, check_safetensors_header
    from semgen_cli.training import STATE, _valid_checkpoints

    path = Path(path)
    cfg = read_json(path / "config.json")
    if isinstance(cfg, dict) and isinstance(cfg.get("files"), dict):
        for name, rec in cfg["files"].items():
            yield _check_one(path / name, rec, check_file_record, check_safetensors_header)
    for _, ckpt in _valid_checkpoints(path):
        state = read_json(ckpt / STATE, "checkpoint state")
        files = state.get("files") if isinstance(state, dict) else None
        if not isinstance(files, dict):
            for f in sorted(ckpt.glob("*.safetensors")):
                yield _check_one(f, None, check_file_record, check_safetensors_header)
            continue
        for name, rec in files.items():
            yield _check_one(ckpt / name, rec, check_file_record, check_safetensors_header)


def _check_one(file: Path, rec, check_file_record, check_header) -> tuple[Path, bool, str]:
    try:
        check_file_record(file, rec)
        if file.suffix == ".safetensors":
            check_header(file)
    except InputError as err:
        return file, False, str(err)
    return file, True, "sha256 ok" if rec else "header ok (no sha256 recorded)"


def split_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


# ----------------------------------------------------------------------------- typed runs


def differing_component(roles, want: dict, have: dict) -> tuple[str, Any, Any] | None:
    """(role, wanted fingerprint, present fingerprint) of the first of `roles` whose fingerprints
    differ between two `components` records; None when they all agree."""
    for role in roles:
        a, b = (want.get(role) or {}).get("fingerprint"), (have.get(role) or {}).get("fingerprint")
        if a != b:
            return role, a, b
    return None


@dataclass
class _Run:
    """What the three run kinds share: the step that wrote them, their settings, training config
    and data record, and the folder they were read from (not a key of config.json)."""

    STEP: ClassVar[str]
    IMPLIED: ClassVar[dict[str, Any]] = {}
    """Keys older folders lack, with the value their absence meant."""

    step: str
    settings: dict
    data: dict
    train: dict | None = None
    version: int = RUN_VERSION
    path: Path | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dir(cls, path: str | Path, flag: str):
        """The run in folder `path` (errors name `flag` and are one line)."""
        cfg = read_run(path, cls.STEP, flag)
        return cls.from_dict(cls.migrate(cfg, Path(path) / "config.json"), path)

    @classmethod
    def from_dict(cls, cfg: dict, path: str | Path | None = None):
        """A run from the keys of its config.json (already `migrate`d)."""
        keys = {f.name for f in fields(cls)} - {"path"}
        return cls(**{k: v for k, v in cfg.items() if k in keys}, path=Path(path) if path is not None else None)

    @classmethod
    def migrate(cls, cfg: dict, where: str | Path = "config.json") -> dict:
        """`cfg` as this semgen writes it: keys an older folder lacks filled with the values they
        implied (`IMPLIED`), `version` set; a newer version or an unknown key is refused."""
        version = cfg.get("version", 0)
        if not isinstance(version, int) or version > RUN_VERSION:
            raise InputError(f"{where}: run format version {version!r}, this semgen reads up to {RUN_VERSION}; upgrade semgen")
        out = dict(cfg)
        for key, value in cls.IMPLIED.items():
            out.setdefault(key, copy.deepcopy(value))
        out["version"] = RUN_VERSION
        unknown = sorted(set(out) - {f.name for f in fields(cls)} - {"path"})
        if unknown:
            raise InputError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in a `semgen {cls.STEP}` run config; "
                             "written by another semgen? use the semgen that wrote it")
        return out

    def to_dict(self) -> dict:
        """The config.json keys (without the folder)."""
        d = asdict(self)
        d.pop("path")
        return d

    @classmethod
    def write(cls, config: dict, folder: str | Path):
        """Check `config` against this run kind's keys and write it as `folder`'s config.json."""
        run = cls.from_dict(cls.migrate(config, Path(folder) / "config.json"), folder)
        run.save()
        return run

    def save(self, folder: str | Path | None = None) -> None:
        """Write config.json atomically into `folder` (default: the folder it was read from)."""
        folder = Path(folder if folder is not None else self.path)
        write_json_atomic(folder / "config.json", self.to_dict())
        self.path = folder

    @property
    def components(self) -> dict:
        """role → record of the components the run's data was extracted with."""
        return self.data["components"]

    @property
    def producer(self) -> dict:
        """The data's producer record (fps, semantic_fps, size, ...)."""
        return self.data["producer"]

    @property
    def geometry(self) -> ClipGeometry:
        return ClipGeometry.of(self.producer, self.components)

    def sampling_weights(self, flag: str | None = None) -> dict[str, torch.Tensor]:
        """The run's newest weights for sampling (EMA, else the model); a LoRA run's adapters merged
        into its base, read from the recorded path and checked (`semgen_cli.lora.merged`)."""
        from semgen_cli.training import load_sampling_weights

        state = load_sampling_weights(self.path)
        if getattr(self, "lora", None):
            from semgen_cli.lora import merged

            state = merged(self, state, f"{flag} {self.path}" if flag else str(self.path))
        return state


@dataclass
class CompressorRun(_Run):
    """A `semgen fit-compressor` run: the compressor's config, what it compresses, and (once the
    fit finished) its weights' record, fingerprint and the statistics of its space."""

    STEP: ClassVar[str] = "fit-compressor"
    IMPLIED: ClassVar[dict[str, Any]] = {"vae_layout": None}

    compressor: dict = field(default_factory=dict)
    features: str = "semantic"
    vae_layout: dict | None = None
    final_loss: float | None = None
    steps_trained: int | None = None
    files: dict | None = None
    fingerprint: str | None = None
    stats: dict | None = None

    def load(self, flag: str = "--compressor"):
        """The fitted compressor in eval mode, its weights checked against their record."""
        from semgen_cli.io.shards import check_file_record, load_tensors
        from semgen_cli.models.compressor import Compressor, CompressorConfig

        weights = self.path / "compressor.safetensors"
        if not weights.is_file():
            raise InputError(f"{flag} {self.path}: no compressor.safetensors (the fit did not finish; rerun `semgen fit-compressor ... --resume`)")
        check_file_record(weights, (self.files or {}).get("compressor.safetensors"))  # small: hashed in full
        state = load_tensors(weights)
        bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise InputError(f"{weights}: tensor {bad} holds NaN or inf; fit the compressor again")
        compressor = Compressor(CompressorConfig.from_dict(self.compressor))
        try:
            compressor.load_state_dict(state)
        except RuntimeError as err:
            raise InputError(f"{weights}: does not match its config.json ({str(err).splitlines()[0]})") from None
        return compressor.eval()


@dataclass
class LatentRun(_Run):
    """A `semgen train-latent` run (stage 1): its DiT, the compressor it ended with and where that
    came from, the training window, and how captions reach it."""

    STEP: ClassVar[str] = "train-latent"
    IMPLIED: ClassVar[dict[str, Any]] = {"vae_layout": None, "text": {"padding": "mask"}, "compressor_source": None,
                                         "compressor": None, "semantic_grid": None, "validation": None}

    dit: dict = field(default_factory=dict)
    compressor: dict | None = None
    compressor_source: dict | None = None
    vae_layout: dict | None = None
    window: dict = field(default_factory=dict)
    latent_shape: list = field(default_factory=list)
    semantic_grid: list | None = None
    shift: float = 1.0
    text: dict = field(default_factory=lambda: {"padding": "mask"})
    validation: dict | None = None
    """The held-out clips (`semgen_cli.validation`), None without --val-clips."""
    lora: dict | None = None
    """LoRA adapters over a recorded base (`semgen_cli.lora.record`); None: the whole DiT is stored."""
    merged_lora: dict | None = None
    """Of a `semgen merge` output: the LoRA run it was merged from and its adapters' record."""

    @property
    def condition(self) -> str:
        """semantic, vae (compressed-VAE ablation) or none (Base-CT)."""
        return self.settings.get("condition", "semantic")

    @property
    def semantic_noise(self) -> float:
        """The largest σ of the RAE noise on the condition tokens in training."""
        return float(self.settings.get("semantic_noise", 0.0))

    def dit_config(self, **override):
        from semgen_cli.models.dit import DiTConfig

        return DiTConfig.from_dict({**self.dit, **override})

    def init_weights(self, dit, compressor_fingerprint: str | None, compressor=None, condition: str = "semantic",
                     flag: str = "--init", state=None) -> None:
        """Start `dit` (and `compressor`) from this run's weights (EMA, else model; `state`: those
        weights already read), in place: `train-latent --init RUN`.

        The run may have been trained on another VAE's latents (that is what a fine-tune is for),
        but it must read the same conditions: the same DiT shape, and a compressor fitted by the
        same fit-compressor run, since the in-context tokens mean what that compressor makes of
        the semantic features. The compressor continues from the state the run ended with. A DiT
        whose patch is finer than the run's gets the run's weights resized (`resize_patch`)."""
        from semgen_cli.models.dit import resize_patch

        theirs_dit, ours = dict(self.dit), dit.config.to_dict()
        new_patch = tuple(ours["patch"])
        old_patch = tuple(theirs_dit.pop("patch", new_patch))
        if any(o % n for o, n in zip(old_patch, new_patch, strict=True)):
            raise MismatchError(f"{flag} {self.path}: trained with patch {','.join(map(str, old_patch))}, which --patch "
                                f"{','.join(map(str, new_patch))} does not divide; pass a patch whose sizes divide it")
        if theirs_dit != {k: v for k, v in ours.items() if k != "patch"}:
            s = self.settings
            theirs = (f"preset {s.get('preset', '?')}, {s.get('attention', '?')} attention, window {s.get('window', '?')}, "
                      f"{self.dit.get('in_channels', '?')} latent channels")
            raise MismatchError(f"{flag} {self.path}: trained with another DiT ({theirs}); pass the same --preset/--attention/--window")
        if self.condition != condition:
            raise MismatchError(f"{flag} {self.path}: conditioned on {self.condition}, not {condition}")
        source = (self.compressor_source or {}).get("fingerprint")
        if source != compressor_fingerprint:
            raise MismatchError(f"{flag} {self.path}: started from compressor {source}, not the --compressor given "
                                f"({compressor_fingerprint}); pass the same --compressor")
        state = self.sampling_weights(flag) if state is None else state
        dit_state = split_state(state, "dit")
        if old_patch != new_patch:
            dit_state = resize_patch(dit_state, old_patch, new_patch)
        dit.load_state_dict(dit_state)
        if compressor is not None:
            compressor.load_state_dict(split_state(state, "compressor"))

    def load_compressor(self, state: dict | None = None, flag: str = "--latent-run"):
        """(compressor in eval mode, its fingerprint) the run ended with (from its sampling
        weights, or from `state`, those weights already read)."""
        from semgen_cli.models.compressor import Compressor, CompressorConfig

        if self.compressor is None:
            raise MismatchError(f"{flag} {self.path}: trained without a compressor (--condition none)")
        if state is None:  # the compressor is stored whole, LoRA or not: no base to read
            from semgen_cli.training import load_sampling_weights

            state = load_sampling_weights(self.path)
        comp_state = split_state(state, "compressor")
        compressor = Compressor(CompressorConfig.from_dict(self.compressor))
        compressor.load_state_dict(comp_state)
        return compressor.eval(), tensors_fingerprint(comp_state, "compressor:")


@dataclass
class SemanticRun(_Run):
    """A `semgen train-semantic` run (stage 2): its DiT, the latent run whose compressed space it
    generates, and the longest clip it was trained on."""

    STEP: ClassVar[str] = "train-semantic"
    IMPLIED: ClassVar[dict[str, Any]] = {"text": {"padding": "mask"}, "validation": None}

    dit: dict = field(default_factory=dict)
    latent_run: dict = field(default_factory=dict)
    compressor: dict = field(default_factory=dict)
    semantic_grid: list = field(default_factory=list)
    channels: int = 0
    max_seconds: float = 0.0
    shift: float = 1.0
    text_dropout: float = 0.0
    text: dict = field(default_factory=lambda: {"padding": "mask"})
    validation: dict | None = None
    """The held-out clips (`semgen_cli.validation`), None without --val-clips."""
    lora: dict | None = None
    """LoRA adapters over a recorded base, or over the DiT's own initialisation (`semgen_cli.lora.record`)."""
    merged_lora: dict | None = None
    """Of a `semgen merge` output: the LoRA run it was merged from and its adapters' record."""

    @property
    def compressor_fingerprint(self) -> str | None:
        return self.latent_run.get("compressor_fingerprint")

    def dit_config(self):
        from semgen_cli.models.dit import DiTConfig

        return DiTConfig.from_dict(self.dit)

    def init_weights(self, dit, compressor_fingerprint: str | None, flag: str = "--init") -> None:
        """Start `dit` from this run's weights (EMA, else model), in place: `train-semantic --init RUN`."""
        if self.dit != dit.config.to_dict():
            raise MismatchError(f"{flag} {self.path}: trained with another DiT (preset {self.settings.get('preset', '?')}); pass the same --preset")
        if self.compressor_fingerprint != compressor_fingerprint:
            raise MismatchError(f"{flag} {self.path}: generates the space of another compressor; use a --latent-run with the same compressor")
        dit.load_state_dict(split_state(self.sampling_weights(flag), "dit"))


STAGE2_ROLES = ("semantic", "text")
"""The components whose outputs stage 2 reads (text embeddings, semantic features compressed by
stage 1's compressor): its data and its stage 1's must share them. The VAE may differ, since stage
2 never sees latents: a stage 1 fine-tuned on a new VAE's latents keeps its stage 2."""


def stage2_roles(condition: str | None) -> tuple[str, ...]:
    """The components stage 2 reads for a latent run conditioned on `condition`: the compressed-VAE
    arm (Fig. 9) reads VAE latents where SemanticGen reads semantic features."""
    return ("vae", "text") if condition == "vae" else STAGE2_ROLES


def check_pair(latent: LatentRun, semantic: SemanticRun, latent_flag: str = "--latent-run", semantic_named: str | None = None) -> None:
    """Refuse a stage 2 that does not belong to stage 1 `latent` (its config alone: no weights).

    Stage 2 sees only text embeddings and semantic features (or, for the compressed-VAE arm, VAE
    latents) compressed by the latent run's compressor, so its data must share those components
    with stage 1's, and it must generate tokens of the channels and grid stage 1 reads. The VAE
    may differ: a stage 1 fine-tuned on the latents of a new VAE still takes its stage 2's plans.
    `semantic_named` says what the semantic side is in messages (default: --semantic-run PATH)."""
    named = semantic_named or f"--semantic-run {semantic.path}"
    diff = differing_component(stage2_roles(latent.condition), latent.components, semantic.components)
    if diff is not None:
        role, want, have = diff
        raise MismatchError(f"{named}: its {role} encoder {have} differs from {want} of {latent_flag} {latent.path}; "
                            "use runs trained on data from the same components")
    c = int(latent.dit["semantic_dim"])
    grid = [int(v) for v in (latent.semantic_grid or [])[:2]]
    if int(semantic.channels) != c or [int(v) for v in semantic.semantic_grid] != grid:
        raise MismatchError(f"{named}: generates {semantic.channels}-channel tokens on a {semantic.semantic_grid} grid, "
                            f"{latent_flag} {latent.path} reads {c} channels on {grid}; train the semantic run on this latent run")
