"""`semgen extract`: videos → safetensors shards of semantic features, VAE latents and text.

Follows MAR/RCG's `main_cache.py` idea (compute features once, train many times), with shards
instead of one file per sample, as DESIGN §4 specifies. Frame rates follow the paper (§3.1 and
the implementation details): the VAE sees frames at `--fps`, the semantic encoder (Qwen2.5-VL
vision tower) at `--semantic-fps` = 1.6 by default, each frame bounded to `--min-pixels` ..
`--max-pixels` before Qwen's patchify (default: Qwen2.5-VL's video bounds, 128·28² to 768·28²).
The encoder's fps and pixel bounds are recorded in index.json (`components.semantic`).

Work is planned up front: videos are sorted and cut into shards of `shard_size` videos, so shard k
always holds the same inputs. A shard is finished when its commit marker `.progress/shard-k.json`
exists (written after the shard's tensors and records), so a rerun after a crash keeps finished
shards and redoes the rest, ending with the same bytes as an uninterrupted run. Under torchrun,
rank r does shards k ≡ r (mod world size); after a barrier rank 0 writes failures.jsonl and then
index.json, last and atomically, after checking that every shard's records and tensors name the
same sample ids (see `sample_id`: one per source path, extension included). The shard format is
`semgen_cli.io.shards.ShardWriter`'s; this step decodes (`semgen_cli.io.decoding`), encodes and
hands it each input as a sample or a failure.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.io import shards as S
from semgen_cli.io.atomic import write_json_atomic
from semgen_cli.io.captions import caption_for, escapes, load_captions
from semgen_cli.io.decoding import Decoder
from semgen_cli.io.video import list_videos, probe
from semgen_cli.reporting import NULL, Reporter

DTYPES = ("float32", "float16", "bfloat16")
MAX_FPS = 1000.0
MAX_WORKERS = 256
"""Highest --fps / --semantic-fps and --num-workers taken: far above any camera's rate and any
machine's cores, so a larger value is a mistyped flag."""
FIELDS = {
    "latents": S.Field(("C", "T", "h", "w"), variable=1),  # VAE latents, T latent frames
    "semantic": S.Field(("T", "h", "w", "d"), variable=0),  # semantic encoder tokens, T semantic frames
    "text": S.Field(("L", "D"), variable=0),  # text embeddings, L tokens (padding not stored)
}
"""The tensors of every sample, as the index lists them."""


