"""Semantic encoder specs: the plain-torch Qwen patchify against transformers' processor, the
(T, h, w, d) grid order, and tiny real-class checkpoints loaded through `load_semantic_encoder`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semgen_cli.components import load_semantic_encoder, qwen_patchify, smart_resize
from semgen_cli.components.semantic_encoder import (
    QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS, QWEN_VIDEO_MIN_PIXELS, TINY_QWEN_VISION,
    default_pixel_bounds,
)
from semgen_cli.errors import ConfigError, InputError

# Float32 rounding of the normalisation only: the resize itself is Pillow's, level for level.
EXACT = dict(rtol=0, atol=1e-5)


def _video(f, h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (f, h, w, 3), dtype=np.uint8)


def _processor(**kw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**kw)


@pytest.fixture(scope="module")
def tiny():
    return load_semantic_encoder("tiny")


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=128,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    torch.manual_seed(1)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(vision_config=TINY_QWEN_VISION, text_config=text))
    folder = tmp_path_factory.mktemp("qwen") / "full"
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("hw", [(56, 84), (60, 90), (100, 70), (33, 47), (300, 200)])
def test_patchify_equals_qwen_image_processor(hw):
    img = _video(1, *hw, seed=hw[0])[0]
    ref = _processor()(images=[img], return_tensors="pt")
    pixel_values, grid = qwen_patchify(img[None])
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    torch.testing.assert_close(pixel_values, ref["pixel_values"].float(), **EXACT)


# Wan's 480p and 720p frames, under the image processor's bounds and under Qwen2.5-VL's video
# bounds: 480x832 -> 476x840 shrinks the height and grows the width (Pillow resizes the rows
# first), 720x1280 -> 560x1008 shrinks both (columns first), 720x1280 -> 728x1288 grows both.
@pytest.mark.parametrize("hw", [(480, 832), (720, 1280)])
@pytest.mark.parametrize("bounds", [(QWEN_MIN_PIXELS, QWEN_MAX_PIXELS), (QWEN_VIDEO_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS)],
                         ids=["image-bounds", "video-bounds"])
def test_patchify_equals_qwen_processor_at_wan_sizes(hw, bounds):
    img = _video(1, *hw, seed=7)[0]
    lo, hi = bounds
    ref = _processor(min_pixels=lo, max_pixels=hi)(images=[img], return_tensors="pt")
    pixel_values, grid = qwen_patchify(img[None], min_pixels=lo, max_pixels=hi)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    torch.testing.assert_close(pixel_values, ref["pixel_values"].float(), **EXACT)


def test_pillow_pass_order_rule():
    # Pillow itself, level for level, on sizes either side of the pass-order boundary (the other
    # order puts about 30 % of values off there), growing, shrinking and mixed.
    from PIL import Image

    from semgen_cli.components.semantic_encoder import _vertical_first, resize_uint8

    img = _video(1, 60, 60, seed=3)[0]
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    for h, w in [(30, 44), (30, 46), (42, 51), (42, 52), (54, 66), (66, 90), (30, 30), (7, 200)]:
        ref = np.array(Image.fromarray(img).resize((w, h), Image.BICUBIC))
        assert torch.equal(resize_uint8(x, (h, w)), torch.from_numpy(ref).permute(2, 0, 1)[None].float()), (h, w)
    assert not _vertical_first(60, 60, 30, 44) and _vertical_first(60, 60, 30, 46)
    assert _vertical_first(480, 832, 476, 840) and not _vertical_first(720, 1280, 560, 1008)


def test_default_bounds_are_qwen_video_processor_defaults():
    # transformers' Qwen2VLVideoProcessor (which Qwen2.5-VL uses for videos) needs torchvision to
    # import, so its class attribute `size` is read from the installed source.
    import ast
    import importlib.util

    src = importlib.util.find_spec("transformers.models.qwen2_vl.video_processing_qwen2_vl").origin
    tree = ast.parse(open(src).read())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    size = next(n.value for n in cls.body if isinstance(n, ast.Assign) and n.targets[0].id == "size")
    size = eval(compile(ast.Expression(size), src, "eval"))
    assert (QWEN_VIDEO_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS) == (size["shortest_edge"], size["longest_edge"])
    assert default_pixel_bounds("qwen2.5-vl:/any") == (QWEN_VIDEO_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS)
    assert default_pixel_bounds("toy") == default_pixel_bounds("tiny") == (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)


def test_patchify_exact_without_resize_and_with_pixel_limits():
    img = _video(1, 112, 168, seed=5)[0]
    ref = _processor()(images=[img], return_tensors="pt")["pixel_values"].float()
    torch.testing.assert_close(qwen_patchify(img[None])[0], ref, rtol=0, atol=1e-5)
    small = _processor(min_pixels=28 * 28, max_pixels=56 * 56)(images=[img], return_tensors="pt")
    pv, grid = qwen_patchify(img[None], min_pixels=28 * 28, max_pixels=56 * 56)
    assert grid.tolist() == small["image_grid_thw"].tolist()
    torch.testing.assert_close(pv, small["pixel_values"].float(), **EXACT)


def test_patchify_temporal_order():
    # Two different frames: slot 0 of each patch's temporal axis is frame 0, slot 1 is frame 1,
    # and each equals the processor's patches of that frame alone.
    frames = _video(2, 56, 84, seed=9)
    pv, grid = qwen_patchify(frames)
    assert grid.tolist() == [[1, 4, 6]]
    pv = pv.reshape(-1, 3, 2, 14, 14)
    for i in range(2):
        ref = _processor()(images=[frames[i]], return_tensors="pt")["pixel_values"].float()
        torch.testing.assert_close(pv[:, :, i], ref.reshape(-1, 3, 2, 14, 14)[:, :, i], rtol=0, atol=1e-5)


def test_odd_frame_count_repeats_last_frame():
    frames = _video(3, 56, 56)
    padded = np.concatenate([frames, frames[-1:]])
    torch.testing.assert_close(qwen_patchify(frames)[0], qwen_patchify(padded)[0])


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    for h, w in [(64, 64), (480, 854), (1080, 1920), (10, 300), (3000, 20)]:
        assert smart_resize(h, w) == ref(h, w, 28, 56 * 56, 28 * 28 * 1280)


def test_tiny_encoder_shapes_and_frozen(tiny):
    assert tiny.fingerprint.startswith("tiny-qwen2.5-vl-vision:seed0:")
    assert tiny.fingerprint == load_semantic_encoder("tiny").fingerprint
    assert (tiny.dim, tiny.fps, tiny.patch, tiny.temporal_patch, tiny.merge) == (32, 1.6, 14, 2, 2)
    assert not tiny.module.training and not any(p.requires_grad for p in tiny.module.parameters())
    assert tiny.grid_for(56, 84) == (2, 3) and tiny.grid_for(480, 854) == (17, 30)
    feats = tiny.encode(_video(5, 56, 84))
    assert feats.shape == (3, 2, 3, 32) and feats.dtype == torch.float32
    json.dumps(tiny.describe())


def test_chunked_time_equals_one_pass():
    frames = _video(6, 56, 56, seed=2)
    one = load_semantic_encoder("tiny", chunk_temporal_patches=8).encode(frames)
    chunked = load_semantic_encoder("tiny", chunk_temporal_patches=1).encode(frames)
    torch.testing.assert_close(chunked, one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", [(0, 0), (1, 2), (2, 1)])
def test_output_grid_is_spatial(tiny, cell):
    # Changing the pixels of one 28x28 cell changes that cell's feature the most, so the
    # (T, h, w, d) grid is laid out in image order despite the tower's window order.
    frames = np.full((2, 84, 84, 3), 128, dtype=np.uint8)
    base = tiny.encode(frames)
    r, c = cell
    frames[:, 28 * r:28 * r + 28, 28 * c:28 * c + 28] = 255
    change = (tiny.encode(frames) - base).norm(dim=-1)[0]  # (h, w)
    assert divmod(int(change.argmax()), 3) == cell


def test_full_checkpoint_loads_only_vision_tower(full_ckpt, tmp_path, tiny):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    folder, model = full_ckpt
    enc = load_semantic_encoder(f"qwen2.5-vl:{folder}")
    assert type(enc.module) is Qwen2_5_VisionTransformerPretrainedModel
    assert enc.fingerprint.startswith("qwen2.5-vl:") and enc.dim == 32
    want = model.model.visual.state_dict()
    got = enc.module.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    # The same tower saved on its own loads to the same fingerprint and features.
    model.model.visual.save_pretrained(tmp_path / "vision")
    alone = load_semantic_encoder(f"qwen2.5-vl:{tmp_path / 'vision'}")
    assert alone.fingerprint == enc.fingerprint != tiny.fingerprint
    frames = _video(4, 56, 56)
    torch.testing.assert_close(alone.encode(frames), enc.encode(frames))


def test_vjepa2_and_videomae_specs(tmp_path):
    from transformers import VideoMAEConfig, VideoMAEModel, VJEPA2Config, VJEPA2Model

    torch.manual_seed(0)
    VJEPA2Model(VJEPA2Config(
        patch_size=8, crop_size=32, frames_per_clip=4, tubelet_size=2, hidden_size=16, num_attention_heads=2,
        num_hidden_layers=1, pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1,
        num_pooler_layers=1)).save_pretrained(tmp_path / "vjepa2")
    VideoMAEModel(VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "videomae")
    for kind in ("vjepa2", "videomae"):
        enc = load_semantic_encoder(f"{kind}:{tmp_path / kind}")
        assert enc.fingerprint.startswith(f"{kind}:")
        assert enc.grid_for(40, 50) == (4, 4)
        assert enc.encode(_video(5, 40, 50)).shape == (3, 4, 4, 16)
    with pytest.raises(InputError, match="not 'videomae'"):
        load_semantic_encoder(f"videomae:{tmp_path / 'vjepa2'}")


def test_semantic_spec_errors(tmp_path, full_ckpt):
    with pytest.raises(ConfigError, match="unknown semantic encoder spec"):
        load_semantic_encoder("clip:/x")
    with pytest.raises(InputError, match="does not exist"):
        load_semantic_encoder(f"qwen2.5-vl:{tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="--min-pixels and --max-pixels need 0 < min <= max"):
        load_semantic_encoder("tiny", min_pixels=100, max_pixels=10)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="not a Qwen2.5-VL checkpoint"):
        load_semantic_encoder(f"qwen2.5-vl:{wrong}")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((full_ckpt[0] / "config.json").read_text())
    with pytest.raises(InputError, match="no vision weights"):
        load_semantic_encoder(f"qwen2.5-vl:{no_weights}")
    with pytest.raises(InputError, match="uint8"):
        load_semantic_encoder("tiny").encode(np.zeros((2, 56, 56), dtype=np.uint8))
