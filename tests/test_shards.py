"""The shard writer (`semgen_cli.io.shards.ShardWriter`): rolls a shard per `shard_size` inputs,
commits each with its marker, indexes last; what it writes, `Dataset` reads."""

from __future__ import annotations

import json

import pytest
import torch

from semgen_cli.errors import InputError
from semgen_cli.io.shards import Dataset, Field, ShardWriter

FIELDS = {"x": Field(("T", "D"), variable=0)}


def _record(source: str, frames: int) -> tuple[dict, dict]:
    sid = source.replace("/", "%2F")
    return {"id": sid, "source": source, "duration": frames / 4}, {"x": torch.full((frames, 3), float(frames))}


def _write(w: ShardWriter, k: int, bad: frozenset = frozenset()) -> None:
    for n, source in enumerate(w.plan[k], 1):
        if source in bad:
            w.fail(source, f"{source}: unreadable")
        else:
            w.write(*_record(source, n))


def test_writer_rolls_at_shard_size_and_indexes_last(tmp_path):
    sources = [f"v{i}.mp4" for i in range(5)]
    with ShardWriter(tmp_path, sources, 2, FIELDS, "float16") as w:
        assert w.plan == [["v0.mp4", "v1.mp4"], ["v2.mp4", "v3.mp4"], ["v4.mp4"]]
        _write(w, 0)
        assert w.done(0) and not (tmp_path / "index.json").exists()  # shard 0 rolled over after its 2 inputs
        _write(w, 1, bad=frozenset({"v3.mp4"}))
        _write(w, 2)
        index = w.finish({"producer": {}, "components": {}}, config={"step": "test"})
    assert [s["samples"] for s in index["shards"]] == [2, 1, 1] and index["total_samples"] == 4 and index["failed"] == 1
    assert index["fields"] == {"x": {"dtype": "float16", "shape": ["T", 3], "axes": ["T", "D"]}}
    assert json.loads((tmp_path / "failures.jsonl").read_text()) == {"source": "v3.mp4", "reason": "v3.mp4: unreadable"}
    ds = Dataset(tmp_path)
    assert [r["id"] for r in ds.records] == ["v0.mp4", "v1.mp4", "v2.mp4", "v4.mp4"]
    assert ds.load(1)["x"].dtype == torch.float16 and ds.load(1)["x"].shape == (2, 3)
    assert all(problem is None for _, problem in ds.verify())


def test_an_exception_drops_the_shard_in_progress(tmp_path):
    w = ShardWriter(tmp_path, ["a.mp4", "b.mp4"], 2, FIELDS, "float32")
    with pytest.raises(RuntimeError), w:
        w.write(*_record("a.mp4", 1))
        raise RuntimeError("encoder crashed")
    assert not w.done(0) and not list(tmp_path.glob("shard-*")) and not (tmp_path / ".progress").exists()
    with pytest.raises(InputError, match=r"shard-00000.json: missing; another rank did not finish"):
        w.finish({})
    assert not (tmp_path / "index.json").exists()


def test_inputs_are_written_in_plan_order(tmp_path):
    w = ShardWriter(tmp_path, ["a.mp4", "b.mp4", "c.mp4"], 2, FIELDS, "float32")
    with pytest.raises(ValueError, match="does not start a shard"):
        w.write(*_record("b.mp4", 1))
    w.write(*_record("a.mp4", 1))
    with pytest.raises(ValueError, match="'c.mp4' written where the plan has 'b.mp4'"):
        w.fail("c.mp4", "skipped")
    with pytest.raises(ValueError, match=r"1 of its 2 inputs written"), w:
        pass


def test_a_corrupt_shard_is_not_done(tmp_path):
    with ShardWriter(tmp_path, ["a.mp4"], 1, FIELDS, "float32") as w:
        _write(w, 0)
    assert ShardWriter(tmp_path, ["a.mp4"], 1, FIELDS, "float32").done(0)
    assert not ShardWriter(tmp_path, ["b.mp4"], 1, FIELDS, "float32").done(0)  # planned for other inputs
    shard = tmp_path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert not ShardWriter(tmp_path, ["a.mp4"], 1, FIELDS, "float32").done(0)