@dataclass
class ExtractConfig:
    """Settings of one extraction; written to `out/config.json` and into index.json."""

    videos: str
    """Folder of videos (searched recursively) with metadata.jsonl or sidecar .txt captions."""
    out: str = "data"
    """Output folder for shards and index.json."""
    semantic: str = "tiny"
    """Semantic encoder spec: qwen2.5-vl:PATH, vjepa2:PATH, videomae:PATH, tiny."""
    vae: str = "tiny"
    """VAE spec: wan:PATH, ltx:PATH, cogvideox:PATH, tiny."""
    text: str = "tiny"
    """Text encoder spec: umt5:PATH, t5:PATH, minilm, tiny."""
    size: tuple[int, int] | None = None
    """(H, W) frames are resized and centre-cropped to; None: the first video's size, rounded down to a multiple of 16."""
    fps: float = 16.0
    """Frame rate the VAE sees (Wan2.1's native rate is 16; the paper trains at 24)."""
    semantic_fps: float = 1.6
    """Frame rate the semantic encoder sees (paper: 1.6)."""
    semantic_size: tuple[int, int] | None = None
    """(H, W) of frames given to the semantic encoder before its own smart_resize; None: same as size."""
    min_pixels: int | None = None
    """Least pixels per frame after the semantic encoder's smart_resize; None: the encoder's default
    (Qwen2.5-VL's video processor: 128·28²; the toy and tiny towers: 56²)."""
    max_pixels: int | None = None
    """Most pixels per frame after smart_resize; None: the encoder's default (Qwen video: 768·28²)."""
    max_seconds: float | None = None
    """Cut each video to its first max_seconds (reported per sample); None keeps videos whole."""
    shard_size: int = 64
    """Videos per shard."""
    num_workers: int = 1
    """Decoding processes beside the encoders (0: decode in the main process)."""
    dtype: str = "float16"
    """Storage dtype of features and latents: float32, float16, bfloat16."""
    allow_uncaptioned: bool = False
    """Keep videos without a caption (empty text) instead of listing them as failures."""
    device: str = "auto"
    """Device for the encoders: auto, cpu, cuda, cuda:N."""

    def __post_init__(self) -> None:
        # `not 0 < x <= most` refuses NaN too, which compares false with everything
        if not 0 < self.fps <= MAX_FPS:
            raise ConfigError(f"--fps must be a positive number of at most {MAX_FPS:g}, got {self.fps}")
        if not 0 < self.semantic_fps <= MAX_FPS:
            raise ConfigError(f"--semantic-fps must be a positive number of at most {MAX_FPS:g}, got {self.semantic_fps}")
        if self.max_seconds is not None and not 0 < self.max_seconds < math.inf:
            raise ConfigError(f"--max-seconds must be a positive finite number, got {self.max_seconds}")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1, got {self.shard_size}")
        if not 0 <= self.num_workers <= MAX_WORKERS:
            raise ConfigError(f"--num-workers must be from 0 to {MAX_WORKERS}, got {self.num_workers}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self._check_frame_sizes()

    def _check_frame_sizes(self) -> None:
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ConfigError(f"--min-pixels {self.min_pixels} is above --max-pixels {self.max_pixels}: swap them")
        for name in ("size", "semantic_size"):
            value = getattr(self, name)
            if value is not None:
                h, w = value
                if h <= 0 or w <= 0:
                    raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {h}x{w}")
        if self.size is not None and (self.size[0] % 16 or self.size[1] % 16):
            raise ConfigError(f"--size {self.size[0]}x{self.size[1]}: height and width must be multiples of 16 (VAE stride 8 × patch 2)")

    def producer(self) -> dict:
        """The settings that decide the bytes of the shards (resume refuses to mix them)."""
        keys = ("semantic", "vae", "text", "size", "fps", "semantic_fps", "semantic_size", "min_pixels", "max_pixels",
                "max_seconds", "shard_size", "dtype", "allow_uncaptioned")
        d = asdict(self)
        return {**{k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in keys}, "ids": ID_SCHEME}


@dataclass
class ExtractResult:
    out: Path
    samples: int
    failed: int
    seconds_of_video: float
    shards_written: int
    shards_kept: int
    truncated: int
    timings: dict[str, float] = field(default_factory=dict)


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


ID_SCHEME = "path"
"""How sample ids are made (recorded in the producer settings). "path": the relative path with its
extension, `%` written `%25` and `/` written `%2F`, so two sources never share an id (`same.mp4`
and `same.mov`, `a/b.mp4` and `a__b.mp4`). Folders started before the producer recorded a scheme
used the legacy id (extension dropped, `/` as `__`); a resume of one keeps it where it is unique."""


def sample_id(rel: str, scheme: str = ID_SCHEME) -> str:
    """The id of the video at `rel` (posix, relative to the videos folder); no `/` in it, as
    tensor keys are "<id>/<field>"."""
    if scheme == "legacy":
        return rel.rsplit(".", 1)[0].replace("/", "__")
    return rel.replace("%", "%25").replace("/", "%2F")


def _id_scheme(out: Path, sources: list[str]) -> str:
    """The id scheme of this folder: `ID_SCHEME`, or "legacy" for a folder an older semgen
    started (its progress marker records no scheme), refused where legacy ids would collide."""
    marker = out / ".progress" / "config.json"
    if not marker.is_file() or "ids" in S.read_json(marker):
        return ID_SCHEME
    seen: dict[str, str] = {}
    for rel in sources:
        sid = sample_id(rel, "legacy")
        if sid in seen:
            raise MismatchError(
                f"{out}: was started by an older semgen whose sample ids drop the extension, and {seen[sid]} and {rel} "
                f"would share the id {sid!r}; extract into a new --out"
            )
        seen[sid] = rel
    return "legacy"


def extract(cfg: ExtractConfig, reporter: Reporter = NULL) -> ExtractResult:
    """Run the extraction described by `cfg`; see the module docstring for the guarantees. The
    output folder is locked for the run: a second extraction into it is refused."""
    from semgen_cli.io.lock import hold

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if not Path(cfg.videos).is_dir():
        list_videos(cfg.videos)  # its one-line error, before the lock creates --out
    with hold(out, "data folder"):
        return _extract(cfg, reporter)


def _extract(cfg: ExtractConfig, reporter: Reporter) -> ExtractResult:
    t_start = time.perf_counter()
    root, out = Path(cfg.videos), Path(cfg.out)
    videos = list_videos(root)
    if not videos:
        raise InputError(f"{root}: no video files ({', '.join(('.mp4', '.mov', '.mkv', '.webm', '.avi'))})")
    captions = load_captions(root)
    (out / ".progress").mkdir(parents=True, exist_ok=True)
    if cfg.size is None:
        cfg.size = _default_size([v for v in videos if escapes(v, root) is None], root)
    if cfg.semantic_size is None:
        cfg.semantic_size = cfg.size
    sources = [v.relative_to(root).as_posix() for v in videos]
    producer = cfg.producer()
    scheme = _id_scheme(out, sources)
    if scheme != ID_SCHEME:
        del producer["ids"]  # the folder's own settings, so that the resume check compares like with like
    _check_resume(out, producer)

    writer = S.ShardWriter(out, sources, cfg.shard_size, FIELDS, cfg.dtype)
    rank, world = _rank_world()
    mine = [k for k in range(len(writer.plan)) if k % world == rank]
    todo = [k for k in mine if not writer.done(k)]
    kept = len(mine) - len(todo)
    if kept:
        reporter.info(f"resuming: {kept} finished shard(s) kept, {len(todo)} to do")
    result = ExtractResult(out, 0, 0, 0.0, len(todo), kept, 0, {})
    encoders = _components(cfg, out, kept, result.timings) if todo or kept else {}
    with writer:
        if todo:
            t0 = time.perf_counter()
            _extract_shards(cfg, root, todo, writer, captions, encoders, reporter, scheme)
            result.timings["extract"] = time.perf_counter() - t0
        if world > 1:
            _wait_for_all_ranks()
        if rank == 0:
            components = out / ".progress" / "components.json"
            header = {"producer": producer, "videos": str(root.resolve()),
                      "components": S.read_json(components) if components.is_file() else {}}
            index = writer.finish(header, config={"step": "extract", **asdict(cfg)})
            result.samples, result.failed = index["total_samples"], index["failed"]
            result.seconds_of_video, result.truncated = index["total_seconds"], index["truncated"]
    result.timings["total"] = time.perf_counter() - t_start
    return result


def _components(cfg: ExtractConfig, out: Path, kept: int, timings: dict[str, float]) -> dict:
    """The encoders, loaded; recorded in `.progress/components.json`, which a resumed folder's
    kept shards must match (`_check_same_components`)."""
    t0 = time.perf_counter()
    encoders = _load_components(cfg)
    timings["load components"] = time.perf_counter() - t0
    components = {role: enc.describe() for role, enc in encoders.items()}
    if kept:
        _check_same_components(out, components)
    write_json_atomic(out / ".progress" / "components.json", components)
    return encoders


def _wait_for_all_ranks() -> None:
    """Under torchrun (MASTER_ADDR set), a gloo barrier so rank 0 indexes every rank's shards.
    Ranks started by hand (RANK/WORLD_SIZE only) are not waited for: rank 0 then indexes only if
    every shard is finished, and otherwise says which marker is missing."""
    import torch.distributed as dist

    if "MASTER_ADDR" not in os.environ:
        return
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo")
    dist.barrier()
    if owns:
        dist.destroy_process_group()


def _default_size(videos: list[Path], root: Path) -> tuple[int, int]:
    for v in videos:
        try:
            info = probe(v)
        except InputError:
            continue
        h, w = info.height // 16 * 16, info.width // 16 * 16
        if h and w:
            return (h, w)
    raise InputError(f"{root}: no readable video to take --size from; pass --size")


def _check_resume(out: Path, producer: dict) -> None:
    marker = out / ".progress" / "config.json"
    if marker.is_file():
        before = S.read_json(marker)
        if before != producer:
            diff = sorted(k for k in set(before) | set(producer) if before.get(k) != producer.get(k))
            raise MismatchError(
                f"{out}: already holds an extraction with different settings ({', '.join(diff)}); use another --out"
            )
    else:
        write_json_atomic(marker, producer)


def _check_same_components(out: Path, components: dict) -> None:
    """A spec such as `toy` names whatever weights lie behind it now; shards already in `out` must
    have been made by the same weights, or a resumed extraction would mix two latent spaces. The
    semantic encoder's pixel bounds count too (their default follows the spec)."""
    marker = out / ".progress" / "components.json"
    if not marker.is_file():
        return
    before = S.read_json(marker)
    changed = [role for role in sorted(components) if (before.get(role) or {}).get("fingerprint") != components[role].get("fingerprint")]
    if changed:
        what = ", ".join(f"{r} {(before.get(r) or {}).get('fingerprint')} → {components[r].get('fingerprint')}" for r in changed)
        raise MismatchError(f"{out}: its shards were extracted with other weights ({what}); use another --out")
    was, now = before.get("semantic") or {}, components.get("semantic") or {}
    bounds = [k for k in ("min_pixels", "max_pixels") if k in was and was[k] != now.get(k)]
    if bounds:
        what = ", ".join(f"{k} {was[k]} → {now.get(k)}" for k in bounds)
        raise MismatchError(f"{out}: its shards were extracted with other semantic pixel bounds ({what}); "
                            f"pass the same --min-pixels/--max-pixels or use another --out")


def _load_components(cfg: ExtractConfig) -> dict:
    import torch

    from semgen_cli.components import load_semantic_encoder, load_text_encoder, load_vae

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "vae": load_vae(cfg.vae, device=device),
        "semantic": load_semantic_encoder(cfg.semantic, device=device, fps=cfg.semantic_fps,
                                          min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels),
        "text": load_text_encoder(cfg.text, device=device),
    }


