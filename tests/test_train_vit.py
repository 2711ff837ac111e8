"""train_vit.py on CPU with real .beton files, the real ffcv Loader and real torchrun.

The data: 4 classes of 40x36 JPEG views of scikit-image's photographs, converted by
write_ffcv.convert into train / minival / val (with ReaL sets) / v2, built once per module.
The model: ViT-mu/8 at 32 px (16 tokens). Training runs go through train_vit.main() in this
process (loaders compile once per process), except the 2-rank run, which is torchrun's.
One uninterrupted 12-step run (`reference`) is what resumed, preempted and distributed
runs are compared with.
"""
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.ndarray import NDArrayDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToTensor
import torch
from PIL import Image

from vit_speedrun.train import checkpoints
from vit_speedrun.pp import ffcv_ops
from vit_speedrun.train import report
from vit_speedrun.train import loaders
from vit_speedrun.train import step
import train_vit
from vit_speedrun.models import vit
import write_ffcv
from conftest import ROOT, real_photos

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
BATCH, STEPS, STEPS_PER_EPOCH = 16, 12, 5  # 86 train images: 5 batches of 16 per epoch


def _write_folder(root, per_class, rng, names=PHOTOS, numeric=False):
    photos = real_photos()
    for c, name in enumerate(names):
        folder = root / (str(c) if numeric else f"n0000{c}")
        folder.mkdir(parents=True)
        image = photos[name]
        for i in range(per_class):
            h, w = image.shape[:2]
            side = int(min(h, w) * rng.uniform(0.5, 0.9))
            y, x = rng.integers(0, h - side), rng.integers(0, w - side)
            Image.fromarray(image[y:y + side, x:x + side]).resize((40, 36)).save(
                folder / f"{name}_{i:03d}.jpg", quality=90)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Paths of the tiny splits (and of a few deliberately wrong ones for config errors)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    _write_folder(root / "train", 24, rng)
    _write_folder(root / "val", 6, rng)
    _write_folder(root / "v2", 4, rng, numeric=True)
    _write_folder(root / "other", 3, rng, names=PHOTOS[:3])
    # ReaL sets in file-name order: mostly the true class, some with two labels, some empty.
    names = sorted(p.name for p in (root / "val").rglob("*.jpg"))
    label = {n: PHOTOS.index(n.rsplit("_", 1)[0]) for n in names}
    real = [[] if i % 5 == 0 else [label[n], (label[n] + 1) % 4] if i % 3 == 0 else [label[n]]
            for i, n in enumerate(names)]
    (root / "real.json").write_text(json.dumps(real))
    opts = dict(num_workers=1, progress=False, minival_fraction=0.1)
    paths = {}
    for name, folder, split, extra in (
            ("train", "train", "train", {}), ("minival", "train", "minival", {}),
            ("val", "val", "val", {"real_labels": root / "real.json"}),
            ("v2", "v2", "v2", {"classes_from": root / "train.beton"}),
            ("v2_numeric", "v2", "v2", {}), ("val_noreal", "val", "val", {}),
            ("other", "other", "val", {})):
        paths[name] = root / f"{name}.beton"
        write_ffcv.convert(root / folder, paths[name], split, **opts, **extra)
    assert write_ffcv.read_sidecar(paths["train"])["num_images"] == 86
    return paths


def args(data, folder, *extra, evals=True):
    """A 12-step run (2.2 epochs of 86 images, batch 16) of ViT-mu/8 at 32 px."""
    base = [f"--data.train_dataset={data['train']}", "--data.num_workers=2",
            "--model.variant=mu/8", "--model.img_size=32", "--training.epochs=2.2",
            f"--training.batch_size={BATCH}", "--optimizer.warmup_steps=5",
            "--eval.every=5", "--eval.batch_size=16", f"--logging.folder={folder}",
            "--logging.log_every=1", "--logging.checkpoint_every=5", "--logging.progress=0"]
    if evals:
        base += [f"--data.minival_dataset={data['minival']}", f"--data.val_dataset={data['val']}",
                 "--data.real=1", f"--data.v2_dataset={data['v2']}"]
    return base + list(extra)


