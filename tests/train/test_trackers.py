"""train/trackers.py through the trainer: TensorBoard's events and W&B's offline run hold
log.jsonl's records under the trainer's steps, and a resumed run continues both axes.

The run of tiny_runs.py's `args` (12 steps of ViT-mu/8, evals every 5), stopped at
step 8 and resumed from its step-5 checkpoint, as after a crash between checkpoints: the
second session relogs steps 6 to 8, which log.jsonl and TensorBoard then hold once."""
import json
import os

import pytest

from tiny_runs import args, read_log
import train_vit
from vit_speedrun.cli import ConfigError
from vit_speedrun.train import checkpoints, trackers

pytest.importorskip("tensorboard", reason="make install installs it (requirements-extras.txt)")
pytest.importorskip("wandb", reason="make install installs it (requirements-extras.txt)")


def wandb_records(path):
    """The records of a .wandb file: W&B's header, then LevelDB-log chunks (crc32, length,
    type) in 32 KiB blocks, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", path
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:          # a block's tail too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                   # FULL, or LAST of FIRST/MIDDLE/LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_history(run_dir):
    """{step: {name: value}} of an offline run folder's history records."""
    out = {}
    for r in wandb_records(next(run_dir.glob("run-*.wandb"))):
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            out.setdefault(row.pop("_step"), {}).update(row)
    return out


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_trackers_follow_the_log_across_a_resume(splits, tmp_path, offline_wandb):
    folder = tmp_path / "run"
    on = ["--logging.tensorboard=1", "--logging.wandb=1", "--logging.wandb_project=tests"]
    assert train_vit.main(args(splits, folder, *on, "--training.max_steps=8")) == 0
    os.replace(folder / checkpoints.PREVIOUS, folder / checkpoints.CURRENT)   # back to step 5
    assert train_vit.main(args(splits, folder, *on, "--training.max_steps=10")) == 0
    log = read_log(folder)
    train = {r["step"]: r for r in log if "train_loss" in r}
    evals = {r["step"]: r for r in log if "minival_top1" in r}
    assert sorted(train) == list(range(1, 11)) and sorted(evals) == [5, 10]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder / "tensorboard")).Reload()
    loss = events.Scalars("train/train_loss")
    assert [e.step for e in loss] == list(range(1, 11))        # 6..8 once: the first session's purged
    for e in loss:
        assert e.value == pytest.approx(train[e.step]["train_loss"], rel=1e-6)
    assert [(e.step, e.value) for e in events.Scalars("eval/val_top1")] == [
        (s, pytest.approx(evals[s]["val_top1"], rel=1e-6)) for s in (5, 10)]

    run_id = (folder / trackers.WANDB_ID_FILE).read_text().strip()
    runs = sorted((folder / "wandb").glob(f"offline-run-*-{run_id}*"))
    assert len(runs) == 2                                       # one W&B run, two sessions
    first, second = (wandb_history(r) for r in runs)
    assert sorted(first) == list(range(1, 9)) and sorted(second) == list(range(6, 11))
    for step, row in second.items():
        assert row["train_loss"] == pytest.approx(train[step]["train_loss"], rel=1e-12)
        assert row["lr"] == pytest.approx(train[step]["lr"], rel=1e-12)
    assert second[10]["minival_top1"] == pytest.approx(evals[10]["minival_top1"])
    for step in (6, 7, 8):                                      # the resume is exact
        assert first[step]["train_loss"] == second[step]["train_loss"]
    summaries = [r for r in wandb_records(next(runs[1].glob("run-*.wandb")))
                 if r.WhichOneof("record_type") == "summary"]
    keys = {u.key or "/".join(u.nested_key) for s in summaries for u in s.summary.update}
    assert {"final/minival_top1", "img_per_s", "steps"} <= keys


def test_a_missing_tracker_package_is_a_config_error(splits, tmp_path, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        trackers.check_installed(False, True)
    folder = tmp_path / "run"
    assert train_vit.main(args(splits, folder, "--logging.wandb=1")) == train_vit.EXIT_CONFIG
    assert "logging.wandb=true needs the wandb package" in capsys.readouterr().err
    assert not folder.exists()                                  # stopped before any work