def _extract_shards(cfg, root: Path, todo: list[int], writer: S.ShardWriter, captions, encoders: dict, reporter: Reporter,
                    scheme: str) -> None:
    """Each input of the shards `todo`, decoded and encoded, becomes a sample or a failure of `writer`."""
    reporter.start("extract", total=sum(len(writer.plan[k]) for k in todo), unit="videos")
    seconds, failed = 0.0, 0
    with Decoder(cfg) as decoder:
        for k in todo:
            paths = [root / rel for rel in writer.plan[k]]
            # a file that resolves outside the videos folder (a symlink out of it) is never read
            outside = {p: escapes(p, root) for p in paths}
            decoded = decoder.map([p for p in paths if not outside[p]])
            for path in paths:
                rel = path.relative_to(root).as_posix()
                try:
                    if outside[path]:
                        raise InputError(f"{path}: resolves to {outside[path]}, outside {root}; semgen reads only files inside the videos folder")
                    sample, record = _sample(cfg, root, path, next(decoded), captions, encoders, sample_id(rel, scheme))
                except InputError as err:
                    writer.fail(rel, str(err))
                    failed += 1
                else:
                    writer.write(record, sample)
                    seconds += record["duration"]
                reporter.advance("extract", 1, video_s=round(seconds, 1), failed=failed)
    reporter.finish("extract")


