"""What train_vit.py refuses, warns of and explains before and while it trains: every
configuration error (nothing written), the config files' recipe values, unusable input files
named before any step, bounded settings, the warnings of a short run and of a set not stored
faithfully, the summary's wording, and --help. The data: tiny_runs.py.
"""
import json
import re
from pathlib import Path

import pytest
import torch

from vit_speedrun.train import report
import train_vit
import write_ffcv
from conftest import ROOT
from tiny_runs import BATCH, args, strict_log


@pytest.mark.parametrize("case", ["missing_file", "unknown_variant", "patch", "classes",
                                  "v2_numeric", "no_real", "bad_value", "required",
                                  "unknown_yaml_key", "missing_config", "batch_too_big",
                                  "world_size", "crop_area", "empty_train", "missing_val"])
def test_config_errors(case, splits, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    argv = args(splits, folder)
    expect = {
        "missing_file": (f"--data.train_dataset={tmp_path / 'nope.beton'}", "does not exist"),
        "unknown_variant": ("--model.variant=Q/16", "unknown ViT variant"),
        "patch": ("--model.img_size=36", "multiple of the patch size 8"),
        "classes": (f"--data.val_dataset={splits['other']}", "3 classes"),
        "v2_numeric": (f"--data.v2_dataset={splits['v2_numeric']}", "--cfg.classes_from"),
        "no_real": (f"--data.val_dataset={splits['val_noreal']}", "needs data.val_dataset written with ReaL"),
        "bad_value": ("--training.precision=fp16", "training.precision: got 'fp16'"),
        "batch_too_big": ("--training.batch_size=128", "larger than the 86 images"),
        "world_size": ("--training.batch_size=16", "does not split evenly over 3 ranks"),
        "crop_area": ("--augment.crop_area_min=0", "augment.crop_area_min: got '0', expected a float and between"),
        # the hint of a missing set: skipping it, except for the train set, which a run needs
        "empty_train": ("--data.train_dataset=", "data.train_dataset is empty: a run needs"),
        "missing_val": (f"--data.val_dataset={tmp_path / 'nope.beton'}",
                        "or set data.val_dataset='' to skip it"),
    }
    if case == "required":
        argv = [a for a in argv if not a.startswith("--logging.folder")]
        message = "logging.folder: required"
    elif case == "unknown_yaml_key":
        cfg = tmp_path / "typo.yaml"
        cfg.write_text("training:\n  epoch: 3\n")
        argv = ["--config-file", str(cfg), *argv]
        message = "unknown settings training.epoch (did you mean training.epochs"
    elif case == "missing_config":
        argv = ["--config-file", str(tmp_path / "none.yaml"), *argv]
        message = "none.yaml: no such file"
    else:
        flag, message = expect[case]
        argv.append(flag)
    if case == "world_size":
        monkeypatch.setenv("WORLD_SIZE", "3")
    assert train_vit.main(argv) == train_vit.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "configuration error" in err and message in err, err
    if case == "missing_file":
        assert "skip it" not in err   # the train set cannot be skipped
    assert not folder.exists()  # nothing written


def test_every_config_file_parses_and_recipe_values():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 11
    for path in configs:
        layered = [] if "ablation" not in path.name else ["-C", str(ROOT / "configs/vit_s16_90ep.yaml")]
        train_vit.parse_config([*layered, "-C", str(path)])
    for epochs in (90, 150, 300):
        c = train_vit.parse_config(["-C", str(ROOT / f"configs/vit_s16_{epochs}ep.yaml")])
        assert {k: c[k] for k in ("training.epochs", "training.batch_size", "optimizer.lr",
                                  "optimizer.weight_decay", "optimizer.warmup_steps",
                                  "optimizer.grad_clip_norm", "optimizer.beta1", "optimizer.beta2",
                                  "optimizer.eps", "model.variant", "model.pool_type",
                                  "model.posemb", "model.rep_size", "model.img_size",
                                  "augment.crop_area_min", "augment.flip",
                                  "augment.randaug_layers", "augment.randaug_magnitude",
                                  "augment.randaug_fixed", "augment.mixup_alpha",
                                  "eval.crop_ratio", "training.precision")} == {
            "training.epochs": epochs, "training.batch_size": 1024, "optimizer.lr": 1e-3,
            "optimizer.weight_decay": 0.1, "optimizer.warmup_steps": 10_000,
            "optimizer.grad_clip_norm": 1.0, "optimizer.beta1": 0.9, "optimizer.beta2": 0.999,
            "optimizer.eps": 1e-8, "model.variant": "S/16", "model.pool_type": "gap",
            "model.posemb": "sincos2d", "model.rep_size": True, "model.img_size": 224,
            "augment.crop_area_min": 0.05, "augment.flip": True, "augment.randaug_layers": 2,
            "augment.randaug_magnitude": 10, "augment.randaug_fixed": False,
            "augment.mixup_alpha": 0.2, "eval.crop_ratio": 0.875, "training.precision": "bf16"}
    original = train_vit.parse_config(["-C", str(ROOT / "configs/vit_s16_90ep.yaml"),
                                       "-C", str(ROOT / "configs/ablation_original.yaml")])
    assert (original["training.batch_size"], original["model.pool_type"], original["model.posemb"],
            original["augment.randaug_layers"], original["augment.mixup_alpha"]) == (4096, "tok", "learn", 0, 0.0)


def _cut(path, keep):
    content = path.read_bytes()
    path.write_bytes(content[:keep(len(content))])


@pytest.mark.parametrize("case", ["half_beton", "beton_without_last_kb", "empty_beton",
                                  "half_checkpoint", "empty_checkpoint", "empty_checkpoint_alone",
                                  "other_model", "overflowing_checkpoint"])
def test_unusable_files_are_named_before_training(case, splits, reference, tmp_path, capsys):
    """A cut-short or empty .beton or checkpoint.pt, a checkpoint of another model, or one
    whose finite weights overflow (as the previous code could write): a configuration error
    naming the file (or setting) and what to do, before any training step."""
    folder = tmp_path / "run"
    extra = []
    if case.endswith("beton") or "beton_" in case:
        beton = tmp_path / "train.beton"
        beton.write_bytes(splits["train"].read_bytes())
        (tmp_path / "train.beton.json").write_bytes(Path(f"{splits['train']}.json").read_bytes())
        _cut(beton, {"half_beton": lambda n: n // 2, "beton_without_last_kb": lambda n: n - 1024,
                     "empty_beton": lambda n: 0}[case])
        extra = [f"--data.train_dataset={beton}"]
        message = [f"data.train_dataset: {beton}: ", "Convert it again with write_ffcv.py"]
        message += ["too short for an FFCV header"] if case == "empty_beton" else ["cut short"]
    else:
        folder.mkdir()
        for name in ("checkpoint.pt", "checkpoint.prev.pt"):
            if case != "empty_checkpoint_alone" or name == "checkpoint.pt":
                (folder / name).write_bytes((reference / name).read_bytes())
        current = folder / "checkpoint.pt"
        if case == "overflowing_checkpoint":  # weights of 3e37: finite, NaN in the first layer
            ckpt = torch.load(reference / "checkpoint.prev.pt", weights_only=True)
            ckpt["model"]["embedding.weight"].fill_(3e37)
            torch.save(ckpt, current)
            message = [f"{current} (step 10) cannot be resumed: non-finite values in the model's "
                       f"outputs on a training batch", "holds the checkpoint before it (step 10)"]
        elif case == "other_model":
            extra = ["--model.variant=pico/8"]
            message = [f"{current} was written for another model: model.variant='mu/8' there, "
                       f"'pico/8' here", "--model.variant=mu/8", "another logging.folder"]
        else:
            _cut(current, (lambda n: n // 2) if case == "half_checkpoint" else (lambda n: 0))
            message = [f"{current} is not a readable checkpoint"]
            message += ([f"move {current} away to start the run over"] if case.endswith("alone")
                        else [f"{folder / 'checkpoint.prev.pt'} holds the checkpoint before it "
                              f"(step 10): `mv {folder / 'checkpoint.prev.pt'} {current}`"])
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    if case == "overflowing_checkpoint":  # found on the first batch, after the log was set up
        before = sorted(before + ["config.json", "log.jsonl"])
    assert train_vit.main(args(splits, folder, *extra, evals=False)) == train_vit.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "configuration error" in err and all(m in err for m in message), err
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else []) == before


def test_settings_bounded_and_no_prefix_matching(splits, tmp_path, capsys):
    """Every float setting is finite and bounded by what float32 holds; a flag is never
    taken for a longer one it is the prefix of, and a typo gets a "did you mean"."""
    folder = tmp_path / "bad"
    cases = {
        "--optimizer.lr=1e39": "optimizer.lr: got '1e39', expected a float and between 0 and "
                               "3.40282e+38",
        "--optimizer.eps=nan": "optimizer.eps: got 'nan', expected a float",
        "--optimizer.beta2=1": "optimizer.beta2: got '1', expected a float and between 0 and 1 "
                               "(1 excluded)",
        "--training.epochs=inf": "training.epochs: got 'inf'",
        "--training.max_step=3": "--training.max_step=3 (did you mean --training.max_steps?)",
        "--trainig.epochs=3": "--trainig.epochs=3 (did you mean --training.epochs?)",
    }
    for flag, message in cases.items():
        assert train_vit.main(args(splits, folder, flag, evals=False)) == train_vit.EXIT_CONFIG
        err = capsys.readouterr().err
        assert "configuration error" in err and message in err, (flag, err)
    assert not folder.exists()
    assert train_vit.parse_config(args(splits, folder, "--optimizer.lr=1e38"))["optimizer.lr"] == 1e38


@pytest.fixture(scope="module")
def short_run(splits, tmp_path_factory):
    """A 4-step run with lr=0 (the loss stays ln(4)) and the progress bar on; its folder and
    everything it printed. The warmup (5 steps) outlasts it; STUCK_STEPS is lowered to 3."""
    import contextlib
    import io
    folder = tmp_path_factory.mktemp("short")
    out, err = io.StringIO(), io.StringIO()
    stuck, train_vit.STUCK_STEPS = train_vit.STUCK_STEPS, 3
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train_vit.main(args(splits, folder, "--optimizer.lr=0", "--training.max_steps=4",
                                       "--logging.progress=1", evals=False))
    finally:
        train_vit.STUCK_STEPS = stuck
    assert code == 0, err.getvalue()
    return folder, out.getvalue() + err.getvalue()


def test_warns_when_the_run_ends_inside_the_warmup(short_run):
    _, text = short_run
    assert ("warning: this run ends at step 4 (training.max_steps=4), before its warmup of "
            "optimizer.warmup_steps=5 steps does") in text


def test_stuck_loss_shows_in_the_progress_bar(short_run):
    _, text = short_run
    assert "loss=1.3863=ln(4)" in text  # the bar's postfix
    assert "warning: the training loss is still ln(4) = 1.3863 at step 3" in text
    assert text.count("is still ln(4)") == 1


def test_short_run_summary_reads_well_and_epochs_agree(short_run):
    folder, text = short_run
    summary_line = next(line for line in text.splitlines() if "TPUv3-8 reference" in line)
    assert "0:00:00" not in summary_line and "e+" not in summary_line
    assert re.search(r"take it \d+\.\d\d s \(300-ep pace: under \d+\.\d\d s\)", summary_line)
    assert re.search(r"\(([\d,]+|\d+\.\d+)x the reference's time\)", summary_line)
    summary = json.loads((folder / "summary.json").read_text())
    last = [r for r in strict_log(folder) if "train_loss" in r][-1]
    assert last["epoch"] == summary["epochs_run"] == 4 * BATCH / 86
    assert report.duration(0.043) == "0.04 s" and report.duration(3725) == "1:02:05"
    assert report.ratio(1110.4) == "1,110x" and report.ratio(0.5) == "0.5x"


def test_help_is_plain_text_with_real_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_vit.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "qqqq" not in out  # no terminal line-drawing codes
    for line in ("--data.train_dataset (required)", "--data.minival_dataset=''",
                 "--optimizer.lr=0.001", "--optimizer.eps=1e-08", "--data.real=false",
                 "--training.max_steps=0", "--logging.folder (required)"):
        assert line in out, line
    assert "None" not in out and "Requried" not in out


def test_default_loader_threads_leave_a_core_to_the_training_loop(monkeypatch):
    monkeypatch.setattr(train_vit.os, "sched_getaffinity", lambda pid: set(range(128)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert train_vit.default_loader_threads() == 15      # 16 cores per rank
    monkeypatch.setattr(train_vit.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert train_vit.default_loader_threads() == 1


def test_warns_when_a_set_is_not_stored_faithfully(splits, tmp_path, capsys):
    """write_ffcv's raw/jpg/proportion storage changes the pixels: the trainer says so at
    start for each such set, and not for the default (original bytes)."""
    raw = tmp_path / "train_raw.beton"
    write_ffcv.convert(Path(splits["train"]).parent / "train", raw, "train", write_mode="raw",
                       num_workers=1, progress=False, minival_fraction=0.1)
    assert train_vit.main(args(splits, tmp_path / "run", f"--data.train_dataset={raw}",
                               "--training.max_steps=1", evals=False)) == 0
    err = capsys.readouterr().err
    assert f"warning: {raw} is stored write_mode=raw" in err and "train pixels differ" in err
    assert train_vit.main(args(splits, tmp_path / "run2", "--training.max_steps=1",
                               evals=False)) == 0
    assert "differ from the reference" not in capsys.readouterr().err