def read_log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def load_checkpoint(folder):
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][key]), (i, key)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One uninterrupted run; its folder."""
    folder = tmp_path_factory.mktemp("reference")
    assert train_vit.main(args(data, folder)) == 0
    return folder


# --- pure functions ------------------------------------------------------------------------
def test_resumable_order_skips_whole_batches(data):
    """Starting at batch k = the full epoch's batches from k on; ranks partition the data."""
    def loader(rank, world, batch):
        order = loaders.ResumableOrder(rank, world)
        train_vit._LOADERS.append(Loader(  # kept alive: see loaders.LOADERS
            str(data["train"]), batch_size=batch, num_workers=1, order=order, seed=3,
            pipelines={"image": None}))
        return order, train_vit._LOADERS[-1]
    order, ld = loader(0, 1, 16)
    full = order.sample_order(4)
    assert len(ld) == 5 and len(full) == 80
    resumed = loaders.epoch_iterator(ld, ffcv_ops.AugmentClock(3), 4, first_batch=2)
    assert np.array_equal(resumed.order, full[32:])
    assert len(list(resumed)) == 3  # batches 2, 3, 4: no partial batch of the leftover 6
    halves = [loader(r, 2, 1)[0].sample_order(1) for r in range(2)]  # 43 batches of 1 each
    assert sorted(np.concatenate(halves).tolist()) == list(range(86))
    batched = [loader(r, 2, 8)[0].sample_order(1) for r in range(2)]
    assert [len(b) for b in batched] == [40, 40]  # 5 whole batches of 8 per rank
    assert np.array_equal(batched[0], halves[0][:40])


# --- configuration errors -------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing_file", "unknown_variant", "patch", "classes",
                                  "v2_numeric", "no_real", "bad_value", "required",
                                  "unknown_yaml_key", "missing_config", "batch_too_big",
                                  "world_size", "crop_area", "empty_train", "missing_val"])
