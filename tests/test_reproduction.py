"""examples/paper/: the report generator on synthetic and partial results, reproduce.sh's argument
errors, the self-supervised toy tower saved and loaded through the user's loader, and (slow) the
whole `reproduce.sh --quick` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_example

ROOT = Path(__file__).resolve().parents[1]
PAPER, TOY = ROOT / "examples" / "paper", ROOT / "examples" / "toy"
ATTRS = ("background", "colour", "shape", "motion")


@pytest.fixture(scope="module")
def report():
    return load_example("paper/report.py")


@pytest.fixture(scope="module")
def ssl():
    return load_example("toy/train_ssl_encoder.py")


# -- synthetic results -----------------------------------------------------------------------------
def _toy_eval(level: float, first: float | None = None, last: float | None = None) -> dict:
    """A `semgen toy-eval --json` document whose every attribute scores `level` (0–1)."""
    summary = {g: {a: {"frames": level, "videos": level, "drift": 0.0} for a in ATTRS} for g in ("all", "seen", "held-out")}
    row = {"prompt": "a red circle moving left on a black background", "held_out": False,
           "first": {a: first if first is not None else level for a in ATTRS},
           "last": {a: last if last is not None else level for a in ATTRS}}
    return {"pipeline": "x", "seconds": 4, "plans": "stage2", "summary": summary, "videos": [row, row]}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _fake_out(out: Path, *, partial: bool = False) -> Path:
    ks = [1, 2, 3, 4, 5]
    _write(out / "settings.json", {"profile": "quick", "device": "cpu", "seeds": [0, 1], "semantic_checkpoints": ks,
                                   "long_seconds": 12, "eval_count": 2, "cpus": 2, "threads": "2"})
    # claim 1 / 4: caption-d8 beats vae-d8 by 6 points (mean over checkpoints) on both seeds; ssl-d8 (first
    # seed only) beats it by less than the margin
    levels = {("caption-d8", 0): 0.60, ("caption-d8", 1): 0.62, ("vae-d8", 0): 0.50, ("vae-d8", 1): 0.52,
              ("ssl-d8", 0): 0.52}
    for (arm, seed), lv in levels.items():
        if partial and arm != "caption-d8":
            continue
        for k in ks:
            _write(out / "eval" / arm / f"s{seed}" / f"step-{k}.json", _toy_eval(lv * k / 5))
        _write(out / "eval" / arm / f"s{seed}" / "rendered.json", _toy_eval(0.9))
    if partial:
        return out
    # claim 2: dim 8 worse than none -> not reproduced
    for arm, lv in (("caption-d64", 0.65), ("caption-raw", 0.7)):
        for k in ks:
            _write(out / "eval" / arm / "s0" / f"step-{k}.json", _toy_eval(lv))
    for arm in ("caption-d8", "caption-d64", "caption-raw"):
        _write(out / "eval" / arm / "s0" / "plan-probe.json",
               {"right_way_fraction": {"sampled": {"all": 0.5}, "rendered": {"all": 1.0}}, "forward_fraction": {"sampled": {"all": 0.25}}})
        m = out / "runs" / arm / "s0" / "semantic" / "metrics.jsonl"
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text("".join(json.dumps({"step": i, "loss": 1.0 / i, "elapsed_s": 0.5 * i}) + "\n" for i in range(1, 21)) + '{"step": 2')
    # claim 3: SemanticGen drifts 5 points, the baselines 30 and 20
    for seed in (0, 1):
        for arm, (f, l) in (("semanticgen", (0.9, 0.85)), ("base-ct-swin", (0.9, 0.6)), ("base-ct", (0.8, 0.6))):
            _write(out / "eval" / arm / f"s{seed}" / "long.json", _toy_eval(0.7, f, l))
            _write(out / "eval" / arm / f"s{seed}" / "drift.json", {"mean": {"metrics": {
                "temporal_flickering": {"delta": 0.012, "delta_points": 1.2, "relative_change_pct": 1.3}, "sharpness": {"delta": 3.0, "delta_points": None, "relative_change_pct": 7.5}}}})
    _write(out / "eval" / "encoder-probe.json", {"probe": [
        {"spec": "toy", **{k: 0.9 for k in ("colour_acc", "shape_acc", "background_acc", "motion_acc", "objectness_iou")}},
        {"spec": f"qwen2.5-vl:{out}/ssl-tower", **{k: 0.5 for k in ("colour_acc", "shape_acc", "background_acc", "motion_acc", "objectness_iou")}}]})
    (out / "times.tsv").write_text("data/toy-short\t3\narms/caption-d8/s0/latent\t120\narms/caption-d8/s1/latent\t60\n")
    return out


def test_verdict_rules(report):
    assert report.verdict_higher([60, 62], [50, 52]) == "reproduced"
    assert report.verdict_higher([58, 50], [50, 52]) == "partly reproduced"  # higher on the mean, not on every seed
    assert report.verdict_higher([51, 51], [50, 50]) == "partly reproduced"  # every seed, below the margin
    assert report.verdict_higher([40, 40], [50, 50]) == "not reproduced"
    assert report.verdict_higher([60], [50, 50]) == "not measured"
    assert report.verdict_order(70, 60, 50) == "reproduced"
    assert report.verdict_order(55, 60, 50) == "partly reproduced"
    assert report.verdict_order(40, 60, 70) == "not reproduced"
    assert report.verdict_lower([5, 5], [[30, 30], [20, 20]]) == "reproduced"
    assert report.verdict_lower([25, 25], [[30, 30], [20, 20]]) == "partly reproduced"
    assert report.verdict_lower([35, 35], [[30, 30], [20, 20]]) == "not reproduced"


def test_report_from_synthetic_results(report, tmp_path):
    out = _fake_out(tmp_path / "out")
    report.main([str(out)])
    text = (out / "reproduction.md").read_text()
    assert text.startswith("# SemanticGen's claims at toy scale") and "prove nothing" in text.split("## Settings")[0]
    assert "**Verdict (Fig. 9): reproduced** (caption-d8 − vae-d8 = +6.0 points on seeds [0, 1]" in text
    assert "**Verdict (Table 3): not reproduced**" in text
    assert "**Verdict (Table 2): reproduced**" in text
    assert "**Verdict (Fig. 9 with the self-supervised tower): partly reproduced** (ssl-d8 − vae-d8 = +1.2 points on seeds [0]" in text
    # Table 2 shape: first, last and |first − last| per attribute, in points, mean [range] over seeds
    row = next(line for line in text.splitlines() if line.startswith("| SemanticGen"))
    assert "90.0 [90.0–90.0] | 85.0 [85.0–85.0] | 5.0 [5.0–5.0]" in row
    assert "temporal_flickering Δ" in text and "| 1.2 [1.2–1.2] |" in text  # 0–1 metric in points
    # every plot the page links exists
    import re

    pngs = re.findall(r"\(([^)]+\.png)\)", text)
    assert {"claim1-fig9.png", "claim2-loss.png", "claim3-drift.png", "claim4-encoders.png"} <= set(pngs)
    assert all((out / p).is_file() for p in pngs)
    assert "ssl-tower" in text and str(out) not in text.split("Linear probes")[1].split("\n\n")[1]
    assert "| arms/caption-d8 | claims 1, 2, 4 | 3.0 min |" in text  # wall times summed per part
    assert "| caption-d8/s0/semantic | 20 | 0.50 |" in text  # s/step from metrics.jsonl (a torn last line skipped)


def test_report_calls_claim3_untested_when_every_arm_starts_wrong(report, tmp_path):
    out = _fake_out(tmp_path / "out")
    text, _ = report.build(out)
    assert "first 15 % over colour, shape and motion, mean over seeds: SemanticGen 90.0, Base-CT-Swin 90.0, Base-CT 80.0." in text
    assert "untested at this scale" not in text
    for seed in (0, 1):
        for arm in ("semanticgen", "base-ct-swin", "base-ct"):
            _write(out / "eval" / arm / f"s{seed}" / "long.json", _toy_eval(0.2, 0.2, 0.1))
    text, verdicts = report.build(out)
    assert "Below 50 % for every arm" in text and "untested at this scale" in text
    assert verdicts["claim 3 (Table 2)"] == "not reproduced"  # the rule's verdict stands beside the caveat


def test_report_of_a_partial_run(report, tmp_path):
    """Arms that have not run yet show as missing and get no verdict; the page is still written."""
    out = _fake_out(tmp_path / "out", partial=True)
    text, verdicts = report.build(out)
    assert set(verdicts.values()) == {"not measured"}
    assert "| vae-d8 | 1 | — |" in text
    assert "not reproduced" not in text.split("## Verdicts")[1]


def test_report_refuses_a_folder_without_settings(report, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("k")
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "x")])
    assert e.value.code == 2 and "settings.json is missing" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["keep.txt"]


def test_report_publish_copies_the_plots_beside_the_page(report, tmp_path):
    out = _fake_out(tmp_path / "out")
    (tmp_path / "docs").mkdir()
    report.main([str(out), "--publish", str(tmp_path / "docs" / "reproduction.md")])
    page = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "](reproduction/claim1-fig9.png)" in page and "](claim1-fig9.png)" not in page
    assert page == (out / "reproduction.md").read_text().replace("](claim", "](reproduction/claim")
    assert sorted(p.name for p in (tmp_path / "docs" / "reproduction").iterdir()) == sorted(p.name for p in out.glob("*.png"))
    assert str(out) not in page


@pytest.mark.parametrize("doc", ["nowhere/reproduction.md", "page.txt"])
def test_report_publish_refuses_a_bad_path(report, tmp_path, doc, capsys):
    out = _fake_out(tmp_path / "out", partial=True)
    with pytest.raises(SystemExit) as e:
        report.main([str(out), "--publish", str(tmp_path / doc)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"report.py: --publish {tmp_path / doc}: give a .md path in an existing folder\n"
    assert not (out / "reproduction.md").exists()


# -- reproduce.sh's arguments ----------------------------------------------------------------------------
def _sh(*args, env=None):
    """Run reproduce.sh with this interpreter's environment first on PATH (its `semgen` and
    `python`), as a user runs it with the project's environment active."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(["bash", str(PAPER / "reproduce.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **(env or {})})


