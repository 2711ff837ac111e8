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

SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "golden" / "randaug_bigvision.npz"

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


def pytest_configure(config):
    # numba's dispatcher finaliser raises KeyError when the per-Loader decoder dispatchers
    # FFCV 1.0.2 creates are garbage-collected (harmless, ignored by Python; seen with
    # every Loader). Hide only weakref-finaliser errors, not other unraisable exceptions.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")
