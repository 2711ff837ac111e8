"""Checkpoints of train_vit.py: what one holds, how it is written and kept, how it is
checked before it is written and before it is resumed.

What is in a checkpoint (one torch.save file; tensors and plain containers only, so that
torch.load(weights_only=True) reads it):
    model                      the model's state_dict (the raw model: no DDP/compile prefixes)
    optimizer                  AdamW's state_dict: per parameter its step and both moments
    step                       optimizer steps taken; the schedule and the data follow from it
    epoch, batch_in_epoch      the train loader's position: whole passes over the data of
                               steps_per_epoch batches each, and the batch within the pass
    steps_per_epoch, world_size   the data layout it was written with (a change is warned of)
    train_time                 seconds spent in training steps, summed over resumed sessions
    config                     every setting (the dict of config.json)
    classes                    the train set's class list (wnids), in label order
    rng                        torch, numpy and python generator states (and cuda's on a GPU)
    log_window                 only when SIGTERM stopped the run between log steps: the open
                               log window's steps and each rank's sums (loss, grad norm,
                               non-finite count), so that the resumed run's next record equals
                               an unbroken run's (carried on when the ranks are the same)

What is in logging.folder:
    checkpoint.pt              the latest good state
    checkpoint.prev.pt         the good state before it
    *.tmp                      a write that did not finish (ignored; the next save replaces it)

Guarantees:
- Only a good state is written: every tensor of the model and of the optimizer finite, and
  the model's outputs on a real training batch finite. Finite weights alone prove nothing:
  weights of 1e37 are finite, overflow in the first layer, and resume into NaN forever.
- Rotation never leaves the folder without a good checkpoint: the new state is written and
  fsynced under a temporary name; then the current file gets a second name (a hard link, or
  a copy where the filesystem has none) that is renamed over checkpoint.prev.pt; then the
  temporary file is renamed over checkpoint.pt. Each rename is atomic, so a kill at any
  moment leaves checkpoint.pt complete (once the first was written) and checkpoint.prev.pt
  complete (once the second was).
- Resuming checks the file before anything is trained: readable (an empty or cut-short file
  is named, with the previous checkpoint to go back to), written for the same model (the
  differing model.* setting is named), tensors of the right shapes and finite; and, on the
  first batch, before the first update, the model's outputs (train_vit.py calls nonfinite).
"""
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

CURRENT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"


class CheckpointError(Exception):
    """A checkpoint cannot be resumed; the message names the file and what to do."""


def capture(model, optimizer, *, step, steps_per_epoch, world_size, train_time, config, device,
            log_window=None, classes=None):
    """The state of a run as a checkpoint dict (the fields listed in the module docstring)."""
    epoch, batch = divmod(step, steps_per_epoch)
    np_state, py_state = np.random.get_state(), random.getstate()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "step": step, "epoch": epoch, "batch_in_epoch": batch,
             "steps_per_epoch": steps_per_epoch, "world_size": world_size,
             "train_time": train_time, "config": config, "classes": list(classes or []),
             "rng": {"torch": torch.get_rng_state(),
                     "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
                     "numpy_rest": list(np_state[2:]),
                     "python": [py_state[0], list(py_state[1])]}}
    if device.type == "cuda":
        state["rng"]["cuda"] = torch.cuda.get_rng_state()
    if log_window is not None:
        state["log_window"] = log_window
    return state


