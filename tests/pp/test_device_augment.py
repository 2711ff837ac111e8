"""The device augmentations (vit_speedrun/pp/device/) against the numba ops of the CPU
pipeline, value for value: the 16 RandAugment ops at every level and sign, TF's bilinear
resize (and TF's own golden resizes), the flip, whole pipelines with the same draws; and
the CUDA kernels themselves in numba's simulator."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ROOT
from vit_speedrun.pp import ffcv_ops
from vit_speedrun.pp import randaug_ops as A
from vit_speedrun.pp import tf_image as T
from vit_speedrun.pp.device import kernels as K
from vit_speedrun.pp.device import launch as L


def _single_ops(images, cases, res, fixed=False):
    """The device's output for each (image index, op, arg, (cy, cx)) case: one layer."""
    n = len(cases)
    ip = np.zeros((n, L.IP_WORDS), np.int64)
    fp = np.zeros((n, L.FP_WORDS), np.float32)
    resized = np.stack([images[i] for i, _, _, _ in cases])
    for k, (_, op, arg, (cy, cx)) in enumerate(cases):
        ip[k, K.IP_MODE] = K.MODE_RESIZED
        L.set_layer(ip[k], fp[k], 0, op, float(arg), cy, cx, res, fixed)
    return L.augment(ip, fp, np.zeros((1, 3), np.uint8), resized, res, 1)


@pytest.fixture(scope="module")
def squares(photos):
    """224 x 224 inputs: the golden file's two photographs, a low-contrast one, a flat one,
    noise; and 32 x 32 crops of real photographs."""
    z = np.load(DATA / "randaug_bigvision.npz")
    index = json.loads(bytes(z["index_json"]).decode())
    big = [z["img_" + name] for name in index["images"] if z["img_" + name].shape == (224, 224, 3)]
    rng = np.random.default_rng(0)
    big.append(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    small = [np.ascontiguousarray(p[40:72, 60:92]) for p in photos.values()]
    return big, small


@pytest.mark.parametrize("fixed", [False, True])
def test_every_op_at_every_level_equals_the_numba_op(squares, fixed):
    """The 16 ops, levels 0-10, both signs, Cutout at edges and inside: the device's pixels
    are apply_op's (which tests/pp/test_randaug_ops.py checks against big_vision)."""
    big, small = squares
    rng = np.random.default_rng(1 + fixed)
    for images, res, levels in [(small, 32, range(11)), (big, 224, (0, 3, 7, 10))]:
        cases = []
        for op in range(16):
            for level in levels:
                for negate in (False, True):
                    arg = A.level_to_arg(op, float(level), negate, fixed)
                    centre = (int(rng.integers(0, res)), int(rng.integers(0, res)))
                    cases.append((int(rng.integers(0, len(images))), op, arg, centre))
        got = _single_ops(images, cases, res, fixed)
        for k, (i, op, arg, centre) in enumerate(cases):
            want = A.apply_op(images[i], A.OP_NAMES[op], *(() if A.NUM_ARGS[op] == 0 else
                                                         (arg,)), center=centre, fixed=fixed)
            np.testing.assert_array_equal(got[k], want, err_msg=f"{A.OP_NAMES[op]}({arg})")


def test_resize_equals_tf_golden_and_the_numba_resize(photos):
    """TF's own bilinear resizes (tests/data/tf_resize.npz: up, down, mixed, thin, 1x1,
    edges) and random windows with flips: resize_bilinear's values, mirrored when drawn."""
    z = np.load(DATA / "tf_resize.npz")
    boxes, want_tf = z["boxes"], z["out"]
    windows = [np.ascontiguousarray(z[f"photo_{p}"][y:y + h, x:x + w])
               for p, y, x, h, w in boxes]
    rng = np.random.default_rng(2)
    photo = photos["coffee"]
    for _ in range(30):
        h, w = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        windows.append(np.ascontiguousarray(photo[y:y + h, x:x + w]))
    for res in (224, 37):
        n = len(windows)
        ip = np.zeros((n, L.IP_WORDS), np.int64)
        fp = np.zeros((n, L.FP_WORDS), np.float32)
        start = 0
        for k, win in enumerate(windows):
            ip[k, K.IP_MODE] = K.MODE_DECODED
            ip[k, K.IP_SRC], ip[k, K.IP_H], ip[k, K.IP_W] = start, win.shape[0], win.shape[1]
            ip[k, K.IP_FLIP] = k % 3 == 0
            start += win.shape[0] * win.shape[1]
        decoded = np.concatenate([w.reshape(-1, 3) for w in windows])
        got = L.augment(ip, fp, decoded, np.zeros((n, res, res, 3), np.uint8), res, 0)
        for k, win in enumerate(windows):
            want = T.resize_bilinear(win, 0, 0, win.shape[0], win.shape[1],
                                     np.empty((res, res, 3), np.uint8))
            if k % 3 == 0:
                want = want[:, ::-1]
            np.testing.assert_array_equal(got[k], want, err_msg=f"window {k} {win.shape}")
            if res == 224 and k < len(boxes):
                np.testing.assert_array_equal(got[k], want_tf[k][:, ::-1] if k % 3 == 0
                                              else want_tf[k], err_msg=f"golden {k}")


@pytest.mark.parametrize("fixed", [False, True])
def test_whole_pipeline_equals_the_numba_pipeline(photos, fixed):
    """The same draws (flip, two RandAugment layers at magnitude 10) on decoded windows and
    on CPU-resized images in one batch: InceptionCropDecoder's resize, RandomFlip and
    RandAugment's numba code give the same images."""
    rng = np.random.default_rng(3)
    seed, epoch, res = 5, 2, 48
    indices = np.arange(40, 100, dtype=np.int64)
    ip, fp = L.params(seed, epoch, indices, res, 0.5, 2, 10.0, fixed)
    names = sorted(photos)
    windows, resized, start = [], np.zeros((len(indices), res, res, 3), np.uint8), 0
    want = []
    for k, index in enumerate(indices):
        photo = photos[names[k % len(names)]]
        h, w = int(rng.integers(8, 200)), int(rng.integers(8, 200))
        win = np.ascontiguousarray(photo[:h, :w])
        img = T.resize_bilinear(win, 0, 0, h, w, np.empty((res, res, 3), np.uint8))
        if k % 4 == 0:   # the CPU branch: decoded and resized on the host
            ip[k, K.IP_MODE] = K.MODE_RESIZED
            resized[k] = img
        else:
            ip[k, K.IP_MODE] = K.MODE_DECODED
            ip[k, K.IP_SRC], ip[k, K.IP_H], ip[k, K.IP_W] = start, h, w
            windows.append(win.reshape(-1, 3))
            start += h * w
        if ffcv_ops.flip_draw(seed, epoch, index, 0.5):
            ffcv_ops._flip_inplace(img)
        ffcv_ops._randaug_one(img, np.empty_like(img), seed, epoch, index, 2, 10.0, fixed)
        want.append(img)
    got = L.augment(ip, fp, np.concatenate(windows), resized, res, 2)
    assert ip[:, K.IP_FLIP].any() and not ip[:, K.IP_FLIP].all()
    for k in range(len(indices)):
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"sample {indices[k]}")


