"""train/checkpoints.py: the rotation that keeps a good checkpoint on disk at every moment, a kill
at any point of it, and the finite check. Its use by the trainer is tested through
train_vit.main: lr=1e38 in test_train_vit.py, cut-short and foreign checkpoints in
test_train_vit_settings.py."""
import os

import pytest
import torch

from vit_speedrun.train import checkpoints
from vit_speedrun.models import vit
from vit_speedrun.train.step import build_optimizer

CPU = torch.device("cpu")


def _run(step):
    """A model, its optimizer after one step, and their checkpoint dict at `step`."""
    torch.manual_seed(step)
    model = vit.ViT("mu/8", num_classes=4, img_size=32)
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.999), 1e-8, "auto", "cpu")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    state = checkpoints.capture(model, optimizer, step=step, steps_per_epoch=5, world_size=1,
                                train_time=0.0, config={"model.variant": "mu/8"}, device=CPU)
    return model, optimizer, state


def _steps(folder):
    return (checkpoints.step_of(folder / checkpoints.CURRENT),
            checkpoints.step_of(folder / checkpoints.PREVIOUS))


def test_rotation_keeps_a_good_checkpoint_at_every_moment(tmp_path, monkeypatch):
    """Before and after every rename or link of save(), checkpoint.pt is whole (once the
    first save is done) and checkpoint.prev.pt too (once the second is)."""
    seen = []
    for name in ("replace", "link"):
        real = getattr(os, name)

        def watched(src, dst, real=real):
            seen.append(_steps(tmp_path))
            real(src, dst)
            seen.append(_steps(tmp_path))
        monkeypatch.setattr(checkpoints.os, name, watched)
    saves = []
    for step in (10, 20, 30):
        checkpoints.save(_run(step)[2], tmp_path)
        saves.append(len(seen))
    monkeypatch.undo()
    assert _steps(tmp_path) == (30, 20)
    assert all(cur is not None for cur, _ in seen[saves[0]:])
    assert all(prev is not None for _, prev in seen[saves[1]:])
    assert set(seen[saves[1]:]) <= {(20, 10), (20, 20), (30, 20)}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("kill_at", ["write", 0, 1, 2])
def test_a_kill_during_rotation_leaves_good_checkpoints(tmp_path, monkeypatch, kill_at):
    """A kill while the new file is written, or before any of the rename/link operations
    that follow: both files still hold whole checkpoints, and the next save works."""
    checkpoints.save(_run(10)[2], tmp_path)
    checkpoints.save(_run(20)[2], tmp_path)

    class Killed(BaseException):
        pass
    ops = []
    for name in ("replace", "link"):
        real = getattr(os, name)

        def op(src, dst, real=real):
            if len(ops) == kill_at:
                raise Killed
            ops.append(dst)
            real(src, dst)
        monkeypatch.setattr(checkpoints.os, name, op)
    if kill_at == "write":
        def killed_while_writing(state, f):
            f.write(b"PK\x03\x04")  # the start of a zip file, and no more
            raise Killed
        monkeypatch.setattr(checkpoints.torch, "save", killed_while_writing)
    with pytest.raises(Killed):
        checkpoints.save(_run(30)[2], tmp_path)
    monkeypatch.undo()
    current, previous = _steps(tmp_path)
    assert current in (20, 30) and previous in (10, 20) and previous <= current
    checkpoints.save(_run(40)[2], tmp_path)
    assert _steps(tmp_path) == (40, current)


def test_rotation_without_hard_links_copies(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError("hard links not supported")
    monkeypatch.setattr(checkpoints.os, "link", no_links)
    for step in (1, 2):
        checkpoints.save(_run(step)[2], tmp_path)
    assert _steps(tmp_path) == (2, 1)


def test_nonfinite_checks_weights_moments_and_outputs():
    model, optimizer, _ = _run(1)
    probe = torch.randn(2, 3, 32, 32)
    assert checkpoints.nonfinite(model, optimizer, probe, "fp32") == []
    # Finite weights that overflow in the first layer: only the outputs show it.
    with torch.no_grad():
        model.embedding.weight.fill_(3e37)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    bad = checkpoints.nonfinite(model, optimizer, probe, "bf16")
    assert bad and "outputs on a training batch" in bad[0] and "3e+37" in bad[0]
    model, optimizer, _ = _run(1)
    param, state = next(iter(optimizer.state.items()))
    state["exp_avg_sq"].view(-1)[0] = float("inf")
    name = next(n for n, p in model.named_parameters() if p is param)
    assert checkpoints.nonfinite(model, optimizer, probe, "fp32") == [f"optimizer exp_avg_sq of {name}"]
