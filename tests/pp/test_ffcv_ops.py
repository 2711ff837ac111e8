"""vit_speedrun/pp/ffcv_ops.py, the train pipeline, against the recipe (RECIPE.md,
"Train preprocessing", "RandAugment", "Mixup"): the samplers statistically on thousands of draws, and the FFCV
operations through real Loaders on a small .beton of real photographs.

The Loaders compile their pipelines with numba (seconds each), so the test builds five,
once per module, and every loader test reads their recorded batches:
  crop    decode + crop + flip, normalised without mixing   (1 thread)
  pre     + RandAugment(2, 10), no mixing                   (1 thread)
  full2   + mixup 0.2: the full train pipeline              (2 threads), epochs 0 and 1
  full1   the same                                          (1 thread)
  rank1   the same over samples 8.. only (another "rank", or a resumed epoch)
  device  the same, normalised and mixed by the torch stage DeviceNormalizeMixup
"""
import gc
import queue
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import N, NUM_CLASSES, STRIP
from vit_speedrun.pp import ffcv_ops as ra
from vit_speedrun.train import loaders

SEED, RES, BS, ALPHA = 11, 32, 8, 0.2
AREA, ASPECT = (0.05, 1.0), (0.75, 1.33)


# ---------------------------------------------------------------------------- samplers
def test_crop_heights_are_uniform_given_the_aspect():
    # TF's sampler (tf_image.generate_random_crop) draws an aspect w/h ~ U(0.75, 1.33), then
    # a HEIGHT uniform between those of the smallest and the largest area for that aspect.
    # With area <= 0.5 every attempt fits a square image, so each box is a first attempt.
    size, n, lo, hi = 4000, 4000, 0.05, 0.5
    crops = ra.sample_crops(SEED, 0, np.arange(n), size, size, lo, hi, *ASPECT, 100)
    y, x, h, w = crops.T
    aspect = w / h
    assert stats.kstest(aspect, stats.uniform(0.75, 0.58).cdf).pvalue > 1e-3
    # ... not log-uniform (torchvision's RandomResizedCrop, FFCV's decoder)
    assert stats.kstest(aspect, stats.loguniform(0.75, 1.33).cdf).pvalue < 1e-6
    h_lo, h_hi = np.sqrt(lo * size ** 2 / aspect), np.sqrt(hi * size ** 2 / aspect)
    assert stats.kstest((h - h_lo) / (h_hi - h_lo), "uniform").pvalue > 1e-3
    # ... so the area is not uniform: its density falls as 1 / sqrt(area)
    area = h * w / size ** 2
    assert stats.kstest(area, stats.uniform(lo, hi - lo).cdf).pvalue < 1e-6
    assert area.mean() < (lo + hi) / 2 - 0.01
    # offsets uniform over [0, size - h - 1] (TF's off-by-one)
    assert stats.kstest(y / (size - h), "uniform").pvalue > 1e-3
    assert stats.kstest(x / (size - w), "uniform").pvalue > 1e-3
    assert (y >= 0).all() and (y + h < size).all() and (x + w < size).all()


def _spec_crop(rng, height, width):
    """The recipe's inception crop (RECIPE.md step 1), written again in float64 numpy."""
    for _ in range(100):
        ar = rng.uniform(*ASPECT)
        h = int(round(np.sqrt(AREA[0] * height * width / ar)))
        hmax = int(round(np.sqrt(AREA[1] * height * width / ar)))
        if round(hmax * ar) > width:
            hmax = int((width + 0.5) / ar)
        hmax = min(hmax, height)
        h = hmax if h >= hmax else h + rng.integers(0, hmax - h + 1)
        w = int(round(h * ar))
        if AREA[0] * height * width <= w * h <= AREA[1] * height * width and w <= width:
            return h, w
    return height, width


@pytest.mark.parametrize("height,width", [(300, 400), (500, 120)])
def test_crop_distribution_matches_the_spec(height, width):
    n = 3000
    crops = ra.sample_crops(SEED, 3, np.arange(n), height, width, *AREA, *ASPECT, 100)
    rng = np.random.default_rng(0)
    ref = np.array([_spec_crop(rng, height, width) for _ in range(n)])
    for ours, theirs in ((crops[:, 2] * crops[:, 3], ref[:, 0] * ref[:, 1]),
                         (crops[:, 3] / crops[:, 2], ref[:, 1] / ref[:, 0])):
        assert stats.ks_2samp(ours, theirs).pvalue > 1e-3