@pytest.mark.parametrize("args, msg", [((), "usage: bash examples/paper/reproduce.sh OUT"),
                                       (("o", "--fast"), "unknown option --fast"),
                                       (("o", "--device", "tpu"), "--device tpu: use cpu or cuda"),
                                       (("a", "b"), "OUT given twice")])
def test_reproduce_sh_argument_errors(tmp_path, args, msg):
    r = subprocess.run(["bash", str(PAPER / "reproduce.sh"), *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and msg in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_reproduce_sh_refuses_an_out_of_another_profile(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"profile": "full"}))
    r = _sh(str(out), "--quick")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"reproduce.sh: {out} holds a 'full' run, this is 'quick'; choose another OUT"
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]


# -- the self-supervised tower ---------------------------------------------------------------------------
def test_ssl_masking_and_targets(ssl):
    import torch

    pv = torch.randn(2 * 64, 3 * 2 * 14 * 14)
    mv = torch.full((pv.shape[1],), 7.0)
    masked, mask = ssl.masked_input(pv, 2, 0.5, mv, torch.Generator().manual_seed(0))
    assert mask.shape == (2, 4, 4) and mask.sum().item() == 16  # half of each input's 16 merged tokens
    hit = (masked == 7.0).all(1).reshape(2, 16, 4)  # the 4 patches of a merged token go together
    assert torch.equal(hit.all(2), mask.reshape(2, 16)) and torch.equal(hit.any(2), mask.reshape(2, 16))
    assert torch.equal(masked[~hit.reshape(-1)], pv[~hit.reshape(-1)])
    # targets: the cell's pixels of both frames; object pixels (not the frame's commonest colour) weigh 16
    pair = np.zeros((2, 64, 64, 3), np.uint8)
    pair[:, 0:4, 0:4] = 200
    x, w = ssl.cell_targets([pair])
    assert x.shape == w.shape == (1, 4, 4, 2 * 16 * 16 * 3)
    assert w[0, 0, 0].max() == ssl.OBJECT_WEIGHT and w[0, 0, 0].min() == 1 and w[0, 1:, 1:].max() == 1
    assert float(x.min()) == -1.0


