"""--report-to: the tracker adapters (TensorBoard for real; wandb and trackio through stand-in
modules, since only tensorboard is installed here), the trainer's hook, and the one-line errors."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.tracking import Trackers, open_trackers, parse_report_to
from semgen_cli.training import train
from tests.conftest import run_inproc
from tests.test_training import NoisyPoints, cfg, collate, loss_fn, make_net


def scalars(log_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_parse_report_to_takes_repeats_and_commas():
    assert parse_report_to(None) == () and parse_report_to(["none"]) == ()
    assert parse_report_to(["tensorboard,wandb", "tensorboard", " TrackIO "]) == ("tensorboard", "wandb", "trackio")
    with pytest.raises(ConfigError, match="--report-to 'mlflow': expected tensorboard, wandb, trackio or none"):
        parse_report_to(["tensorboard,mlflow"])
    with pytest.raises(ConfigError, match="none cannot be combined"):
        parse_report_to(["none,wandb"])


def test_trainer_hands_every_metrics_row_to_the_trackers(tmp_path):
    class Recorder:
        def __init__(self):
            self.rows = []

        def log(self, row, step):
            self.rows.append((step, dict(row)))

    rec = Recorder()
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4), tmp_path, trackers=[rec])
    written = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row for _, row in rec.rows] == written and [s for s, _ in rec.rows] == [1, 2, 3, 4]


def test_tensorboard_writes_scalars_and_resume_drops_redone_steps(tmp_path):
    with open_trackers(("tensorboard",), tmp_path) as trackers:
        for s in (1, 2, 3, 4):
            trackers.log({"step": s, "loss": float(s), "note": "text is left out", "bad": float("nan")}, s)
    log_dir = tmp_path / "tracking" / "tensorboard"
    assert scalars(log_dir, "loss") == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    with open_trackers(("tensorboard",), tmp_path, resume=True) as trackers:  # resumed from step 2
        trackers.log({"step": 3, "loss": 30.0}, 3)
    assert scalars(log_dir, "loss") == {1: 1.0, 2: 2.0, 3: 30.0}


def test_tensorboard_logs_a_sample_as_its_middle_frame(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from semgen_cli.io.video import write_video
    from tests.conftest import make_frames

    mp4 = tmp_path / "s.mp4"
    write_video(mp4, make_frames(8, 32, 32), fps=8)
    with open_trackers(("tensorboard",), tmp_path) as trackers:
        trackers.log_video("clip-1", mp4, 2, "a red circle")
    acc = EventAccumulator(str(tmp_path / "tracking" / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["images"] == ["samples/clip-1"] and acc.Images("samples/clip-1")[0].step == 2


def fake_wandb(calls: list) -> types.ModuleType:
    wandb = types.ModuleType("wandb")

    class Run:
        def log(self, data, step=None):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw))
        return Run()

    def login(*a, **kw):
        raise AssertionError("semgen must not log in to wandb")

    wandb.init, wandb.login = init, login
    wandb.util = types.SimpleNamespace(generate_id=lambda: f"id{len(calls)}")
    wandb.Video = lambda path, caption=None, format=None: ("video", Path(path).name, caption, format)
    return wandb


def test_wandb_adapter_logs_numbers_and_resumes_the_same_run(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    run = tmp_path / "lat"
    with open_trackers(("wandb",), run, {"step": "train-latent"}) as trackers:
        assert calls == []  # opens on its first row: nothing before training logs
        trackers.log({"step": 1, "loss": 0.5, "checkpoint": "x"}, 1)
        trackers.log_video("clip", run / "a.mp4", 2, "cap")
    init = calls[0][1]
    assert init["id"] == json.loads((run / "tracking" / "wandb.json").read_text())["id"]
    assert init["resume"] == "allow" and init["dir"] == str(run / "tracking") and init["name"] == "lat"
    assert init["config"] == {"step": "train-latent"}
    assert calls[1] == ("log", {"loss": 0.5}, 1) and calls[2] == ("log", {"samples/clip": ("video", "a.mp4", "cap", "mp4")}, 2)
    assert calls[3] == ("finish",)
    with open_trackers(("wandb",), run, resume=True) as trackers:
        trackers.log({"step": 2, "loss": 0.4}, 2)
    assert calls[4][1]["id"] == init["id"]


def test_trackio_adapter(tmp_path, monkeypatch):
    calls: list = []
    trackio = types.ModuleType("trackio")
    trackio.init = lambda **kw: calls.append(("init", kw))
    trackio.log = lambda data, step=None: calls.append(("log", data, step))
    trackio.finish = lambda: calls.append(("finish",))
    trackio.Video = lambda path, caption=None: ("video", Path(path).name)
    monkeypatch.setitem(sys.modules, "trackio", trackio)
    with open_trackers(("trackio",), tmp_path / "sem", {"a": 1}) as trackers:
        trackers.log({"step": 3, "val_loss": 1.25}, 3)
        trackers.log_video("prompt-000", tmp_path / "p.mp4", 3)
    assert calls[0] == ("init", {"project": "semgen", "name": "sem", "config": {"a": 1}, "resume": "allow"})
    assert calls[1:] == [("log", {"val_loss": 1.25}, 3), ("log", {"samples/prompt-000": ("video", "p.mp4")}, 3), ("finish",)]
    assert not (tmp_path / "sem").exists()  # trackio keeps its own store; semgen writes nothing for it


def test_only_rank_0_tracks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert open_trackers(("tensorboard",), tmp_path) == Trackers()


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_missing_tracker_package_is_one_line_naming_the_extra(name, tmp_path):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")
    with pytest.raises(InputError, match=rf"^--report-to {name}: the {name} package is not installed; pip install semgen\[{name}\]$"):
        open_trackers((name,), tmp_path)
    for command in (["fit-compressor", str(tmp_path / "data")], ["train-latent", str(tmp_path / "data"), "--compressor", str(tmp_path / "c")],
                    ["train-semantic", str(tmp_path / "data"), "--latent-run", str(tmp_path / "lat")]):
        r = run_inproc(*command, "--report-to", f"tensorboard,{name}", "--out", str(tmp_path / "run"))
        assert r.returncode == 2 and f"pip install semgen[{name}]" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "run").exists()


def test_unknown_tracker_name_is_exit_2_and_writes_nothing(tmp_path):
    r = run_inproc("train-latent", str(tmp_path / "data"), "--compressor", str(tmp_path / "c"), "--report-to", "tensorbord", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--report-to 'tensorbord'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_fit_compressor_reports_to_tensorboard(tmp_path):
    from tests.conftest import tiny_data

    data = tiny_data(tmp_path, count=4, compressor_steps=1, batch=2)  # count 4: the extraction other modules share
    r = run_inproc("fit-compressor", str(data), "--steps", "3", "--batch-size", "2", "--report-to", "tensorboard", "--out", str(tmp_path / "c2"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "c2" / "metrics.jsonl").read_text().splitlines()]
    assert scalars(tmp_path / "c2" / "tracking" / "tensorboard", "loss") == {r["step"]: pytest.approx(r["loss"]) for r in rows}
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows])).all()


def test_config_file_report_to_takes_a_list(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"report-to": "tensorboard"}))
    r = run_inproc("train-latent", str(tmp_path / "data"), "--compressor", str(tmp_path / "c"), "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "report_to must be a list of strings" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "c.json").write_text(json.dumps({"report-to": ["tensorbord"]}))
    r = run_inproc("train-latent", str(tmp_path / "data"), "--compressor", str(tmp_path / "c"), "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--report-to 'tensorbord'" in r.stderr
    assert not (tmp_path / "run").exists()
