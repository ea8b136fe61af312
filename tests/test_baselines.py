"""Every baseline and ablation of the paper samples: Base-CT / Base-CT-Swin through `generate` and
`toy-eval`, the compressed-VAE space of Fig. 9 at the semantic token budget, Table 3's dims, and
stage 2 started from Wan's blocks (`train-semantic --init wan:PATH`)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError, MismatchError
from semgen_cli.tokens import VaeLayout
from semgen_cli.steps.generate import GenerateConfig, generate, resolve
from tests.conftest import run_inproc

PROMPT = "a red circle moving left on a black background"
TRAIN = ["--preset", "tiny", "--batch-size", "2", "--steps", "1", "--save-every", "1"]


def one_line_exit_2(r) -> str:
    """The error line of a command that failed with exit 2 (training commands print their settings first)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


@pytest.fixture(scope="module")
def base(runs, tmp_path_factory) -> dict[str, Path]:
    """Base-CT-Swin and Base-CT runs (train-latent --condition none) on the shared tiny data."""
    root = tmp_path_factory.mktemp("base-ct")
    out = {}
    for attention in ("swin", "full"):
        out[attention] = root / attention
        r = run_inproc("train-latent", runs / "data", "--condition", "none", "--attention", attention, "--window", "2", *TRAIN, "--out", out[attention])
        assert r.returncode == 0, r.stdout + r.stderr
        assert "semgen generate" in r.stdout  # the next command samples it; there is no stage 2
    return out


@pytest.fixture(scope="module")
def vae_arm(runs, tmp_path_factory) -> dict[str, Path]:
    """The compressed-VAE pipeline of Fig. 9: fit-compressor --features vae → train-latent --condition vae → train-semantic."""
    root = tmp_path_factory.mktemp("vae-arm")
    data = runs / "data"
    steps = [
        ("fit-compressor", data, "--features", "vae", "--steps", "3", "--batch-size", "2", "--out", root / "comp"),
        ("train-latent", data, "--condition", "vae", "--compressor", root / "comp", *TRAIN, "--out", root / "lat"),
        ("train-semantic", data, "--latent-run", root / "lat", *TRAIN, "--out", root / "sem"),
    ]
    for args in steps:
        r = run_inproc(*args)
        assert r.returncode == 0, r.stdout + r.stderr
    return {"comp": root / "comp", "lat": root / "lat", "sem": root / "sem"}


# ----------------------------------------------------------------------------- VAE tokens on the semantic grid


def test_vae_layout_is_an_exact_space_to_depth_when_sizes_divide():
    layout = VaeLayout(grid=(2, 3), cell=(2, 4, 2), latents_per_token=Fraction(2))
    latents = torch.randn(3, 7, 8, 6)  # (C, T, h, w): 3 whole tokens of 2 latent frames, 1 frame left over
    tokens = layout.tokens(latents, 3)
    assert tokens.shape == (3, 2, 3, 3 * 2 * 4 * 2)
    for j, i, k in ((0, 0, 0), (1, 1, 2), (2, 0, 1)):
        block = latents[:, 2 * j : 2 * j + 2, 4 * i : 4 * i + 4, 2 * k : 2 * k + 2]  # (C, r, a, b)
        torch.testing.assert_close(tokens[j, i, k], block.reshape(-1))


def test_vae_layout_resamples_fractional_spans_and_reads_the_last_frame_past_the_end():
    layout = VaeLayout(grid=(1, 1), cell=(3, 1, 1), latents_per_token=Fraction(5, 2))
    latents = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1, 1)  # latent frame k holds the value k
    tokens = layout.tokens(latents, 3)  # token 2 spans frames [5, 7.5): only frame 5 exists
    # sub-frames of 5/6 latent frame: token 0 = [0, 5/6) → 0, [5/6, 5/3) → (1/6·0 + 4/6·1)/(5/6) = 0.8, ...
    torch.testing.assert_close(tokens[0, 0, 0, :2], torch.tensor([0.0, 0.8]))
    torch.testing.assert_close(tokens[2, 0, 0], torch.full((3,), 5.0))


def test_vae_condition_has_the_semantic_token_budget(runs, vae_arm):
    from semgen_cli.io.shards import Dataset

    data = Dataset(runs / "data")
    comp = json.loads((vae_arm["comp"] / "config.json").read_text())
    layout = VaeLayout.from_dict(comp["vae_layout"])
    C = data.fields["latents"]["shape"][0]
    assert comp["compressor"]["in_dim"] == C * layout.dim
    lat, sem_lat = (json.loads((p / "config.json").read_text()) for p in (vae_arm["lat"], runs / "lat"))
    # same condition tokens as the SemanticGen run of the same data: grid, tokens per window
    assert lat["semantic_grid"][:2] == sem_lat["semantic_grid"][:2] == list(layout.grid)
    assert lat["window"] == sem_lat["window"]
    sem = json.loads((vae_arm["sem"] / "config.json").read_text())
    assert sem["semantic_grid"] == list(layout.grid) and sem["channels"] == 8


