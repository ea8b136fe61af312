"""Starting from Wan behaves like Wan: text fed as diffusers' WanPipeline feeds it (UMT5 tokens
zero-padded to the encoder's length, no mask), recorded in the run and followed by `generate`;
Wan's timestep shift by default; RAE's automatic shift never below 1."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import run_inproc, tiny_data
from tests.test_dit import WAN_INIT

PROMPT = "a red circle moving left on a black background"


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A tiny Wan2.1 T2V transformer (4 latent channels, text dim 16 = the tiny UMT5's) and the
    folder diffusers saved it to."""
    import diffusers

    torch.manual_seed(0)
    wan = diffusers.WanTransformer3DModel(**WAN_INIT).eval()
    with torch.no_grad():  # off the default init, so that the text path matters
        for p in wan.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("wan") / "transformer"
    wan.save_pretrained(folder)
    return wan, folder


@pytest.fixture(scope="module")
def wan_dir(wan) -> Path:
    return wan[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("wan-data"), count=4, compressor_steps=5, batch=2)


def _wan_pipeline_embeds(encoder, prompt: str, length: int) -> torch.Tensor:
    """diffusers' own WanPipeline._get_t5_prompt_embeds, run on semgen's tiny UMT5 and tokenizer."""
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    pipe = types.SimpleNamespace(tokenizer=encoder.tokenizer, text_encoder=encoder.module, _execution_device=torch.device("cpu"))
    return WanPipeline._get_t5_prompt_embeds(pipe, prompt, max_sequence_length=length, dtype=torch.float32)


def test_wan_padding_is_wan_pipelines_and_gives_wans_output(wan):
    from semgen_cli.components import load_text_encoder
    from semgen_cli.models.dit import DiT
    from semgen_cli.pipeline import run_text
    from semgen_cli.steps.train_latent import collate

    enc = load_text_encoder("tiny")
    emb, mask = enc.encode([PROMPT])
    stored = emb[0, : int(mask[0].sum())]  # (n, D): what extract keeps of a caption
    ref = _wan_pipeline_embeds(enc, PROMPT, enc.max_length)  # (1, 64, 16)
    # training (collate) and sampling (run_text) both give Wan's tensor, with no mask
    batch = collate([{"latents": torch.zeros(4, 2, 8, 8), "text": stored}], text_length=enc.max_length)
    assert "text_mask" not in batch
    torch.testing.assert_close(batch["text"], ref, rtol=0, atol=0)
    full = torch.ones(1, stored.shape[0], dtype=torch.bool)
    cond, uncond = run_text({"text": stored[None], "text_mask": full}, {"text": torch.zeros(1, stored.shape[0], 16), "text_mask": full},
                            {"padding": "wan", "length": enc.max_length})
    torch.testing.assert_close(cond["text"], ref, rtol=0, atol=0)
    assert "text_mask" not in cond and uncond["text"].shape == ref.shape and not uncond["text"].any()
    # fed so, a Wan-initialised DiT gives Wan's output for the prompt; trimmed and masked it does not
    wan, wan_dir = wan
    dit = DiT.from_wan(wan_dir).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 2, 16, 16, generator=g), torch.rand(1, generator=g)
    with torch.no_grad():
        want = wan(x, t * 1000, ref, return_dict=False)[0]
        torch.testing.assert_close(dit(x, t, batch["text"]), want, atol=1e-5, rtol=1e-5)
        masked = dit(x, t, stored[None], text_mask=full)
    assert (masked - want).abs().max() > 1e-3


@pytest.mark.slow  # end to end; fast tier: the padding test above
def test_init_wan_records_wans_text_and_shift_and_generate_follows(data, wan_dir, tmp_path, monkeypatch):
    from semgen_cli.models.dit import DiT

    out = tmp_path / "lat"
    r = run_inproc("train-latent", str(data), "--compressor", str(data.parent / "comp"), "--init", f"wan:{wan_dir}",
                   "--steps", "1", "--batch-size", "2", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text"] == {"padding": "wan", "length": 64} and cfg["shift"] == 3.0
    assert "timestep shift" in r.stdout and "3 (Wan's, 480p)" in r.stdout
    assert "zero-padded to 64 tokens, no mask" in r.stdout

    seen = []
    forward = DiT.forward

    def spy(self, x, t, text, *args, **kwargs):
        seen.append((tuple(text.shape), kwargs.get("text_mask")))
        return forward(self, x, t, text, *args, **kwargs)

    monkeypatch.setattr(DiT, "forward", spy)
    video = sorted((data.parent / "videos").glob("*.mp4"))[0]
    r = run_inproc("generate", PROMPT, "--latent-run", str(out), "--semantic-from", str(video), "--seconds", "2",
                   "--latent-steps", "1", "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert seen and all(shape[1:] == (64, 16) and mask is None for shape, mask in seen)


def test_masked_runs_and_their_resume_keep_masked_text(data, tmp_path):
    base = ["train-latent", str(data), "--condition", "none", "--preset", "tiny", "--batch-size", "2", "--out", str(tmp_path / "a")]
    r = run_inproc(*base, "--steps", "1")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["text"] == {"padding": "mask"} and "real tokens + mask" in r.stdout
    before = (tmp_path / "a" / "config.json").read_text()
    r = run_inproc(*base, "--steps", "2", "--resume", "--text-padding", "wan")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "trained with text padding mask, not wan" in r.stderr
    assert (tmp_path / "a" / "config.json").read_text() == before
    assert not (tmp_path / "a" / "checkpoints" / "step-0000002").exists()


def test_shift_rules(data):
    from semgen_cli.flow import dimension_shift
    from semgen_cli.io.shards import Dataset
    from semgen_cli.steps.train_latent import TrainLatentConfig, resolve_shift

    ds = Dataset(data)
    base = dict(data=str(data), condition="none")
    assert resolve_shift(TrainLatentConfig(**base, init="wan:/x"), ds) == (3.0, "Wan's, 480p")
    hd = types.SimpleNamespace(producer={**ds.producer, "size": [720, 1280]})
    assert resolve_shift(TrainLatentConfig(**base, init="wan:/x"), hd) == (5.0, "Wan's, 720p")
    assert resolve_shift(TrainLatentConfig(**base, init="wan:/x", shift=7.5), ds) == (7.5, "--shift")
    # RAE's rule: sqrt(N / 4096) of a window (4 ch x 9 latent frames x 8 x 8 = 2304 < 4096), floored at 1
    value, rule = resolve_shift(TrainLatentConfig(**base), ds)
    assert value == 1.0 and rule.startswith("sqrt(") and dimension_shift(2304) == 1.0
    assert dimension_shift(4 * 4096) == 2.0 and dimension_shift(810) == 1.0


@pytest.mark.parametrize("flag, message", [
    (["--shift", "0"], "--shift must be a positive number, got 0.0"),
    (["--text-padding", "zeros"], "--text-padding must be one of mask, wan, got 'zeros'"),
])
def test_bad_shift_and_text_padding_are_one_line(data, tmp_path, flag, message):
    r = run_inproc("train-latent", str(data), "--condition", "none", "--preset", "tiny", "--steps", "1", *flag,
                   "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists()
