"""augment.where=device through real FFCV Loaders (vit_speedrun/pp/device/ffcv_ops.py): the
same batches, images and labels bit for bit, as the CPU pipeline (numba decode, resize,
flip, RandAugment; DeviceNormalizeMixup), on the CPU twin of the device kernels: over
epochs, with 1 and 2 threads, for both ranks of 2, after a mid-epoch resume, with files
that take the CPU branch (a PNG stored as pixels, a progressive JPEG, samples over the
byte budget) in the same batches."""
import gc
import sys

import numpy as np
import pytest
import torch

from vit_speedrun.data.photos import make_photo_folder
from vit_speedrun.pp import ffcv_ops
from vit_speedrun.pp.device import ffcv_ops as device_ops
from vit_speedrun.train import loaders

RES, BS, CLASSES, SEED = 40, 8, 4, 3


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    """32 ImageNet-like photos written by write_ffcv (original bytes + window index), plus a
    PNG named .JPEG (stored as pixels) and a progressive JPEG (stored bare)."""
    import write_ffcv
    from PIL import Image
    root = tmp_path_factory.mktemp("device")
    folder, _ = make_photo_folder(root / "photos", n=32, classes=CLASSES)
    photo = np.asarray(Image.open(next(folder.glob("n*/00001.JPEG"))))
    Image.fromarray(photo[:200, :300]).save(folder / "n00000000" / "png.JPEG", format="PNG")
    Image.fromarray(photo[:180, :240]).save(folder / "n00000001" / "prog.JPEG", quality=85,
                                            progressive=True)
    out = root / "train.beton"
    meta = write_ffcv.convert(str(folder), str(out), "train", progress=False)
    # minival takes one image per class; what stays: pixels or no index for the CPU branch
    cpu_branch = len(meta["converted"]) + meta["unindexed"]
    assert meta["num_images"] >= 30 and cpu_branch >= 1, meta
    return str(out), meta["num_images"], cpu_branch


def _batches(beton, where, workers, rank=0, world=1, epochs=(0, 1), first_batch=0,
             budget=None):
    """Every batch of `epochs` as (images float32 NCHW, labels) numpy arrays."""
    from ffcv.loader import Loader
    from ffcv.transforms import ToDevice, ToTensor
    clock = ffcv_ops.AugmentClock(SEED)
    options = dict(res=RES, randaug=(2, 10), mixup_alpha=0.2, num_classes=CLASSES)
    if where == "device":
        pipes = device_ops.device_train_pipelines(clock, "cpu", beton, **options)
        if budget is not None:
            pipes["image"][0].budget = budget
    else:
        pipes = ffcv_ops.train_pipelines(clock, mix_on_device=True, **options)
        pipes["image"] += ffcv_ops.device_tail(clock, "cpu", 0.2)
    pipes["label"] += [ToTensor(), ToDevice(torch.device("cpu"))]
    loader = Loader(beton, batch_size=BS, num_workers=workers, order=loaders.ResumableOrder(
        rank, world), drop_last=True, pipelines=pipes, seed=SEED)
    loaders.LOADERS.append(loader)
    out = []
    for epoch in epochs:
        for images, labels in loaders.epoch_iterator(loader, clock, epoch,
                                                     first_batch if epoch == epochs[0] else 0):
            out.append((images.numpy().copy(), labels.numpy().copy()))
    gc.collect()
    return out


@pytest.fixture(scope="module")
def cpu_runs(beton):
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if ffcv_ops.is_ffcv_finalizer_noise(u) else hook(u)
    return {(rank, world): _batches(beton[0], "cpu", 1, rank, world)
            for rank, world in [(0, 1), (0, 2), (1, 2)]}


def _same(got, want):
    assert len(got) == len(want) > 0
    for k, ((gi, gl), (wi, wl)) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(gi, wi, err_msg=f"batch {k} images")
        np.testing.assert_array_equal(gl, wl, err_msg=f"batch {k} labels")


@pytest.mark.parametrize("workers", [1, 2])
def test_device_batches_equal_the_cpu_batches(beton, cpu_runs, workers):
    _same(_batches(beton[0], "device", workers), cpu_runs[(0, 1)])


def test_device_batches_of_two_ranks_and_a_resume(beton, cpu_runs):
    for rank in (0, 1):
        _same(_batches(beton[0], "device", 1, rank, 2), cpu_runs[(rank, 2)])
    resumed = _batches(beton[0], "device", 1, epochs=(1,), first_batch=2)
    _same(resumed, cpu_runs[(0, 1)][len(cpu_runs[(0, 1)]) // 2 + 2:])


def _modes(beton, n, budget):
    """Each sample's route (MODE_DECODED or MODE_RESIZED) in epoch 0."""
    from ffcv.loader import Loader, OrderOption
    clock = ffcv_ops.AugmentClock(SEED)
    planner = device_ops.DevicePlanner(clock, budget, RES)
    loader = Loader(beton, batch_size=n, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [planner], "label": None})
    loaders.LOADERS.append(loader)
    clock.set_epoch(0)
    rows = np.asarray(next(iter(loader))[0])
    return rows[:, :device_ops.IP_BYTES].view(np.int64)[:, device_ops.K.IP_MODE]


def test_over_budget_samples_take_the_cpu_branch(beton, cpu_runs):
    """A budget that fits the resized image but not the larger windows' plans: those
    samples are decoded and resized on the host, in the same batches, same numbers."""
    path, n, cpu_branch = beton
    budget = device_ops.PAYLOAD + 3 * RES * RES + 30_000
    over = (_modes(path, n, budget) == device_ops.K.MODE_RESIZED).sum() - cpu_branch
    assert 3 <= over <= n - 3, over
    got = _batches(path, "device", 1, budget=budget)
    _same(got, cpu_runs[(0, 1)])


def test_the_planner_routes_what_the_device_cannot_decode(beton):
    """The device decodes every indexed JPEG; the PNG (pixels) and the progressive JPEG (no
    index) take the CPU branch."""
    path, n, cpu_branch = beton
    modes = _modes(path, n, device_ops.sample_budget(path, RES))
    assert (modes == device_ops.K.MODE_RESIZED).sum() == cpu_branch, modes
    assert (modes == device_ops.K.MODE_DECODED).sum() == n - cpu_branch