def test_ssl_tower_saves_and_loads_through_the_users_loader(ssl, tmp_path, capsys):
    """A 1-step tower is the plain Qwen2.5-VL vision class (save_pretrained), loaded by
    `load_semantic_encoder("qwen2.5-vl:PATH")` as `semgen extract --semantic` loads it."""
    from semgen_cli.components import load_semantic_encoder
    from semgen_cli.io.video import resize_center_crop
    from semgen_cli.toy.world import render, sample_spec

    out = tmp_path / "ssl"
    ssl.main(["--out", str(out), "--steps", "1", "--batch", "2", "--probe-clips", "0", "--threads", "1"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl_vision" and (out / "model.safetensors").is_file()
    assert not (tmp_path / "ssl.tmp").exists()
    rep = json.loads((out / "train_report.json").read_text())
    assert rep["objective"].startswith("masked-patch reconstruction") and rep["train"]["steps"] == 1
    assert (out / rep["preview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the reconstruction preview
    enc = load_semantic_encoder(f"qwen2.5-vl:{out}", fps=3.2, min_pixels=56 * 56, max_pixels=1280 * 28 * 28)  # reproduce.sh's bounds
    clip = render(sample_spec(np.random.default_rng(0), seconds=1.0))
    feats = enc.encode(resize_center_crop(clip[[0, 2, 4, 6]], 112))
    assert tuple(feats.shape) == (2, 4, 4, 64) and bool(feats.isfinite().all())
    with pytest.raises(SystemExit) as refused:
        ssl.main(["--probe", "toy", "--probe-clips", "0"])
    assert refused.value.code == 2 and "--probe needs --probe-clips of at least 1" in capsys.readouterr().err


# -- end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reproduce_quick_end_to_end(tmp_path):
    """`reproduce.sh --quick` from nothing, as two calls side by side with the arms split between
    them (each makes only the data its arms need; a step one call runs, the other waits for and
    skips), writes the report and its plots; a third call without ARMS reuses every finished step."""
    out = tmp_path / "r"
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    calls = [subprocess.Popen(["bash", str(PAPER / "reproduce.sh"), "--quick", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PATH": path, "ARMS": arms})
             for arms in ("caption-d8 vae-d8 caption-d64 caption-raw", "ssl-d8 semanticgen base-ct-swin base-ct")]
    for c in calls:
        _, err = c.communicate()
        assert c.returncode == 0, err[-2000:]
    text = (out / "reproduction.md").read_text()
    assert "prove nothing" in text and text.count("**Verdict") == 4 and "not measured" not in text
    assert list(out.glob("*.png")) and not list(out.glob("*.tmp"))
    done = [line.split("\t")[0] for line in (out / "times.tsv").read_text().splitlines()]
    assert len(done) == len(set(done)) and "data/extract-caption" in done and "data/extract-long" in done  # each step once
    r = _sh(str(out), "--quick")
    assert r.returncode == 0 and len((out / "times.tsv").read_text().splitlines()) == len(done)  # nothing ran again