def test_vae_runs_refuse_data_with_another_layout(runs, vae_arm, tmp_path):
    import shutil

    bad = tmp_path / "lat"
    shutil.copytree(vae_arm["lat"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vae_layout"]["grid"] = [5, 5]
    (bad / "config.json").write_text(json.dumps(cfg))
    line = one_line_exit_2(run_inproc("train-semantic", runs / "data", "--latent-run", bad, *TRAIN, "--out", tmp_path / "s"))
    assert "VAE tokens laid out as" in line
    assert not (tmp_path / "s").exists()
    comp = tmp_path / "comp"
    shutil.copytree(vae_arm["comp"], comp)
    cfg = json.loads((comp / "config.json").read_text())
    cfg["vae_layout"] = None  # a compressor fitted on the former 2×2 patches
    (comp / "config.json").write_text(json.dumps(cfg))
    line = one_line_exit_2(run_inproc("train-latent", runs / "data", "--condition", "vae", "--compressor", comp, *TRAIN, "--out", tmp_path / "l"))
    assert "--features vae" in line
    assert not (tmp_path / "l").exists()


@pytest.mark.slow
def test_vae_pipeline_generates_and_replays_a_reference(runs, vae_arm, tmp_path):
    from semgen_cli.io.video import read_video

    common = dict(prompts=[PROMPT], latent_run=str(vae_arm["lat"]), seconds=2.0, semantic_steps=2, latent_steps=2)
    v = generate(GenerateConfig(out=str(tmp_path / "v.mp4"), semantic_run=str(vae_arm["sem"]), save_semantics=True, **common)).videos[0]
    assert read_video(v.path).shape[0] == 16
    plan = json.loads(v.sidecar.read_text())["semantics"]
    # the plan on the semantic grid, and a reference video read through the VAE and the compressor
    ref = sorted((runs / "videos").glob("*.mp4"))[0]
    w = generate(GenerateConfig(out=str(tmp_path / "w.mp4"), semantic_from=str(ref), **common)).videos[0]
    assert read_video(w.path).shape[0] == 16
    from safetensors.torch import load_file

    assert tuple(load_file(plan)["semantic"].shape[1:]) == (*VaeLayout.from_dict(json.loads((vae_arm["lat"] / "config.json").read_text())["vae_layout"]).grid, 8)


# ----------------------------------------------------------------------------- Base-CT and Base-CT-Swin


@pytest.mark.parametrize("attention", ["swin", "full"])
def test_base_ct_generates_from_the_text_alone(base, tmp_path, attention):
    from semgen_cli.io.video import read_metadata, read_video

    out = tmp_path / "b.mp4"
    r = run_inproc("generate", PROMPT, "--latent-run", base[attention], "--seconds", "3", "--steps", "2", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "semgen drift" in r.stdout and "Base-CT" in r.stdout
    assert read_video(out).shape[0] == 24  # 3 s at 8 fps
    side = json.loads((tmp_path / "b.json").read_text())
    assert side["plan"] == "none" and side["semantic_run"] is None and side["sigma"] is None
    assert side["latent_run"]["compressor_fingerprint"] is None
    assert set(side["seconds_per_stage"]) == {"text", "latent", "decode"}
    assert read_metadata(out)["prompt"] == PROMPT


def test_base_ct_seed_decides_the_frames(base, tmp_path):
    from semgen_cli.io.video import read_video

    def video(seed, name):
        return read_video(generate(GenerateConfig(prompts=[PROMPT], out=str(tmp_path / name), latent_run=str(base["swin"]), seconds=1.0, latent_steps=2, seed=seed)).videos[0].path)

    a, b, c = video(1, "a.mp4"), video(1, "b.mp4"), video(2, "c.mp4")
    assert (a == b).all() and not (a == c).all()


def test_full_attention_states_its_cost_at_long_lengths(base):
    long = resolve(GenerateConfig(prompts=[PROMPT], latent_run=str(base["full"]), seconds=30.0))
    [warning] = [w for w in long.warnings if "full attention" in w]
    assert f"over {long.stage1_tokens} tokens" in warning and "square of the length" in warning
    assert not any("full attention" in w for w in resolve(GenerateConfig(prompts=[PROMPT], latent_run=str(base["swin"]), seconds=30.0)).warnings)
    assert not any("full attention" in w for w in resolve(GenerateConfig(prompts=[PROMPT], latent_run=str(base["full"]), seconds=1.0)).warnings)


def test_out_of_memory_in_stage_1_is_one_line(base, tmp_path, monkeypatch):
    from semgen_cli.steps import generate as G

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 90.00 GiB")

    monkeypatch.setattr(G.Pipeline, "latents", oom)
    line = one_line_exit_2(run_inproc("generate", PROMPT, "--latent-run", base["full"], "--seconds", "2", "--steps", "1", "--out", tmp_path / "o.mp4"))
    assert "ran out of memory" in line and "--seconds" in line
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    "extra, flag",
    [(["--semantic-run", "SEM"], "--semantic-run"), (["--semantic-from", "REF"], "--semantic-from"),
     (["--save-semantics"], "--save-semantics"), (["--semantic-noise", "0.1"], "--semantic-noise")],
    ids=["semantic-run", "semantic-from", "save-semantics", "semantic-noise"],
)
def test_base_ct_refuses_plan_flags(runs, base, tmp_path, extra, flag):
    ref = sorted((runs / "videos").glob("*.mp4"))[0]
    extra = [str(runs / "sem") if a == "SEM" else str(ref) if a == "REF" else a for a in extra]
    line = one_line_exit_2(run_inproc("generate", PROMPT, "--latent-run", base["swin"], *extra, "--out", tmp_path / "x.mp4"))
    assert line.startswith(f"error: {flag}") and "--condition none" in line
    assert list(tmp_path.iterdir()) == []


def test_semantic_run_still_needs_its_stage_2(runs, tmp_path):
    with pytest.raises(ConfigError, match="without --semantic-run"):
        resolve(GenerateConfig(prompts=[PROMPT], latent_run=str(runs / "lat")))


@pytest.mark.slow
def test_toy_eval_scores_a_base_ct_run(base, tmp_path):
    r = run_inproc("toy-eval", "--latent-run", base["swin"], "--count", "2", "--seconds", "1", "--steps", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["videos"]) == 2 and set(out["summary"]["all"]) == {"background", "colour", "shape", "motion"}
    line = one_line_exit_2(run_inproc("toy-eval", "--latent-run", base["swin"], "--count", "1", "--seconds", "1", "--plans", "rendered", "--keep", tmp_path / "k"))
    assert "--plans rendered" in line and not (tmp_path / "k").exists()


# ----------------------------------------------------------------------------- Table 3: dims none and 64


@pytest.mark.slow
@pytest.mark.parametrize("dim", ["none", "64"])
def test_table_3_dims_go_from_fit_compressor_to_generate(runs, tmp_path, dim):
    from semgen_cli.io.video import read_video

    data = runs / "data"
    for args in (("fit-compressor", data, "--dim", dim, "--steps", "2", "--batch-size", "2", "--out", tmp_path / "c"),
                 ("train-latent", data, "--compressor", tmp_path / "c", *TRAIN, "--out", tmp_path / "l"),
                 ("train-semantic", data, "--latent-run", tmp_path / "l", *TRAIN, "--out", tmp_path / "s"),
                 ("generate", PROMPT, "--latent-run", tmp_path / "l", "--semantic-run", tmp_path / "s", "--seconds", "1", "--steps", "1", "--out", tmp_path / "o.mp4")):
        r = run_inproc(*args)
        assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads((data / "index.json").read_text())["fields"]["semantic"]["shape"][-1]
    assert json.loads((tmp_path / "s" / "config.json").read_text())["channels"] == (d if dim == "none" else 64)
    assert read_video(tmp_path / "o.mp4").shape[0] == 8


# ----------------------------------------------------------------------------- stage 2 from Wan


WAN_INIT = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, freq_dim=256,
                ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)


@pytest.fixture(scope="module")
def wan_stage2(runs, tmp_path_factory):
    """A tiny Wan transformer reading the shared data's text width, saved with save_pretrained."""
    diffusers = pytest.importorskip("diffusers")
    from semgen_cli.io.shards import Dataset

    text_dim = int(Dataset(runs / "data").fields["text"]["shape"][1])
    torch.manual_seed(0)
    wan = diffusers.WanTransformer3DModel(**WAN_INIT, text_dim=text_dim).eval()
    with torch.no_grad():
        for p in wan.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("wan") / "transformer"
    wan.save_pretrained(folder)
    return wan, folder


def test_semantic_dit_from_wan_keeps_the_blocks_and_refreshes_the_projections(runs, wan_stage2):
    from semgen_cli.models.wan import to_wan_state_dict
    from semgen_cli.steps.train_semantic import TrainSemanticConfig, build_semantic_dit

    wan, folder = wan_stage2
    cfg = TrainSemanticConfig(data=str(runs / "data"), latent_run=str(runs / "lat"), init=f"wan:{folder}")
    dit = build_semantic_dit(cfg, channels=8, text_dim=wan.config.text_dim)
    assert dit.config.patch == (1, 1, 1) and dit.config.in_channels == dit.config.out_channels == 8
    assert dit.config.dim == 24 and dit.config.layers == 2 and dit.config.attention == "full"
    theirs, ours = wan.state_dict(), to_wan_state_dict(dit)
    for key, value in ours.items():
        if key.startswith(("patch_embedding.", "proj_out.")):
            assert value.shape != theirs[key].shape or not torch.equal(value, theirs[key])  # fresh: 8 channels at patch 1×1×1
        else:
            torch.testing.assert_close(value, theirs[key], msg=key)
    assert ours["patch_embedding.weight"].shape == (24, 8, 1, 1, 1) and ours["proj_out.weight"].shape == (8, 24)


@pytest.mark.slow
def test_train_semantic_init_wan_trains_and_generates(runs, wan_stage2, tmp_path):
    _, folder = wan_stage2
    r = run_inproc("train-semantic", runs / "data", "--latent-run", runs / "lat", "--init", f"wan:{folder}", *TRAIN, "--out", tmp_path / "s")
    assert r.returncode == 0, r.stdout + r.stderr
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["dit"]["dim"] == 24
    assert config["text"] == {"padding": "wan", "length": 64}  # fed as Wan's pipeline feeds UMT5
    r = run_inproc("generate", PROMPT, "--latent-run", runs / "lat", "--semantic-run", tmp_path / "s", "--seconds", "1", "--steps", "1", "--out", tmp_path / "o.mp4")
    assert r.returncode == 0, r.stdout + r.stderr


def test_train_semantic_init_wan_errors(runs, wan_stage2, tmp_path):
    import diffusers

    other = tmp_path / "other"
    diffusers.WanTransformer3DModel(**WAN_INIT, text_dim=7).save_pretrained(other)
    args = ["train-semantic", runs / "data", "--latent-run", runs / "lat", *TRAIN, "--out", tmp_path / "s"]
    assert "text of width 7" in one_line_exit_2(run_inproc(*args, "--init", f"wan:{other}"))
    assert "has no config.json" in one_line_exit_2(run_inproc(*args, "--init", f"wan:{tmp_path / 'missing'}"))
    assert "--init" in one_line_exit_2(run_inproc(*args, "--init", "wan:"))
    assert not (tmp_path / "s").exists()
    with pytest.raises(MismatchError, match="not semantic features or VAE latents|text-to-video baseline"):
        from semgen_cli.runs import LatentRun
        from semgen_cli.steps.train_semantic import stage2_compressor

        cfg = json.loads((runs / "lat" / "config.json").read_text())
        bad = tmp_path / "lat"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**cfg, "compressor": None}))
        stage2_compressor(LatentRun.from_dir(bad, "--latent-run"))


def test_latent_run_without_its_compressor_is_refused(runs, tmp_path):
    import shutil

    bad = tmp_path / "lat"
    shutil.copytree(runs / "lat", bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "compressor": None}))
    line = one_line_exit_2(run_inproc("generate", PROMPT, "--latent-run", bad, "--semantic-run", runs / "sem", "--out", tmp_path / "o.mp4"))
    assert "no compressor" in line and not (tmp_path / "o.mp4").exists()


def test_vae_features_need_the_field_shapes_of_the_index(runs, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(runs / "data", data)
    index = json.loads((data / "index.json").read_text())
    (data / "index.json").write_text(json.dumps({**index, "fields": {}}))
    line = one_line_exit_2(run_inproc("fit-compressor", data, "--features", "vae", "--steps", "1", "--out", tmp_path / "c"))
    assert "field shapes" in line and not (tmp_path / "c").exists()


def test_wan_config_that_is_not_json_is_one_line(runs, tmp_path):
    folder = tmp_path / "wan"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    line = one_line_exit_2(run_inproc("train-semantic", runs / "data", "--latent-run", runs / "lat", "--init", f"wan:{folder}", *TRAIN, "--out", tmp_path / "s"))
    assert "not valid JSON" in line and not (tmp_path / "s").exists()
