"""Shared test helpers: the repo root on sys.path, real photographs to build data from,
and a numba cache so kernels compile once per machine rather than once per test run."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))

DATA = ROOT / "tests" / "data"   # the reference's outputs (README.md there says how made)
GOLDEN = DATA / "randaug_bigvision.npz"

# Colour photographs that scikit-image ships inside its wheel (no download).
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
               "immunohistochemistry", "retina", "colorwheel")


def real_photos():
    """Return {name: uint8 HxWx3} for the bundled colour photographs."""
    import skimage.data
    return {n: np.ascontiguousarray(getattr(skimage.data, n)()[..., :3]) for n in PHOTO_NAMES}


@pytest.fixture(scope="session")
def photos():
    return real_photos()


# A small set of real photographs for the pipeline's Loader tests (tests/pp/test_ffcv_ops.py)
# and rand_augment.py's picture: N views, labels (i // 2) % NUM_CLASSES, a thin strip at STRIP.
N, NUM_CLASSES = 24, 10
STRIP = 5                      # a 6x200 image: no 5%-area box of aspect <= 1.33 fits


@pytest.fixture(scope="session")
def dataset(photos):
    """N views of real photographs, 40-120 px, plus a 6x200 strip; labels (i // 2) % 10
    so that half the mixup pairs share a label."""
    import cv2
    rng = np.random.default_rng(0)
    names = sorted(photos)
    images = []
    for i in range(N):
        if i == STRIP:
            images.append(np.ascontiguousarray(cv2.resize(photos["rocket"], (200, 6),
                                                          interpolation=cv2.INTER_AREA)))
            continue
        img = photos[names[i % len(names)]]
        h, w = img.shape[:2]
        side = int(rng.integers(40, 121))
        size = (max(8, int(side * w / max(h, w))), max(8, int(side * h / max(h, w))))
        images.append(np.ascontiguousarray(cv2.resize(img, size,
                                                      interpolation=cv2.INTER_AREA)))
    labels = [(i // 2) % NUM_CLASSES for i in range(N)]
    return images, labels


@pytest.fixture(scope="session")
def beton(dataset, tmp_path_factory):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    images, labels = dataset
    path = str(tmp_path_factory.mktemp("beton") / "photos.beton")
    items = list(zip(images, labels))
    writer = DatasetWriter(path, {"image": RGBImageField(write_mode="raw"),
                                  "label": IntField()}, num_workers=1, page_size=1 << 21)
    writer.from_indexed_dataset(items)
    return path


# The trainer's tiny runs (tiny_runs.py), built once per session: the tests of train_vit.py,
# eval_vit.py, predict.py and the trackers share them.
@pytest.fixture(scope="session")
def splits(tmp_path_factory):
    """{name: path} of the tiny splits' .beton files (tiny_runs.write_splits)."""
    from tiny_runs import write_splits
    return write_splits(tmp_path_factory.mktemp("splits"))


@pytest.fixture(scope="session")
def reference(splits, tmp_path_factory):
    """The folder of one uninterrupted 12-step run (tiny_runs.args)."""
    import train_vit
    from tiny_runs import args
    folder = tmp_path_factory.mktemp("reference")
    assert train_vit.main(args(splits, folder)) == 0
    return folder


@pytest.fixture(scope="session")
def two_ranks(splits, tmp_path_factory):
    """(folder, finished process) of one unbroken tiny_runs.torchrun_two_ranks run."""
    from tiny_runs import torchrun_two_ranks
    folder = tmp_path_factory.mktemp("two_ranks") / "ddp"
    proc = torchrun_two_ranks(splits, folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder, proc


def pytest_configure(config):
    # numba's dispatcher finaliser raises KeyError when the per-Loader decoder dispatchers
    # FFCV 1.0.2 creates are garbage-collected (harmless, ignored by Python; seen with
    # every Loader). Hide only weakref-finaliser errors, not other unraisable exceptions.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")