@torch.no_grad()
def nonfinite(model, optimizer, probe, precision):
    """What in the live state is not finite, as phrases for an error ([] = good to save).

    Checks the model's parameters and buffers, the optimizer's moments, and the model's
    outputs on `probe` (a few real training images; None skips it) in the run's precision:
    the loss of a step is computed before that step's update, so a finite loss does not
    prove the weights it leaves behind are usable."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = [(f"weight {n}", t) for n, t in model.state_dict().items() if t.is_floating_point()]
    for p, state in optimizer.state.items():
        tensors += [(f"optimizer {k} of {names.get(id(p), '?')}", v) for k, v in state.items()
                    if torch.is_tensor(v) and v.is_floating_point() and k != "step"]
    flags = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()
    bad = [name for (name, _), ok in zip(tensors, flags) if not ok]
    if not bad and probe is not None:
        training = model.training
        model.eval()
        with torch.autocast(probe.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            finite = torch.isfinite(model(probe)).all().item()
        model.train(training)
        if not finite:
            largest = max(p.abs().max().item() for p in model.parameters())
            bad.append(f"the model's outputs on a training batch (weights up to {largest:.3g})")
    return bad


def save(state, folder):
    """Write `state` as folder/checkpoint.pt and keep the file it replaces as
    checkpoint.prev.pt, in the order that keeps a good checkpoint on disk at every moment
    (module docstring). The caller checks the state with nonfinite() first."""
    folder = Path(folder)
    current, previous = folder / CURRENT, folder / PREVIOUS
    tmp = folder / (CURRENT + ".tmp")
    _write(tmp, lambda f: torch.save(state, f))
    if current.exists():
        prev_tmp = folder / (PREVIOUS + ".tmp")
        prev_tmp.unlink(missing_ok=True)
        try:
            os.link(current, prev_tmp)  # a second name for the same bytes: nothing copied
        except OSError:  # a filesystem without hard links
            with open(current, "rb") as source:
                _write(prev_tmp, lambda f: shutil.copyfileobj(source, f))
        os.replace(prev_tmp, previous)
    os.replace(tmp, current)
    _fsync_dir(folder)


def _write(path, write):
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder):
    """Make the renames durable (a power cut after save() returns keeps them)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_of(path):
    """The step a checkpoint file holds, or None if it is missing or unreadable. Reads only
    the small entries (the tensors are memory-mapped, not read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # missing, empty, cut short, not a checkpoint: all mean "none here"
        return None


def where_to_resume(folder, lr, precision):
    """For a run stopped by non-finite values: which file holds the last good state and the
    exact way to resume from it (or that there is none)."""
    folder = Path(folder)
    current, previous = folder / CURRENT, folder / PREVIOUS
    lower = f"a lower --optimizer.lr (now {lr:g})" + (
        " or with --training.precision=fp32" if precision == "bf16" else "")
    step, prev_step = step_of(current), step_of(previous)
    if step is None:
        return (f"No checkpoint was written before this ({current} does not exist): nothing "
                f"to resume. Start again with {lower}, or check the data.")
    text = (f"The last good state is {current} (step {step:,}): run the same command with "
            f"{lower} to resume from it, or check the data.")
    if prev_step is not None:
        text += (f" {previous} holds step {prev_step:,}; to resume from there instead: "
                 f"mv {previous} {current}")
    return text


def go_back(folder):
    """What to do when folder/checkpoint.pt cannot be resumed."""
    current, previous = Path(folder) / CURRENT, Path(folder) / PREVIOUS
    prev_step = step_of(previous)
    if prev_step is None:
        return (f"There is no usable {previous.name} to go back to: move {current} away to "
                f"start the run over.")
    return (f"{previous} holds the checkpoint before it (step {prev_step:,}): "
            f"`mv {previous} {current}` and run the same command to resume from there.")


def resume(folder, model, optimizer, config, world_size, device):
    """Load folder/checkpoint.pt into model and optimizer and restore the RNG states. Returns
    (state, warnings), or (None, []) when the folder holds no checkpoint. Raises
    CheckpointError, before anything is loaded, when the file cannot be resumed."""
    folder = Path(folder)
    current, previous = folder / CURRENT, folder / PREVIOUS
    if not current.exists():
        if previous.exists():
            raise CheckpointError(f"{previous} exists but {current} does not (deleted?): "
                                  f"`mv {previous} {current}` to resume from it, or move it "
                                  f"away to start the run over.")
        return None, []
    try:
        ckpt = torch.load(current, map_location="cpu", weights_only=True)
        ckpt["model"], ckpt["optimizer"], ckpt["step"], ckpt["config"]
    except Exception as e:
        raise CheckpointError(
            f"{current} is not a readable checkpoint ({current.stat().st_size:,} bytes; "
            f"{type(e).__name__}: {str(e)[:120]}): empty or cut short (a full disk, a partial "
            f"copy). {go_back(folder)}") from None
    differ = {k: (v, config.get(k)) for k, v in ckpt["config"].items()
              if k.startswith("model.") and config.get(k) != v}
    if differ:
        raise CheckpointError(
            f"{current} was written for another model: "
            + ", ".join(f"{k}={then!r} there, {now!r} here" for k, (then, now) in differ.items())
            + ". Resume with the checkpoint's settings ("
            + " ".join(f"--{k}={then}" for k, (then, _) in differ.items())
            + ") or use another logging.folder for this model.")
    here = model.state_dict()
    for key in sorted(set(here) | set(ckpt["model"])):
        if key not in here or key not in ckpt["model"] or here[key].shape != ckpt["model"][key].shape:
            shape = lambda sd: list(sd[key].shape) if key in sd else "absent"  # noqa: E731
            raise CheckpointError(
                f"{current} does not fit this model: {key} is {shape(ckpt['model'])} there and "
                f"{shape(here)} here (the head's size is the number of classes of "
                f"data.train_dataset). Use another logging.folder for this run.")
    bad = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not v.isfinite().all()]
    bad += [f"optimizer {k} of parameter {i}" for i, s in ckpt["optimizer"]["state"].items()
            for k, v in s.items() if torch.is_tensor(v) and not v.float().isfinite().all()]
    if bad:
        raise CheckpointError(f"{current} holds non-finite values ({', '.join(bad[:3])}): it "
                              f"cannot be resumed. {go_back(folder)}")
    model.load_state_dict(ckpt["model"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:
        raise CheckpointError(f"{current}: its optimizer state does not fit this run ({e}). "
                              f"Use another logging.folder for this run.") from None
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), *rng["numpy_rest"]))
    random.setstate((rng["python"][0], tuple(rng["python"][1]), None))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    warnings = []
    changed = {k: (v, ckpt["config"].get(k)) for k, v in config.items()
               if ckpt["config"].get(k) != v and not k.startswith(("logging.", "debug."))
               and k not in ("training.max_steps", "data.num_workers")}
    if changed:
        warnings.append(f"resuming {current} with changed settings (now, then): {changed}")
    if ckpt["world_size"] != world_size:
        warnings.append(f"the checkpoint was written with {ckpt['world_size']} ranks, this run "
                        f"has {world_size}: the data order differs from an unbroken run")
    return ckpt, warnings


def load_model(path, device="cpu", variant="S/16"):
    """(model in eval mode, classes, config) of a trained model, for evaluation and
    prediction: a run folder or its checkpoint.pt (the model's settings from its config, the
    class list it carries; [] from a checkpoint older than that), an export_vit.py
    .safetensors (its settings and classes in its metadata), or a big_vision .npz
    (vit.from_big_vision; `variant` names it, its classes are ImageNet's in wnid order)."""
    from vit_speedrun.models import vit
    path = Path(path)
    if path.is_dir():
        path = path / CURRENT
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (a train_vit.py logging.folder, its "
                              f"checkpoint.pt, an export_vit.py .safetensors, or a big_vision "
                              f".npz)")
    if path.suffix in (".safetensors", ".npz"):   # no run config: the recipe's eval crop
        if path.suffix == ".safetensors":
            from vit_speedrun.models import export
            model, classes = export.load_safetensors(path)
        else:
            model, classes = vit.from_big_vision(path, variant), []
        return model.to(device).eval(), classes, {"model.variant": model.variant,
                                                  "model.img_size": model.img_size[0],
                                                  "eval.crop_ratio": 224 / 256}
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state, config = ckpt["model"], ckpt["config"]
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e)[:120]})") from None
    rep = config.get("model.rep_size", True)
    model = vit.ViT(config["model.variant"], num_classes=state["head.weight"].shape[0],
                    pool_type=config.get("model.pool_type", "gap"),
                    posemb=config.get("model.posemb", "sincos2d"),
                    rep_size=rep, img_size=config["model.img_size"])
    model.load_state_dict(state)
    return model.to(device).eval(), list(ckpt.get("classes", [])), config