def test_crop_fallback_is_the_whole_image_and_draws_are_pure():
    crops = ra.sample_crops(SEED, 0, np.arange(500), 6, 200, *AREA, *ASPECT, 100)
    assert (crops == [0, 0, 6, 200]).all()
    a = ra.sample_crops(SEED, 0, np.arange(200), 300, 400, *AREA, *ASPECT, 100)
    assert np.array_equal(a, ra.sample_crops(SEED, 0, np.arange(200), 300, 400,
                                             *AREA, *ASPECT, 100))
    other_epoch = ra.sample_crops(SEED, 1, np.arange(200), 300, 400, *AREA, *ASPECT, 100)
    other_seed = ra.sample_crops(SEED + 1, 0, np.arange(200), 300, 400, *AREA, *ASPECT, 100)
    assert (a != other_epoch).any(axis=1).mean() > 0.95
    assert (a != other_seed).any(axis=1).mean() > 0.95


def test_flip_rate():
    flips = np.array([ra.flip_draw(SEED, 0, i, 0.5) for i in range(20000)])
    assert abs(flips.mean() - 0.5) < 4 * 0.5 / np.sqrt(flips.size)
    assert not any(ra.flip_draw(SEED, 0, i, 0.0) for i in range(100))


def test_op_choice_is_uniform_and_signs_are_fair():
    draws = [ra.randaug_draws(SEED, 2, i, 224, 224) for i in range(4000)]
    ops = [name for d in draws for name, _, _ in d]
    counts = np.array([ops.count(name) for name in ra.OP_NAMES])
    assert stats.chisquare(counts).pvalue > 1e-3
    # the two layers draw independently (with replacement: the same op twice happens)
    same = np.mean([d[0][0] == d[1][0] for d in draws])
    assert abs(same - 1 / 16) < 0.02
    rot = np.array([arg for d in draws for name, arg, _ in d if name == "Rotate"])
    assert set(np.abs(rot)) == {30.0} and abs((rot < 0).mean() - 0.5) < 0.1
    centres = np.array([c for d in draws for _, _, c in d])
    assert centres.min() == 0 and centres.max() == 223


def test_mixup_coefficient_distribution_and_fold():
    a = np.array([ra.mixup_coefficient(SEED, 0, b, ALPHA) for b in range(4000)])
    assert (a.astype(np.float32) == a).all(), "a float32 coefficient, as the reference"
    assert (a >= 0.5).all() and (a <= 1).all()
    beta = stats.beta(ALPHA, ALPHA)
    folded_cdf = lambda t: np.clip(beta.cdf(t) - beta.cdf(1 - t), 0, 1)  # noqa: E731
    # float32 rounds a few % of draws to exactly 1.0 (Beta(0.2, 0.2) piles up at the
    # ends): test the share above 0.99, and the shape below it (no ties there).
    top = folded_cdf(0.99)
    assert abs((a > 0.99).mean() - (1 - top)) < 4 * np.sqrt(top * (1 - top) / a.size)
    low = a[a <= 0.99]
    assert stats.kstest(low, lambda t: folded_cdf(t) / top).pvalue > 1e-3
    assert ra.mixup_coefficient(SEED, 0, 5, 0.0) == 1.0
    assert ra.mixup_coefficient(SEED, 0, 5, ALPHA) == ra.mixup_coefficient(SEED, 0, 5, ALPHA)
    assert ra.mixup_coefficient(SEED, 1, 5, ALPHA) != ra.mixup_coefficient(SEED, 0, 5, ALPHA)


def test_clock_rejects_bad_values():
    with pytest.raises(ValueError, match="seed"):
        ra.AugmentClock(-1)
    with pytest.raises(ValueError, match="first_batch"):
        ra.AugmentClock(0).set_epoch(0, first_batch=-1)


# ---------------------------------------------------------------------------- loaders
def _epoch(loader, clock, epoch, first_batch=0):
    """All batches of one epoch as numpy copies. Polls FFCV's background thread: when a
    pipeline raises inside it, FFCV 1.0.2 would otherwise wait for its queue forever."""
    it = loaders.epoch_iterator(loader, clock, epoch, first_batch)
    out = []
    while True:
        try:
            item = it.output_queue.get(timeout=1.0)
        except queue.Empty:
            if not it.is_alive():
                raise RuntimeError("the FFCV loader thread died: see its traceback above")
            continue
        if item is None:
            it.close()
            return out
        out.append(tuple(np.array(t.cpu().numpy() if hasattr(t, "numpy") else t)
                         for t in item[1]))