SIMULATOR = """
import numpy as np
from vit_speedrun.pp import randaug_ops as A
from vit_speedrun.pp.device import kernels as K
from vit_speedrun.pp.device import launch as L
rng = np.random.default_rng(0)
res, n = 6, 18
ip = np.zeros((n, L.IP_WORDS), np.int64)
fp = np.zeros((n, L.FP_WORDS), np.float32)
decoded = rng.integers(0, 256, (n * 20, 3), dtype=np.uint8)
resized = rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8)
for k in range(n):
    op = k % 16
    ip[k, K.IP_MODE] = K.MODE_DECODED if k % 2 else K.MODE_RESIZED
    ip[k, K.IP_SRC], ip[k, K.IP_H], ip[k, K.IP_W], ip[k, K.IP_FLIP] = 20 * k, 4, 5, k % 3 == 0
    L.set_layer(ip[k], fp[k], 0, op, A.level_to_arg(op, 7.0, k % 2 == 0, False), 2, 3, res,
                False)
    L.set_layer(ip[k], fp[k], 1, (k + 5) % 16, A.level_to_arg((k + 5) % 16, 9.0, False, True),
                1, 4, res, True)
gpu = L.augment(ip, fp, decoded, resized, res, 2, target="cuda", threads=32)
cpu = L.augment(ip, fp, decoded, resized, res, 2)
assert np.array_equal(gpu, cpu)
print("simulated", n, "images")
"""


def test_cuda_kernels_in_the_simulator():
    """The CUDA kernels of every stage and op, run by numba's CUDA simulator as Python
    (numpy float32 scalars, one Python thread per CUDA thread): the CPU twin's pixels."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SIMULATOR], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulated 18 images" in done.stdout