def test_config_errors(case, data, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    argv = args(data, folder)
    expect = {
        "missing_file": (f"--data.train_dataset={tmp_path / 'nope.beton'}", "does not exist"),
        "unknown_variant": ("--model.variant=Q/16", "unknown ViT variant"),
        "patch": ("--model.img_size=36", "multiple of the patch size 8"),
        "classes": (f"--data.val_dataset={data['other']}", "3 classes"),
        "v2_numeric": (f"--data.v2_dataset={data['v2_numeric']}", "--cfg.classes_from"),
        "no_real": (f"--data.val_dataset={data['val_noreal']}", "needs data.val_dataset written with ReaL"),
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


# --- runs -----------------------------------------------------------------------------------
def test_log_checkpoint_plot_and_summary(reference):
    config = json.loads((reference / "config.json").read_text())
    assert config["model.variant"] == "mu/8" and config["optimizer.lr"] == 1e-3
    log = read_log(reference)
    train = [r for r in log if "train_loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:  # real numbers, not null (ffcv-imagenet logged null for years)
        assert isinstance(r["train_loss"], float) and 0 < r["train_loss"] < 10
        assert r["lr"] == pytest.approx(1e-3 * step.schedule(r["step"] - 1, STEPS, 5))
        assert r["img_per_s"] > 0 and 0 <= r["data_wait"] <= 1 and math.isfinite(r["grad_norm"])
    assert train[0]["lr"] == 0.0  # the first update uses s(0) = 0
    evals = [r for r in log if "val_top1" in r]
    assert [r["step"] for r in evals] == [5, 10, 12]
    for r in evals:
        for key in ("minival_top1", "val_top1", "real_top1", "v2_top1"):
            assert 0 <= r[key] <= 1
        assert round(r["val_top1"] * 24, 4) == round(r["val_top1"] * 24)  # 24 val images
        assert round(r["real_top1"] * 19, 4) == round(r["real_top1"] * 19)  # 5 empty sets out
    assert (reference / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["final"].keys() == {
        "minival_top1", "val_top1", "real_top1", "v2_top1"}
    # one MFU definition (train/report.py): against a matmul measured in the run, on CPU too
    assert summary["mfu"] > 0 and summary["img_per_s"] > 0
    assert "measured on this device" in summary["peak_source"] and summary["peak_tflops"] > 0
    ckpt = load_checkpoint(reference)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (STEPS, 2, 2)
    assert not list(reference.glob("*.tmp"))


def test_stop_and_resume_is_bit_identical(data, reference, tmp_path, capsys):
    folder = tmp_path / "resumed"
    assert train_vit.main(args(data, folder, "--training.max_steps=7")) == 0
    assert load_checkpoint(folder)["step"] == 7  # epoch 1, batch 2: mid-epoch
    assert "projection to all 12 steps" in capsys.readouterr().out
    assert train_vit.main(args(data, folder)) == 0
    assert "resuming at step 7" in capsys.readouterr().out
    assert_same_state(load_checkpoint(folder), load_checkpoint(reference))
    ours = {r["step"]: r["train_loss"] for r in read_log(folder) if "train_loss" in r}
    theirs = {r["step"]: r["train_loss"] for r in read_log(reference) if "train_loss" in r}
    assert ours == theirs
    assert train_vit.main(args(data, folder)) == 0  # finished: nothing left to do
    assert "nothing left to train" in capsys.readouterr().out


def test_sigterm_checkpoints_then_resume_matches(data, reference, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "preempted"
    step = train_vit.Trainer.train_step

    def preempted_step(self, *batch):
        if self.step == 2:  # a real SIGTERM to this process, in the middle of step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *batch)

    monkeypatch.setattr(train_vit.Trainer, "train_step", preempted_step)
    previous = signal.getsignal(signal.SIGTERM)
    assert train_vit.main(args(data, folder)) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous  # handler restored
    assert "SIGTERM: checkpoint written at step 3" in capsys.readouterr().out
    assert load_checkpoint(folder)["step"] == 3
    monkeypatch.undo()
    assert train_vit.main(args(data, folder)) == 0
    assert_same_state(load_checkpoint(folder), load_checkpoint(reference))


PREEMPTING_LAUNCH = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import train_vit
step = train_vit.Trainer.train_step

def preempted_step(self, *batch):
    if self.step == 3 and self.rank == 0:  # as a scheduler does: SIGTERM to the launcher
        os.kill(os.getppid(), signal.SIGTERM)
        for _ in range(600):  # until torchrun has forwarded it: the run stops after step 4
            if self.sigterm:
                break
            time.sleep(0.05)
    return step(self, *batch)

train_vit.Trainer.train_step = preempted_step
sys.exit(train_vit.main())
"""


def test_sigterm_to_torchrun_checkpoints_then_resume_matches(data, two_ranks, tmp_path):
    """SIGTERM to torchrun (not to a rank): it forwards the signal, both gloo ranks stop at
    the same step with a checkpoint, and the same command resumes to the unbroken run's
    weights and logged losses. The stop at step 4 cuts the log window of steps 1-5: the
    checkpoint carries each rank's sums, so the record at step 5 is the unbroken run's, bit
    for bit. (A signal to a shell around torchrun would reach nobody: seen in
    .ci/gpu_session.sh, where the 'stopped' run had trained to the end.)"""
    folder = tmp_path / "preempted"
    launch = tmp_path / "preempting_launch.py"
    launch.write_text(PREEMPTING_LAUNCH.format(root=str(ROOT)))
    proc = torchrun_two_ranks(data, folder, script=launch)
    assert proc.returncode != 0, proc.stdout[-3000:]
    stopped = re.findall(r"SIGTERM: checkpoint written at step (\d+)", proc.stdout)
    assert stopped == ["4"], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not read_log(folder)  # no record at the stop: the window goes on after the resume
    window = load_checkpoint(folder)["log_window"]
    assert load_checkpoint(folder)["step"] == 4 and window["steps"] == 4
    assert window["sums"].shape == (2, 3) and window["sums"][0, 0] != window["sums"][1, 0]
    proc = torchrun_two_ranks(data, folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming at step {stopped[0]}" in proc.stdout
    unbroken = two_ranks[0]
    assert_same_state(load_checkpoint(folder), load_checkpoint(unbroken))
    losses = [{r["step"]: (r["train_loss"], r["grad_norm"]) for r in read_log(f)
               if "train_loss" in r} for f in (folder, unbroken)]
    assert losses[0] == losses[1] and list(losses[0]) == [5, 6]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, capsys):
    folder = tmp_path / "nan"
    # The loss is checked at log steps and before every checkpoint: with log_every=100 the
    # check before the step-10 checkpoint must catch the NaN from step 7.
    argv = args(data, folder, "--debug.nonfinite_at_step=6", "--logging.log_every=100", evals=False)
    assert train_vit.main(argv) == train_vit.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "between steps 5 and 10" in err
    ckpt = load_checkpoint(folder)
    assert ckpt["step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert [r["step"] for r in read_log(folder)] == [5]  # nothing logged after the NaN


def test_dry_run_of_the_recipe_config(data, tmp_path, capsys):
    """configs/vit_s16_90ep.yaml through the real code path, shrunk to 2 steps."""
    folder = tmp_path / "dry"
    argv = ["-C", str(ROOT / "configs/vit_s16_90ep.yaml"), f"--data.train_dataset={data['train']}",
            f"--data.minival_dataset={data['minival']}", f"--data.val_dataset={data['val']}",
            f"--data.v2_dataset={data['v2']}", "--data.num_workers=2", "--model.variant=mu/8",
            "--model.img_size=32", "--training.batch_size=16", "--eval.batch_size=16",
            "--training.max_steps=2", f"--logging.folder={folder}", "--logging.progress=0"]
    assert train_vit.main(argv) == 0
    out = capsys.readouterr().out
    assert "484 steps, stopping at 2" in out  # round(90 * 86 / 16)
    assert "TPUv3-8 reference" in out and "projection to all 484 steps" in out
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["total_steps"] == 484 and summary["final"].keys() == {
        "minival_top1", "val_top1", "real_top1", "v2_top1"}
    train = [r for r in read_log(folder) if "train_loss" in r]
    assert train[-1]["step"] == 2 and train[-1]["lr"] == pytest.approx(1e-3 * 1 / 10_000)


def torchrun_two_ranks(data, folder, script="train_vit.py"):
    """A 6-step run on 2 gloo ranks through torchrun (a real launcher and its processes),
    logged at the step-5 eval and at the end."""
    argv = args(data, folder, "--data.num_workers=1", "--training.epochs=1.2",
                "--augment.mix_on_device=on", "--logging.log_every=6")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ["NUMBA_CACHE_DIR"], OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory):
    """(folder, finished process) of one unbroken torchrun_two_ranks run."""
    folder = tmp_path_factory.mktemp("two_ranks") / "ddp"
    proc = torchrun_two_ranks(data, folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder, proc


def test_torchrun_two_ranks(data, two_ranks):
    """2 gloo ranks: the run completes, and the logged top-1 (reduced over ranks by
    torchmetrics) equals a recount over both ranks' shards from the final checkpoint."""
    folder, proc = two_ranks
    assert "2 rank(s) on cpu, batch 8/rank" in proc.stdout
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["devices"] == 2
    final = [r for r in read_log(folder) if "val_top1" in r][-1]
    ckpt = load_checkpoint(folder)
    model = vit.ViT("mu/8", num_classes=4, img_size=32)
    model.load_state_dict(ckpt["model"])
    model.eval()
    correct = real_correct = real_total = 0
    threads = torch.get_num_threads()  # ffcv's Loader sets torch's thread count
    for rank in range(2):  # each rank's shard and batch, as the ranks ran them
        loader = Loader(
            str(data["val"]), batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL,
            indices=np.arange(rank, 24, 2), drop_last=False, pipelines={
                "image": [ffcv_ops.EvalDecoder(32, round(32 / 0.875)),
                          ffcv_ops.Normalize(), ToTensor()],
                "label": [IntDecoder(), ToTensor()],
                "real": [NDArrayDecoder(), ToTensor()]})
        train_vit._LOADERS.append(loader)
        for images, labels, real in loader:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                preds = model(images.permute(0, 3, 1, 2)).argmax(-1)
            correct += (preds == labels.view(-1)).sum().item()
            scored = (real >= 0).any(1)
            real_total += scored.sum().item()
            real_correct += ((real.long() == preds[:, None]).any(1) & scored).sum().item()
    torch.set_num_threads(threads)
    assert final["val_top1"] == pytest.approx(correct / 24, abs=1e-6)
    assert final["real_top1"] == pytest.approx(real_correct / real_total, abs=1e-6)


# --- hardening (issue 9) --------------------------------------------------------------------
def strict_log(folder):
    """log.jsonl parsed by a strict JSON parser: a bare NaN or Infinity fails the test."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return [json.loads(line, parse_constant=refuse)
            for line in (folder / "log.jsonl").read_text().splitlines()]


def all_finite(ckpt):
    tensors = list(ckpt["model"].values()) + [v for s in ckpt["optimizer"]["state"].values()
                                               for v in s.values()]
    return all(torch.isfinite(t.float()).all() for t in tensors)


def test_lr_1e38_never_checkpoints_nonfinite_weights(data, tmp_path, capsys):
    """The issue's case: lr=1e38 leaves weights of 2e37 (finite) whose next forward is NaN,
    while the loss of that step, computed before the update, is still finite. The step-2
    checkpoint must not be written; step 1's stays, the error says so (no checkpoint.prev.pt
    exists yet, the run is fp32: no fp32 advice), and it resumes with a sane lr."""
    folder = tmp_path / "lr1e38"
    argv = args(data, folder, "--training.precision=fp32", "--logging.checkpoint_every=1",
                "--logging.log_every=100", evals=False)
    assert train_vit.main(argv + ["--optimizer.lr=1e38"]) == train_vit.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "non-finite values at step 2 in the model's outputs on a training batch" in err
    assert f"The last good state is {folder / 'checkpoint.pt'} (step 1)" in err
    assert "a lower --optimizer.lr (now 1e+38)" in err
    assert "precision=fp32" not in err and "checkpoint.prev.pt" not in err
    ckpt = load_checkpoint(folder)
    assert ckpt["step"] == 1 and all_finite(ckpt)
    assert not (folder / "checkpoint.prev.pt").exists()
    assert train_vit.main(argv) == 0  # the same command with a lower lr resumes from step 1
    assert "resuming at step 1" in capsys.readouterr().out
    assert load_checkpoint(folder)["step"] == STEPS and all_finite(load_checkpoint(folder))


def test_previous_checkpoint_kept_and_nan_eval_logged_as_null(data, reference, tmp_path, capsys):
    """checkpoint.prev.pt keeps the checkpoint before the latest; a NaN eval loss (lr=1e38
    from step 4 on) is logged as null with a flag, stops the run before its checkpoint, and
    the error names both files; going back to checkpoint.prev.pt as it says ends
    bit-identical to the unbroken reference run."""
    folder = tmp_path / "prev"
    assert train_vit.main(args(data, folder, "--training.max_steps=4",
                               "--logging.checkpoint_every=2")) == 0
    assert (checkpoints.step_of(folder / "checkpoint.pt"),
            checkpoints.step_of(folder / "checkpoint.prev.pt")) == (4, 2)
    capsys.readouterr()
    argv = args(data, folder, "--optimizer.lr=1e38", "--logging.log_every=100")
    assert train_vit.main(argv) == train_vit.EXIT_NONFINITE
    err = capsys.readouterr().err
    current, previous = folder / "checkpoint.pt", folder / "checkpoint.prev.pt"
    assert "non-finite eval loss at step 5 (minival_loss" in err
    assert f"The last good state is {current} (step 4)" in err
    assert "or with --training.precision=fp32" in err  # a bf16 run
    assert f"{previous} holds step 2; to resume from there instead: mv {previous} {current}" in err
    assert all_finite(torch.load(current, weights_only=True))
    assert all_finite(torch.load(previous, weights_only=True))
    log = strict_log(folder)
    nan_eval = [r for r in log if r["step"] == 5 and "minival_loss" in r][0]
    assert nan_eval["minival_loss"] is None and "minival_loss" in nan_eval["nonfinite"]
    os.replace(previous, current)  # the mv the error gives
    assert train_vit.main(args(data, folder)) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert_same_state(load_checkpoint(folder), load_checkpoint(reference))
    assert checkpoints.step_of(folder / "checkpoint.prev.pt") == 10


def _cut(path, keep):
    content = path.read_bytes()
    path.write_bytes(content[:keep(len(content))])


@pytest.mark.parametrize("case", ["half_beton", "beton_without_last_kb", "empty_beton",
                                  "half_checkpoint", "empty_checkpoint", "empty_checkpoint_alone",
                                  "other_model", "overflowing_checkpoint"])
def test_unusable_files_are_named_before_training(case, data, reference, tmp_path, capsys):
    """A cut-short or empty .beton or checkpoint.pt, a checkpoint of another model, or one
    whose finite weights overflow (as the previous code could write): a configuration error
    naming the file (or setting) and what to do, before any training step."""
    folder = tmp_path / "run"
    extra = []
    if case.endswith("beton") or "beton_" in case:
        beton = tmp_path / "train.beton"
        beton.write_bytes(data["train"].read_bytes())
        (tmp_path / "train.beton.json").write_bytes(Path(f"{data['train']}.json").read_bytes())
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
    assert train_vit.main(args(data, folder, *extra, evals=False)) == train_vit.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "configuration error" in err and all(m in err for m in message), err
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else []) == before


def test_settings_bounded_and_no_prefix_matching(data, tmp_path, capsys):
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
        assert train_vit.main(args(data, folder, flag, evals=False)) == train_vit.EXIT_CONFIG
        err = capsys.readouterr().err
        assert "configuration error" in err and message in err, (flag, err)
    assert not folder.exists()
    assert train_vit.parse_config(args(data, folder, "--optimizer.lr=1e38"))["optimizer.lr"] == 1e38


@pytest.fixture(scope="module")
def short_run(data, tmp_path_factory):
    """A 4-step run with lr=0 (the loss stays ln(4)) and the progress bar on; its folder and
    everything it printed. The warmup (5 steps) outlasts it; STUCK_STEPS is lowered to 3."""
    import contextlib
    import io
    folder = tmp_path_factory.mktemp("short")
    out, err = io.StringIO(), io.StringIO()
    stuck, train_vit.STUCK_STEPS = train_vit.STUCK_STEPS, 3
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train_vit.main(args(data, folder, "--optimizer.lr=0", "--training.max_steps=4",
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


def test_warns_when_a_set_is_not_stored_faithfully(data, tmp_path, capsys):
    """write_ffcv's raw/jpg/proportion storage changes the pixels: the trainer says so at
    start for each such set, and not for the default (original bytes)."""
    raw = tmp_path / "train_raw.beton"
    write_ffcv.convert(Path(data["train"]).parent / "train", raw, "train", write_mode="raw",
                       num_workers=1, progress=False, minival_fraction=0.1)
    assert train_vit.main(args(data, tmp_path / "run", f"--data.train_dataset={raw}",
                               "--training.max_steps=1", evals=False)) == 0
    err = capsys.readouterr().err
    assert f"warning: {raw} is stored write_mode=raw" in err and "train pixels differ" in err
    assert train_vit.main(args(data, tmp_path / "run2", "--training.max_steps=1",
                               evals=False)) == 0
    assert "differ from the reference" not in capsys.readouterr().err


def test_device_augmentation_trains_the_same_run(data, tmp_path):
    """augment.where=device (the images' bytes decoded and augmented by the device kernels,
    here their CPU twin) trains the same run as the CPU pipeline with mixing on the device:
    the same losses, gradient norms and final weights, bit for bit."""
    runs = {}
    for where in ("cpu", "device"):
        folder = tmp_path / where
        assert train_vit.main(args(data, folder, "--augment.mix_on_device=on",
                                   f"--augment.where={where}", "--training.max_steps=6",
                                   evals=False)) == 0
        runs[where] = folder
    train = [[(r["train_loss"], r["grad_norm"]) for r in read_log(runs[w]) if "train_loss" in r]
             for w in runs]
    assert len(train[0]) == 6 and train[0] == train[1]
    assert_same_state(load_checkpoint(runs["cpu"]), load_checkpoint(runs["device"]))


# --- using a trained model: eval_vit.py and predict.py ----------------------------------------
def test_eval_vit_scores_a_run_as_the_trainer_did(data, reference, capsys):
    """eval_vit.py on the run folder gives the final eval's top-1s of the run's own log, and
    the checkpoint carries the class list."""
    import eval_vit
    from vit_speedrun.train.checkpoints import load_model
    _, classes, _ = load_model(reference)
    assert classes == write_ffcv.read_sidecar(data["train"])["classes"]
    final = [r for r in read_log(reference) if "val_top1" in r][-1]
    assert eval_vit.main([str(reference), "--minival", str(data["minival"]), "--val",
                          str(data["val"]), "--real", "--v2", str(data["v2"]),
                          "--batch-size", "16", "--workers", "2"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("RESULT")}
    for name in ("minival", "val", "real", "v2"):
        shown = float(lines[name].split("top-1 ")[1].split("%")[0]) / 100
        assert shown == pytest.approx(final[f"{name}_top1"], abs=5e-5), (name, lines[name])
    assert eval_vit.main([str(reference), "--val", str(data["other"])]) == 2
    assert "classes are not the model's" in capsys.readouterr().err


def test_predict_preprocesses_as_the_eval_and_prints_top_classes(data, reference, capsys):
    """predict.py's input for an image file is the eval loader's for the same image, value
    for value; it prints the top classes by wnid, most probable first."""
    import predict
    files = sorted(Path(data["val"]).parent.glob("val/*/*.jpg"))
    loader = Loader(str(data["val"]), batch_size=len(files), num_workers=1,
                    order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [ffcv_ops.EvalDecoder(32, round(32 / 0.875)),
                                         ffcv_ops.Normalize()], "label": None})
    train_vit._LOADERS.append(loader)
    want = np.asarray(next(iter(loader))[0])
    assert len(files) == len(want) == 24
    for path, image in zip(files, want):
        got = predict.preprocess(path, 32, 0.875).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, image, err_msg=str(path))
    assert predict.main([str(reference), str(files[0]), str(files[-1].parent), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 6 and out[0].startswith(f"{files[0]}: n0000")
    probs = [float(x.split()[-1][:-1]) for x in out[0].split(": ", 1)[1].split("; ")]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert predict.main([str(reference), "no/such/file.jpg"]) == 2


# --- SLURM: srun's tasks instead of torchrun's ranks ------------------------------------------
def test_slurm_tasks_train_the_same_run_as_torchrun(data, two_ranks, tmp_path):
    """Two processes started as srun starts its tasks (SLURM_PROCID/NTASKS/LOCALID,
    MASTER_ADDR, no torchrun variables) train torchrun_two_ranks' run: the same weights."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "slurm"
    argv = args(data, folder, "--data.num_workers=1", "--training.epochs=1.2",
                "--augment.mix_on_device=on", "--logging.log_every=6")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "TORCHELASTIC", "MASTER_"))}
    procs = [subprocess.Popen(
        [sys.executable, "train_vit.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env=dict(base, SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                 SLURM_JOB_ID="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                 OMP_NUM_THREADS="1")) for r in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "2 rank(s) on cpu, batch 8/rank" in outs[0]
    assert_same_state(load_checkpoint(folder), load_checkpoint(two_ranks[0]))


def test_slurm_without_master_addr_says_what_to_set(data, tmp_path, capsys, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert train_vit.main(args(data, tmp_path / "run")) == train_vit.EXIT_CONFIG
    assert "export MASTER_ADDR=$(scontrol show hostnames" in capsys.readouterr().err


# --- gradient accumulation ------------------------------------------------------------------
def _accum_args(data, folder, *extra):
    return args(data, folder, "--data.num_workers=1", "--training.epochs=1.2",
                "--augment.mix_on_device=on", "--logging.log_every=1", "--training.grad_accum=2",
                *extra)


def test_grad_accum_batches_are_the_ranks_batches(data):
    """The data of accumulation: with grad_accum=2, one process's micro-batches of step s
    are, in turn, the s-th batches of 2 ranks, images and two-hot labels bit for bit (the
    same samples, augmentations, mixup coefficient and pairs)."""
    def batches(rank, world, accum):
        clock = ffcv_ops.AugmentClock(5, accum)
        pipes = ffcv_ops.train_pipelines(clock, res=32, num_classes=4)
        ld = Loader(str(data["train"]), batch_size=8, num_workers=1, seed=5,
                    order=loaders.ResumableOrder(rank, world, accum), pipelines=pipes)
        train_vit._LOADERS.append(ld)
        return [(np.asarray(x).copy(), np.asarray(y).copy())
                for x, y in loaders.epoch_iterator(ld, clock, 1, first_batch=2 * accum)]
    ranks = [batches(r, 2, 1) for r in range(2)]
    accum = batches(0, 1, 2)
    assert len(accum) == 2 * len(ranks[0]) == 6   # epoch 1 from step 2: steps 2, 3, 4
    for s in range(3):
        for j in range(2):
            for a, b in zip(accum[2 * s + j], ranks[j][s]):
                np.testing.assert_array_equal(a, b, err_msg=f"step {s + 2}, rank {j}")


def test_grad_accum_on_one_process_equals_two_ranks(data, two_ranks, tmp_path):
    """training.grad_accum=2 on one process (micro-batches of 8) trains the run of
    torchrun_two_ranks (2 ranks of 8): the same samples, mixup coefficients and pairs, the
    same losses and gradient norms, and the same weights, to float rounding (the gradients
    are summed in another order)."""
    folder = tmp_path / "accum"
    assert train_vit.main(_accum_args(data, folder)) == 0
    mine = {r["step"]: r for r in read_log(folder) if "train_loss" in r}
    ranks = [r for r in read_log(two_ranks[0]) if "train_loss" in r]
    assert sorted(mine) == [1, 2, 3, 4, 5, 6] and [r["step"] for r in ranks] == [5, 6]
    for record, steps in zip(ranks, ([1, 2, 3, 4, 5], [6])):   # its windows: 1-5, 6
        for key, rel in (("train_loss", 1e-6), ("grad_norm", 1e-5)):
            mean = sum(mine[s][key] for s in steps) / len(steps)
            assert mean == pytest.approx(record[key], rel=rel), (key, steps)
    a, b = load_checkpoint(folder), load_checkpoint(two_ranks[0])
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)


def test_grad_accum_resumes_exactly(data, tmp_path):
    """Stopped at step 3 and resumed, an accumulating run ends bit for bit as an unbroken
    one (the loader restarts at the step's first micro-batch, the mixup ordinals with it)."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_vit.main(_accum_args(data, whole)) == 0
    assert train_vit.main(_accum_args(data, parts, "--training.max_steps=3")) == 0
    assert train_vit.main(_accum_args(data, parts)) == 0
    assert_same_state(load_checkpoint(parts), load_checkpoint(whole))
    assert [r["train_loss"] for r in read_log(parts) if "train_loss" in r][-3:] == \
        [r["train_loss"] for r in read_log(whole) if "train_loss" in r][-3:]


def test_grad_accum_must_divide_the_batch(data, tmp_path, capsys):
    assert train_vit.main(args(data, tmp_path / "x", "--training.grad_accum=3")) == \
        train_vit.EXIT_CONFIG
    assert "does not split the batch of 16 per rank" in capsys.readouterr().err


def test_grad_accum_over_two_ranks_equals_four_micro_batches_on_one(data, tmp_path):
    """DDP with accumulation (2 torchrun ranks x 2 micro-batches of 4) trains the run of one
    process with 4 micro-batches of 4: both are the batch of 4 virtual ranks."""
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    extra = ("--data.num_workers=1", "--training.epochs=1.2", "--augment.mix_on_device=on",
             "--logging.log_every=6")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ["NUMBA_CACHE_DIR"], OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "train_vit.py",
                           *args(data, ddp, *extra, "--training.grad_accum=2", evals=False)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert train_vit.main(args(data, one, *extra, "--training.grad_accum=4", evals=False)) == 0
    a, b = load_checkpoint(ddp), load_checkpoint(one)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
