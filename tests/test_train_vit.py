"""train_vit.py's runs on CPU with real .beton files, the real ffcv Loader and real
torchrun (tiny_runs.py: the data, the model and the reference runs): the log, checkpoints and
summary; resume and preemption, bit-identical to an unbroken run; the non-finite stops; 2
ranks under torchrun and SLURM; gradient accumulation; the device augmentation's CPU twin.
"""
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.ndarray import NDArrayDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToTensor
import torch

from vit_speedrun.train import checkpoints
from vit_speedrun.pp import ffcv_ops
from vit_speedrun.train import loaders
from vit_speedrun.train.step import schedule
import train_vit
from vit_speedrun.models import vit
from conftest import ROOT
from tiny_runs import (STEPS, args, assert_same_state, load_checkpoint, read_log, strict_log,
                       torchrun_two_ranks)


def test_resumable_order_skips_whole_batches(splits):
    """Starting at batch k = the full epoch's batches from k on; ranks partition the data."""
    def loader(rank, world, batch):
        order = loaders.ResumableOrder(rank, world)
        train_vit._LOADERS.append(Loader(  # kept alive: see loaders.LOADERS
            str(splits["train"]), batch_size=batch, num_workers=1, order=order, seed=3,
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


# --- runs -----------------------------------------------------------------------------------
def test_log_checkpoint_plot_and_summary(reference):
    config = json.loads((reference / "config.json").read_text())
    assert config["model.variant"] == "mu/8" and config["optimizer.lr"] == 1e-3
    log = read_log(reference)
    train = [r for r in log if "train_loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:  # real numbers, not null (ffcv-imagenet logged null for years)
        assert isinstance(r["train_loss"], float) and 0 < r["train_loss"] < 10
        assert r["lr"] == pytest.approx(1e-3 * schedule(r["step"] - 1, STEPS, 5))
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


def test_stop_and_resume_is_bit_identical(splits, reference, tmp_path, capsys):
    folder = tmp_path / "resumed"
    assert train_vit.main(args(splits, folder, "--training.max_steps=7")) == 0
    assert load_checkpoint(folder)["step"] == 7  # epoch 1, batch 2: mid-epoch
    assert "projection to all 12 steps" in capsys.readouterr().out
    assert train_vit.main(args(splits, folder)) == 0
    assert "resuming at step 7" in capsys.readouterr().out
    assert_same_state(load_checkpoint(folder), load_checkpoint(reference))
    ours = {r["step"]: r["train_loss"] for r in read_log(folder) if "train_loss" in r}
    theirs = {r["step"]: r["train_loss"] for r in read_log(reference) if "train_loss" in r}
    assert ours == theirs
    assert train_vit.main(args(splits, folder)) == 0  # finished: nothing left to do
    assert "nothing left to train" in capsys.readouterr().out


def test_sigterm_checkpoints_then_resume_matches(splits, reference, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "preempted"
    step = train_vit.Trainer.train_step

    def preempted_step(self, *batch):
        if self.step == 2:  # a real SIGTERM to this process, in the middle of step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *batch)

    monkeypatch.setattr(train_vit.Trainer, "train_step", preempted_step)
    previous = signal.getsignal(signal.SIGTERM)
    assert train_vit.main(args(splits, folder)) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous  # handler restored
    assert "SIGTERM: checkpoint written at step 3" in capsys.readouterr().out
    assert load_checkpoint(folder)["step"] == 3
    monkeypatch.undo()
    assert train_vit.main(args(splits, folder)) == 0
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


def test_sigterm_to_torchrun_checkpoints_then_resume_matches(splits, two_ranks, tmp_path):
    """SIGTERM to torchrun (not to a rank): it forwards the signal, both gloo ranks stop at
    the same step with a checkpoint, and the same command resumes to the unbroken run's
    weights and logged losses. The stop at step 4 cuts the log window of steps 1-5: the
    checkpoint carries each rank's sums, so the record at step 5 is the unbroken run's, bit
    for bit. (A signal to a shell around torchrun would reach nobody: seen in
    .ci/gpu_session.sh, where the 'stopped' run had trained to the end.)"""
    folder = tmp_path / "preempted"
    launch = tmp_path / "preempting_launch.py"
    launch.write_text(PREEMPTING_LAUNCH.format(root=str(ROOT)))
    proc = torchrun_two_ranks(splits, folder, script=launch)
    assert proc.returncode != 0, proc.stdout[-3000:]
    stopped = re.findall(r"SIGTERM: checkpoint written at step (\d+)", proc.stdout)
    assert stopped == ["4"], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not read_log(folder)  # no record at the stop: the window goes on after the resume
    window = load_checkpoint(folder)["log_window"]
    assert load_checkpoint(folder)["step"] == 4 and window["steps"] == 4
    assert window["sums"].shape == (2, 3) and window["sums"][0, 0] != window["sums"][1, 0]
    proc = torchrun_two_ranks(splits, folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming at step {stopped[0]}" in proc.stdout
    unbroken = two_ranks[0]
    assert_same_state(load_checkpoint(folder), load_checkpoint(unbroken))
    losses = [{r["step"]: (r["train_loss"], r["grad_norm"]) for r in read_log(f)
               if "train_loss" in r} for f in (folder, unbroken)]
    assert losses[0] == losses[1] and list(losses[0]) == [5, 6]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(splits, tmp_path, capsys):
    folder = tmp_path / "nan"
    # The loss is checked at log steps and before every checkpoint: with log_every=100 the
    # check before the step-10 checkpoint must catch the NaN from step 7.
    argv = args(splits, folder, "--debug.nonfinite_at_step=6", "--logging.log_every=100", evals=False)
    assert train_vit.main(argv) == train_vit.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "between steps 5 and 10" in err
    ckpt = load_checkpoint(folder)
    assert ckpt["step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert [r["step"] for r in read_log(folder)] == [5]  # nothing logged after the NaN


def test_dry_run_of_the_recipe_config(splits, tmp_path, capsys):
    """configs/vit_s16_90ep.yaml through the real code path, shrunk to 2 steps."""
    folder = tmp_path / "dry"
    argv = ["-C", str(ROOT / "configs/vit_s16_90ep.yaml"), f"--data.train_dataset={splits['train']}",
            f"--data.minival_dataset={splits['minival']}", f"--data.val_dataset={splits['val']}",
            f"--data.v2_dataset={splits['v2']}", "--data.num_workers=2", "--model.variant=mu/8",
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


def test_torchrun_two_ranks(splits, two_ranks):
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
            str(splits["val"]), batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL,
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


# --- non-finite values (issue 9) -----------------------------------------------------------
def all_finite(ckpt):
    tensors = list(ckpt["model"].values()) + [v for s in ckpt["optimizer"]["state"].values()
                                               for v in s.values()]
    return all(torch.isfinite(t.float()).all() for t in tensors)


def test_lr_1e38_never_checkpoints_nonfinite_weights(splits, tmp_path, capsys):
    """The issue's case: lr=1e38 leaves weights of 2e37 (finite) whose next forward is NaN,
    while the loss of that step, computed before the update, is still finite. The step-2
    checkpoint must not be written; step 1's stays, the error says so (no checkpoint.prev.pt
    exists yet, the run is fp32: no fp32 advice), and it resumes with a sane lr."""
    folder = tmp_path / "lr1e38"
    argv = args(splits, folder, "--training.precision=fp32", "--logging.checkpoint_every=1",
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


def test_previous_checkpoint_kept_and_nan_eval_logged_as_null(splits, reference, tmp_path, capsys):
    """checkpoint.prev.pt keeps the checkpoint before the latest; a NaN eval loss (lr=1e38
    from step 4 on) is logged as null with a flag, stops the run before its checkpoint, and
    the error names both files; going back to checkpoint.prev.pt as it says ends
    bit-identical to the unbroken reference run."""
    folder = tmp_path / "prev"
    assert train_vit.main(args(splits, folder, "--training.max_steps=4",
                               "--logging.checkpoint_every=2")) == 0
    assert (checkpoints.step_of(folder / "checkpoint.pt"),
            checkpoints.step_of(folder / "checkpoint.prev.pt")) == (4, 2)
    capsys.readouterr()
    argv = args(splits, folder, "--optimizer.lr=1e38", "--logging.log_every=100")
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
    assert train_vit.main(args(splits, folder)) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert_same_state(load_checkpoint(folder), load_checkpoint(reference))
    assert checkpoints.step_of(folder / "checkpoint.prev.pt") == 10


def test_device_augmentation_trains_the_same_run(splits, tmp_path):
    """augment.where=device (the images' bytes decoded and augmented by the device kernels,
    here their CPU twin) trains the same run as the CPU pipeline with mixing on the device:
    the same losses, gradient norms and final weights, bit for bit."""
    runs = {}
    for where in ("cpu", "device"):
        folder = tmp_path / where
        assert train_vit.main(args(splits, folder, "--augment.mix_on_device=on",
                                   f"--augment.where={where}", "--training.max_steps=6",
                                   evals=False)) == 0
        runs[where] = folder
    train = [[(r["train_loss"], r["grad_norm"]) for r in read_log(runs[w]) if "train_loss" in r]
             for w in runs]
    assert len(train[0]) == 6 and train[0] == train[1]
    assert_same_state(load_checkpoint(runs["cpu"]), load_checkpoint(runs["device"]))


# --- SLURM: srun's tasks instead of torchrun's ranks ------------------------------------------
def test_slurm_tasks_train_the_same_run_as_torchrun(splits, two_ranks, tmp_path):
    """Two processes started as srun starts its tasks (SLURM_PROCID/NTASKS/LOCALID,
    MASTER_ADDR, no torchrun variables) train torchrun_two_ranks' run: the same weights."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "slurm"
    argv = args(splits, folder, "--data.num_workers=1", "--training.epochs=1.2",
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


def test_slurm_without_master_addr_says_what_to_set(splits, tmp_path, capsys, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert train_vit.main(args(splits, tmp_path / "run")) == train_vit.EXIT_CONFIG
    assert "export MASTER_ADDR=$(scontrol show hostnames" in capsys.readouterr().err


# --- gradient accumulation ------------------------------------------------------------------
def _accum_args(splits, folder, *extra):
    return args(splits, folder, "--data.num_workers=1", "--training.epochs=1.2",
                "--augment.mix_on_device=on", "--logging.log_every=1", "--training.grad_accum=2",
                *extra)


def test_grad_accum_batches_are_the_ranks_batches(splits):
    """The data of accumulation: with grad_accum=2, one process's micro-batches of step s
    are, in turn, the s-th batches of 2 ranks, images and two-hot labels bit for bit (the
    same samples, augmentations, mixup coefficient and pairs)."""
    def batches(rank, world, accum):
        clock = ffcv_ops.AugmentClock(5, accum)
        pipes = ffcv_ops.train_pipelines(clock, res=32, num_classes=4)
        ld = Loader(str(splits["train"]), batch_size=8, num_workers=1, seed=5,
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


def test_grad_accum_on_one_process_equals_two_ranks(splits, two_ranks, tmp_path):
    """training.grad_accum=2 on one process (micro-batches of 8) trains the run of
    torchrun_two_ranks (2 ranks of 8): the same samples, mixup coefficients and pairs, the
    same losses and gradient norms, and the same weights, to float rounding (the gradients
    are summed in another order)."""
    folder = tmp_path / "accum"
    assert train_vit.main(_accum_args(splits, folder)) == 0
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


def test_grad_accum_resumes_exactly(splits, tmp_path):
    """Stopped at step 3 and resumed, an accumulating run ends bit for bit as an unbroken
    one (the loader restarts at the step's first micro-batch, the mixup ordinals with it)."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_vit.main(_accum_args(splits, whole)) == 0
    assert train_vit.main(_accum_args(splits, parts, "--training.max_steps=3")) == 0
    assert train_vit.main(_accum_args(splits, parts)) == 0
    assert_same_state(load_checkpoint(parts), load_checkpoint(whole))
    assert [r["train_loss"] for r in read_log(parts) if "train_loss" in r][-3:] == \
        [r["train_loss"] for r in read_log(whole) if "train_loss" in r][-3:]


def test_grad_accum_must_divide_the_batch(splits, tmp_path, capsys):
    assert train_vit.main(args(splits, tmp_path / "x", "--training.grad_accum=3")) == \
        train_vit.EXIT_CONFIG
    assert "does not split the batch of 16 per rank" in capsys.readouterr().err


def test_grad_accum_over_two_ranks_equals_four_micro_batches_on_one(splits, tmp_path):
    """DDP with accumulation (2 torchrun ranks x 2 micro-batches of 4) trains the run of one
    process with 4 micro-batches of 4: both are the batch of 4 virtual ranks."""
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    extra = ("--data.num_workers=1", "--training.epochs=1.2", "--augment.mix_on_device=on",
             "--logging.log_every=6")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ["NUMBA_CACHE_DIR"], OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "train_vit.py",
                           *args(splits, ddp, *extra, "--training.grad_accum=2", evals=False)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert train_vit.main(args(splits, one, *extra, "--training.grad_accum=4", evals=False)) == 0
    a, b = load_checkpoint(ddp), load_checkpoint(one)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