@pytest.fixture(scope="module")
def runs(beton):
    from ffcv.loader import Loader, OrderOption
    out = {}

    def run(name, workers, randaug, alpha, indices=None, epochs=(0,), on_device=False):
        clock = ra.AugmentClock(SEED)
        pipes = ra.train_pipelines(clock, res=RES, randaug=randaug, mixup_alpha=alpha,
                                   num_classes=NUM_CLASSES, mix_on_device=bool(on_device))
        if on_device:   # the torch stage: on the CPU, and on a GPU where there is one
            pipes["image"] += ra.device_tail(clock, on_device, alpha)
        loader = Loader(beton, batch_size=BS, num_workers=workers, indices=indices,
                        order=OrderOption.SEQUENTIAL, drop_last=False, pipelines=pipes)
        out[name] = {e: _epoch(loader, clock, e) for e in epochs}
        out[name]["loader"], out[name]["clock"] = loader, clock

    run("crop", 1, None, 0.0)
    run("pre", 1, (2, 10), 0.0)
    run("full2", 2, (2, 10), ALPHA, epochs=(0, 1))
    run("full1", 1, (2, 10), ALPHA)
    run("rank1", 1, (2, 10), ALPHA, indices=np.arange(BS, N))
    run("device", 1, (2, 10), ALPHA, on_device="cpu")
    if torch.cuda.is_available():
        run("cuda", 1, (2, 10), ALPHA, on_device="cuda")
    yield out
    # Free the loaders now, hushing the KeyError that numba's finaliser raises for FFCV's
    # throw-away decoder dispatchers (harmless, and not ours).
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if ra.is_ffcv_finalizer_noise(u) else hook(u)
    try:
        out.clear()
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _u8(batches):
    """Stack the image batches of an epoch and undo value_range exactly."""
    x = np.concatenate([b[0] for b in batches])
    u8 = np.round((x + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(ra.value_range()[u8], x), "not a normalised uint8 image"
    return u8


def _mix(u8, a):
    """The reference's mixup of one batch, in float32."""
    x = ra.value_range()[u8]
    return a * x + (np.float32(1) - a) * np.roll(x, 1, axis=0)


def test_crop_and_flip_through_the_loader(runs, dataset):
    images, _ = dataset
    batches = runs["crop"][0]
    assert [b[0].shape for b in batches] == [(BS, RES, RES, 3)] * (N // BS)
    assert all(b[0].dtype == np.float32 for b in batches)
    got = _u8(batches)
    flips = 0
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        y, x, ch, cw = ra.sample_crop(SEED, 0, i, h, w, *AREA, *ASPECT, 100)
        if i == STRIP:
            assert (y, x, ch, cw) == (0, 0, h, w)
        want = ra.resize_bilinear(img, y, x, ch, cw, np.empty((RES, RES, 3), np.uint8))
        if ra.flip_draw(SEED, 0, i, 0.5):
            want, flips = want[:, ::-1], flips + 1
        assert np.array_equal(want, got[i]), f"sample {i}"
    assert 0 < flips < N


def test_randaug_through_the_loader_equals_apply_op(runs):
    crops, pre = _u8(runs["crop"][0]), _u8(runs["pre"][0])
    for i in range(N):
        want = crops[i]
        for name, arg, centre in ra.randaug_draws(SEED, 0, i, RES, RES):
            if name == "Cutout":
                want = ra.apply_op(want, name, arg, center=centre)
            elif name in ("AutoContrast", "Equalize", "Invert"):
                want = ra.apply_op(want, name)
            else:
                want = ra.apply_op(want, name, arg)
        assert np.array_equal(want, pre[i]), f"sample {i}: {ra.randaug_draws(SEED, 0, i, RES, RES)}"


def _check_mixup(batches, pre_u8, labels, first_batch, epoch=0):
    for b, (x, y) in enumerate(batches, start=first_batch):
        a = ra.mixup_coefficient(SEED, epoch, b, ALPHA)
        assert 0.5 <= a < 1
        np.testing.assert_array_equal(x, _mix(pre_u8[b * BS:(b + 1) * BS], a))
        lab = np.asarray(labels[b * BS:(b + 1) * BS])
        want = np.zeros((BS, NUM_CLASSES), np.float32)
        want[np.arange(BS), lab] += a
        want[np.arange(BS), np.roll(lab, 1)] += np.float32(1) - a
        np.testing.assert_array_equal(y, want)
        np.testing.assert_allclose(y.sum(1), 1, atol=1e-6)


def test_mixup_images_and_two_hot_labels(runs, dataset):
    _check_mixup(runs["full2"][0], _u8(runs["pre"][0]), dataset[1], 0)


def test_same_batches_whatever_the_thread_count(runs):
    for (x2, y2), (x1, y1) in zip(runs["full2"][0], runs["full1"][0], strict=True):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_another_epoch_gets_other_draws(runs):
    e0, e1 = runs["full2"][0], runs["full2"][1]
    for (x0, y0), (x1, y1) in zip(e0, e1, strict=True):
        assert np.abs(x0 - x1).mean() > 0.05
        assert y0[0].max() != y1[0].max()       # another mixup coefficient
    assert runs["full2"]["clock"].batches == (N // BS, N // BS)


def test_same_coefficient_on_another_rank_and_resume(runs, dataset):
    # rank 1 sees other samples (8..23) but its batch 0 gets rank 0's coefficient
    loader, clock = runs["rank1"]["loader"], runs["rank1"]["clock"]
    pre = _u8(runs["pre"][0])
    rank1 = runs["rank1"][0]
    a = ra.mixup_coefficient(SEED, 0, 0, ALPHA)
    # (row 0's partner, the batch's last image, has another label: its max is a)
    assert rank1[0][1][0].max() == a == runs["full2"][0][0][1][0].max()
    np.testing.assert_array_equal(rank1[0][0], _mix(pre[BS:2 * BS], a))
    # setting the clock to batch 1 on a loader that starts at sample 8 reproduces the
    # uninterrupted epoch's batches 1 and 2 exactly
    clock.set_epoch(0, first_batch=1)
    shifted = [tuple(np.array(t) for t in b) for b in loader]
    for (xr, yr), (xf, yf) in zip(shifted, runs["full2"][0][1:], strict=True):
        assert np.array_equal(xr, xf) and np.array_equal(yr, yf)


def test_resume_mid_epoch(runs, dataset):
    # epoch_iterator(..., first_batch=2) on the full loader: FFCV skips batches 0 and 1,
    # the clock counts from 2, and batch 2 comes out as in the uninterrupted epoch 1
    loader, clock = runs["full2"]["loader"], runs["full2"]["clock"]
    resumed = _epoch(loader, clock, 1, first_batch=2)
    assert len(resumed) == 1 and clock.batches == (3, 3)
    assert all(np.array_equal(r, f) for r, f in zip(resumed[0], runs["full2"][1][2]))
    again = _epoch(loader, clock, 1)          # the skip applied to that epoch only
    assert len(again) == N // BS
    assert all(np.array_equal(r, f) for r, f in zip(again[0], runs["full2"][1][0]))
    with pytest.raises(ValueError, match="first_batch"):
        loaders.epoch_iterator(loader, clock, 0, first_batch=N // BS + 1)
    # breaking out of an epoch: the next epoch_iterator stops the old thread first
    next(loaders.epoch_iterator(loader, clock, 1))
    again = _epoch(loader, clock, 1)
    assert len(again) == N // BS and clock.batches == (N // BS, N // BS)
    assert all(np.array_equal(r, f) for r, f in zip(again[-1], runs["full2"][1][-1]))


def test_epoch_iterator_drops_the_partial_batch(beton):
    """FFCV 1.0.2 yields a final partial batch even with drop_last=True; epoch_iterator must
    not, from the start of an epoch or resumed in it (20 samples, batches of 8: 2 full)."""
    from ffcv.loader import Loader, OrderOption
    clock = ra.AugmentClock(SEED)
    pipes = ra.train_pipelines(clock, res=RES, randaug=None, mixup_alpha=0.0,
                               num_classes=NUM_CLASSES)
    loader = Loader(beton, batch_size=BS, num_workers=1, indices=np.arange(20),
                    order=OrderOption.SEQUENTIAL, drop_last=True, pipelines=pipes)
    assert [len(b[0]) for b in _epoch(loader, clock, 0)] == [BS, BS]
    assert [len(b[0]) for b in _epoch(loader, clock, 0, first_batch=1)] == [BS]


@pytest.mark.parametrize("device", ["device", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_mixing_on_the_device_gives_the_same_numbers(runs, device):
    for (xd, yd), (x, y) in zip(runs[device][0], runs["full2"][0], strict=True):
        assert xd.shape == (BS, 3, RES, RES) and xd.dtype == np.float32
        assert np.array_equal(xd, x.transpose(0, 3, 1, 2)) and np.array_equal(yd, y)
    assert runs[device]["clock"].batches == (N // BS, N // BS)


def test_loaders_leave_numbas_interned_array_types_alone(beton):
    """FFCV 1.0.2 would set mutable=False on numba's shared array(uint8, 1d, C) type when a
    Loader compiles its reader (rand_augment replaces that reader): the type object's hash
    would change under the dispatchers that use it as a key."""
    from numba import types
    from ffcv.loader import Loader, OrderOption
    u8 = types.uint8[::1]
    assert u8.mutable
    clock = ra.AugmentClock(SEED)
    loader = Loader(beton, batch_size=BS, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines=ra.train_pipelines(clock, res=RES, randaug=None,
                                                 mixup_alpha=0.0, num_classes=NUM_CLASSES))
    assert len(_epoch(loader, clock, 0)) == N // BS
    assert u8.mutable and types.uint8[::1] is u8
