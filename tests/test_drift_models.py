"""Model metrics of `semgen drift` through tiny random transformers models saved to tmp_path and
loaded with from_pretrained, exactly as users' local folders are: VBench's consistency formula,
its preprocessing sizes, the aesthetic head, fingerprints, and the errors naming each flag."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from semgen_cli.errors import ConfigError
from semgen_cli.metrics import models as M
from semgen_cli.steps.drift import measure_drift
from tests.test_drift import A, B, run_main, solid, write_lossless

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny DINO-like ViT, tiny full CLIPModel (as openai/clip-* folders are), and LAION-style heads."""
    from safetensors.numpy import save_file
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=16),
        add_pooling_layer=False,
    )
    vit.save_pretrained(root / "dino")
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                             max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
            projection_dim=12,
        )
    )
    clip.save_pretrained(root / "clip")
    rng = np.random.default_rng(0)
    save_file({"weight": rng.normal(size=(1, 12)).astype(np.float32), "bias": np.array([5.0], np.float32)}, str(root / "linear.safetensors"))
    mlp = {}
    for i, (o, n) in zip((0, 2, 4, 6, 7), ((20, 12), (10, 20), (6, 10), (4, 6), (1, 4)), strict=True):
        mlp[f"layers.{i}.weight"] = rng.normal(size=(o, n)).astype(np.float32) * 0.3
        mlp[f"layers.{i}.bias"] = rng.normal(size=(o,)).astype(np.float32)
    save_file(mlp, str(root / "mlp.safetensors"))
    save_file({"weight": rng.normal(size=(1, 7)).astype(np.float32)}, str(root / "wrong_dim.safetensors"))
    return root, clip


def test_consistency_formula_clips_each_term():
    f = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    # s_1 = (cos45 + cos45)/2; s_2 = (max(0, −cos45) + max(0, −1))/2 = 0
    assert M.consistency(f) == pytest.approx(np.sqrt(0.5) / 2)


def test_vbench_resize_sizes():
    assert M.resize_shorter(480, 832, 224) == (224, 388)  # torchvision truncates the long side
    assert M.resize_shorter(832, 480, 224) == (388, 224)


def test_static_video_is_fully_consistent(folders, tmp_path):
    root, _ = folders
    path = write_lossless(tmp_path / "static.mp4", solid([(120, 90, 60)] * 20))
    r = measure_drift([path], ["subject_consistency", "background_consistency"], dino=str(root / "dino"), clip_b32=str(root / "clip"))
    for name in ("subject_consistency", "background_consistency"):
        m = r.videos[0].metrics[name]
        assert m.first == pytest.approx(1.0) and m.last == pytest.approx(1.0) and m.delta == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("metric, flag, loader", [("subject_consistency", "dino", "dino"), ("background_consistency", "clip_b32", "clip")])
def test_colour_switch_consistency_by_hand(folders, tmp_path, metric, flag, loader):
    root, _ = folders
    path = write_lossless(tmp_path / "switch.mp4", solid([A] * 36 + [B] * 4))
    r = measure_drift([path], [metric], **{flag: str(root / loader)}).videos[0]
    enc = M.load_dino(root / "dino") if loader == "dino" else M.load_clip(root / "clip", "--clip-b32")
    fa, fb = enc(solid([A, B]))
    c = max(0.0, float(fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)))
    # last segment A A B B B B: s = 1, (c + c)/2, (1 + c)/2 three times, over 5 frames
    expected = (1 + c + 3 * (1 + c) / 2) / 5
    assert c < 0.9999
    assert r.metrics[metric].first == pytest.approx(1.0)
    assert r.metrics[metric].last == pytest.approx(expected, rel=1e-5)
    assert r.metrics[metric].delta == pytest.approx(1 - expected, rel=1e-4)


def test_model_input_sizes_follow_vbench(folders, tmp_path):
    root, _ = folders
    path = write_lossless(tmp_path / "wide.mp4", np.random.default_rng(0).integers(0, 256, (20, 32, 64, 3), dtype=np.uint8))
    r = measure_drift([path], ["subject_consistency", "background_consistency"], dino=str(root / "dino"), clip_b32=str(root / "clip"))
    v = r.videos[0]
    assert v.model_input == {"subject_consistency": (32, 64), "background_consistency": (32, 32)}  # DINO: no crop
    assert "no crop" in r.metrics["subject_consistency"]["image_size"]
    assert "centre crop 32×32" in r.metrics["background_consistency"]["image_size"]