def _sample(cfg, root: Path, path: Path, decoded: dict, captions, encoders: dict, sid: str):
    """(tensors, record) of the video at `path`, or an InputError saying why it cannot be used."""
    caption = caption_for(path, root, captions)
    if "error" in decoded:
        raise InputError(decoded["error"])
    if caption is None and not cfg.allow_uncaptioned:
        raise InputError(f"{path}: no caption (add it to {root / 'metadata.jsonl'} or {path.with_suffix('.txt')}, or pass --allow-uncaptioned)")
    return _encode_one(cfg, path.relative_to(root).as_posix(), decoded, caption, encoders, sid)


def _encode_one(cfg, rel: str, decoded: dict, caption: dict | None, encoders: dict, sid: str):
    import torch

    info = decoded["info"]
    frames, sem_frames = decoded["frames"], decoded["semantic_frames"]
    vae = encoders["vae"]
    used = vae.valid_frames(len(frames))
    if used < 1:
        raise InputError(f"{info.path}: too short for the VAE ({len(frames)} frames at {cfg.fps:g} fps)")
    with torch.inference_mode():
        latents = vae.encode(frames[:used]).cpu()  # (C, T, h, w)
        semantic = encoders["semantic"].encode(sem_frames).cpu()  # (Ts, hs, ws, d)
        text = caption["text"] if caption else ""
        emb, mask = encoders["text"].encode([text])
        emb = emb[0, : int(mask[0].sum())].cpu()  # (L, D): padding is not stored
    dtype = getattr(torch, cfg.dtype)
    for name, t in (("latents", latents), ("semantic", semantic), ("text", emb)):
        if not torch.isfinite(t.to(dtype)).all():  # as stored: a large float32 can overflow float16
            raise InputError(f"{info.path}: the {name} encoder gave NaN or inf values (as {cfg.dtype}); not stored")
    duration = used / cfg.fps
    record = {
        "id": sid,
        "source": rel,
        "caption": text,
        "duration": duration,
        "source_duration": info.duration,
        "source_fps": info.fps,
        "fps": cfg.fps,
        "frames": used,
        "frames_read": len(frames),
        "latent_frames": int(latents.shape[1]),
        "semantic_fps": cfg.semantic_fps,
        "semantic_frames": len(sem_frames),
        "semantic_tokens_t": int(semantic.shape[0]),
        "truncated": bool(cfg.max_seconds is not None and info.duration > cfg.max_seconds),
    }
    if caption:
        record["attributes"] = {k: v for k, v in caption.items() if k not in ("file_name", "text")}
    return {"latents": latents, "semantic": semantic, "text": emb}, record