def test_aesthetic_matches_clipmodel_and_linear_head(folders, tmp_path):
    import torch.nn.functional as F
    from safetensors.numpy import load_file

    root, clip = folders
    frame = np.random.default_rng(3).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    path = write_lossless(tmp_path / "still.mp4", np.stack([frame] * 20))
    r = measure_drift([path], ["aesthetic_quality"], clip_l14=str(root / "clip"), aesthetic_head=str(root / "linear.safetensors"))
    m = r.videos[0].metrics["aesthetic_quality"]
    # independent path: CLIPModel.get_image_features on VBench's clip_transform, L2 norm, head, /10
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(32, 64), mode="bicubic", align_corners=False)[..., :, 16:48] / 255
    mean, std = torch.tensor(M.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(M.CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = clip.get_image_features(pixel_values=(x - mean) / std)
    feats = getattr(feats, "pooler_output", feats).double()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    head = load_file(str(root / "linear.safetensors"))
    expected = float(feats.numpy()[0] @ head["weight"][0].astype(np.float64) + head["bias"][0]) / 10
    assert not r.errors
    assert m.first == pytest.approx(expected, rel=1e-5) and m.last == pytest.approx(expected, rel=1e-5)
    # the same frame in both segments: float32 CLIP features agree to float32 precision (2.4e-9 seen in CI), not bit for bit
    assert m.delta == pytest.approx(0.0, abs=1e-6)


def test_mlp_head_chains_linear_layers(folders):
    from safetensors.numpy import load_file

    root, _ = folders
    head = M.AestheticHead(root / "mlp.safetensors")
    w = load_file(str(root / "mlp.safetensors"))
    x = np.random.default_rng(0).normal(size=(3, 12))
    y = x
    for i in (0, 2, 4, 6, 7):  # improved-aesthetic-predictor: no activations between the Linears
        y = y @ w[f"layers.{i}.weight"].T + w[f"layers.{i}.bias"]
    assert np.allclose(head(x), y[:, 0], rtol=1e-5)
    assert head.label == "MLP of 5 linear layers 12→20→10→6→4→1"


def test_fingerprints_and_models_in_json(folders, tmp_path, capsys):
    root, _ = folders
    path = write_lossless(tmp_path / "v.mp4", solid([A] * 10 + [B] * 10))
    code, out, err = run_main(
        "drift", str(path), "--json", "--dino", str(root / "dino"), "--clip-b32", str(root / "clip"),
        "--clip-l14", str(root / "clip"), "--aesthetic-head", str(root / "linear.safetensors"), capsys=capsys,
    )
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc["metrics"])[-3:] == ["subject_consistency", "background_consistency", "aesthetic_quality"]
    sha = hashlib.sha256((root / "dino" / "model.safetensors").read_bytes()).hexdigest()[:12]
    assert doc["metrics"]["subject_consistency"]["fingerprint"] == sha
    assert "ViTModel" in doc["metrics"]["subject_consistency"]["model"]
    head_sha = hashlib.sha256((root / "linear.safetensors").read_bytes()).hexdigest()[:12]
    assert doc["metrics"]["aesthetic_quality"]["fingerprint"].endswith("+" + head_sha)
    assert set(doc["videos"][0]["metrics"]) >= {"subject_consistency", "background_consistency", "aesthetic_quality"}


def test_model_flag_errors(folders, tmp_path):
    root, _ = folders
    path = write_lossless(tmp_path / "v.mp4", solid([A] * 20))
    (tmp_path / "empty_folder").mkdir()
    cases = [
        (dict(metrics=["subject_consistency"], dino=str(root / "clip")), "--dino .*model_type 'vit'"),
        (dict(metrics=["subject_consistency"], dino=str(tmp_path / "empty_folder")), "--dino .*no config.json"),
        (dict(metrics=["background_consistency"], clip_b32=str(root / "dino")), "--clip-b32 .*CLIP"),
        (dict(metrics=["aesthetic_quality"], clip_l14=str(root / "clip"), aesthetic_head=str(tmp_path / "nope.safetensors")), "--aesthetic-head .*no such file"),
        (dict(metrics=["aesthetic_quality"], clip_l14=str(root / "clip"), aesthetic_head=str(root / "wrong_dim.safetensors")), "--aesthetic-head .*7-d"),
        (dict(metrics=["aesthetic_quality"], clip_l14=str(root / "clip"), aesthetic_head=str(root / "clip" / "config.json")), "--aesthetic-head .*safetensors"),
    ]
    for kwargs, pattern in cases:
        metrics = kwargs.pop("metrics")
        with pytest.raises(ConfigError, match=pattern):
            measure_drift([path], metrics, **kwargs)
