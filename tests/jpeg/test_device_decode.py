"""The device decoder (vit_speedrun/jpeg/device/) against the CPU decode, bit for bit: the
same kernels' CPU twin on thousands of windows of every chroma layout, the golden TF
windows, damaged and crafted files; and the CUDA kernels themselves in numba's simulator."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from test_window import SAMPLINGS, _data, _encoded, _golden_indexable, _random_windows, \
    _with_index
from test_window import golden  # noqa: F401 (the fixture)
from vit_speedrun.jpeg import window as jw
from vit_speedrun.jpeg.device import launch
from vit_speedrun.jpeg.device import record as R


def _device_and_cpu(payload_boxes, target="cpu"):
    """(device windows or None where the CPU decodes them, the CPU's windows)."""
    payloads = [p for p, _ in payload_boxes]
    boxes = [b for _, b in payload_boxes]
    recs, planned = launch.plan_batch(payloads, boxes)
    recs[~planned] = 0
    out, starts, flags = launch.run(recs, target)
    device = [out[starts[i]:starts[i + 1]].reshape(b[2], b[3], 3)
              if planned[i] and not flags[i] else None for i, b in enumerate(boxes)]
    return device, [jw.decode_window(p, *b) for p, b in payload_boxes], flags


MCU_WIDTH = {"4:2:0": 16, "4:2:2": 16, "4:1:1": 32, "optimized": 16}   # else 8
SUBSAMPLED = {"4:2:0": 2, "4:2:2": 2, "4:1:1": 4, "optimized": 2}      # widest chroma step


@pytest.mark.parametrize("sampling", [*SAMPLINGS, "gray", "optimized"])
def test_device_decode_equals_the_cpu_decode(photos, sampling):
    """Every chroma layout (fancy h2v1, h2v2 and h1v2 upsampling, integral for 4:1:1),
    grayscale, optimised tables, odd and tiny sizes, windows on and beside every MCU
    boundary, single rows and columns, the whole image: each window the device decodes is
    the CPU's, pixel for pixel; and it decodes every window the CPU's index path takes
    except crops whose subsampled width is under 2 samples (libjpeg re-picks its upsampler
    there), which the CPU decodes in the same batch."""
    rng = np.random.default_rng(7 + len(sampling))
    photo = photos["chelsea"]
    work = []
    for height, width in [(375, 500), (333, 251), (40, 17), (17, 40), (9, 24), (64, 64)]:
        data = _encoded(photo, sampling, height, width)
        ix = jw.index(data)
        if ix is None:
            continue
        work += [(ix, win) for win in _random_windows(rng, height, width, 60)]
    device, cpu, flags = _device_and_cpu(work)
    assert not flags.any()
    mcu_w, step = MCU_WIDTH.get(sampling, 8), SUBSAMPLED.get(sampling, 1)
    done = 0
    for (ix, (y, x, h, w)), got, want in zip(work, device, cpu):
        narrow = -(-(x + w - x // mcu_w * mcu_w) // step) < 2
        indexed = jw.decode_window_indexed(ix, y, x, h, w) is not None
        assert (got is not None) == (indexed and not narrow), (sampling, (y, x, h, w))
        if got is not None:
            done += 1
            np.testing.assert_array_equal(got, want, err_msg=f"{sampling} {(y, x, h, w)}")
    assert len(work) >= 400 and done >= len(work) // 2, (done, len(work))


def test_device_decode_of_extreme_coefficients(photos):
    """Quality 100 on noise (large coefficients, 16-bit sums near their limits) and a
    16-bit quantisation table (SOF1): still the CPU's pixels, through the device."""
    from PIL import Image
    import io
    rng = np.random.default_rng(3)
    noisy = np.clip(photos["astronaut"][:96, :128].astype(int)
                    + rng.integers(-90, 90, (96, 128, 3)), 0, 255).astype(np.uint8)
    files = []
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, "JPEG", quality=100, subsampling=0)
    files.append(out.getvalue())
    out = io.BytesIO()   # 16-bit table entries (up to 999) force 16-bit DQT precision
    table = [int(v) for v in rng.integers(1, 1000, 64)]
    Image.fromarray(noisy).save(out, "JPEG", qtables=[table, table], subsampling=2)
    files.append(out.getvalue())
    assert b"\xff\xc1" in files[1][:600]   # extended sequential: 16-bit tables
    work = []
    for data in files:
        ix = jw.index(data)
        work += [(ix, win) for win in _random_windows(rng, 96, 128, 40)]
    device, cpu, flags = _device_and_cpu(work)
    assert not flags.any() and sum(d is not None for d in device) > len(work) // 2
    for (_, win), got, want in zip(work, device, cpu):
        if got is not None:
            np.testing.assert_array_equal(got, want, err_msg=str(win))


def test_device_decode_of_the_golden_tf_windows(golden):  # noqa: F811
    """The golden decode_and_crop_jpeg windows of TF, through the device."""
    z, n = golden
    indexed = _golden_indexable(z, n)
    work = [(indexed[i], tuple(int(v) for v in z["windows"][i, j]))
            for i in indexed for j in range(3)]
    windows = launch.decode([p for p, _ in work], [b for _, b in work])
    recs, planned = launch.plan_batch([p for p, _ in work], [b for _, b in work])
    assert planned.sum() >= 20, planned
    for k, ((data, win), got) in enumerate(zip(work, windows)):
        i, j = list(indexed)[k // 3], k % 3
        np.testing.assert_array_equal(got, z[f"crop_{i}_{j}"], err_msg=f"window {i},{j}")


def test_files_without_an_index_take_the_cpu(golden):  # noqa: F811
    """Bare JPEGs, progressive files, files with restart markers: not planned, decoded by
    the CPU in the same batch, TF's pixels."""
    z, n = golden
    work = [(_data(z, i), tuple(int(v) for v in z["windows"][i, 0])) for i in range(n)]
    recs, planned = launch.plan_batch([p for p, _ in work], [b for _, b in work])
    assert not planned.any()
    for i, got in enumerate(launch.decode([p for p, _ in work], [b for _, b in work])):
        np.testing.assert_array_equal(got, z[f"crop_{i}_0"])


def test_damaged_bytes_are_flagged_or_decoded_as_the_cpu_does(golden):  # noqa: F811
    """Flipped bytes in the entropy-coded data of an indexed file: the device either
    decodes the CPU's pixels or flags the image (then the CPU decodes it); never a crash or
    a read outside the record."""
    rng = np.random.default_rng(4)
    z, _ = golden
    jpeg = _data(z, 1)
    data = np.frombuffer(jw.index(jpeg), np.uint8)
    h, w = jw.header(data)
    sos = jpeg.index(b"\xff\xda") + 20
    work = []
    for _ in range(300):
        bad = data.copy()
        for _ in range(int(rng.integers(1, 4))):
            bad[rng.integers(sos, len(jpeg) - 2)] ^= np.uint8(rng.integers(1, 256))
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        work.append((bad, (y, x, int(rng.integers(8, h - y + 1)),
                           int(rng.integers(8, w - x + 1)))))
    payloads, boxes = [p for p, _ in work], [b for _, b in work]
    recs, planned = launch.plan_batch(payloads, boxes)
    recs[~planned] = 0
    out, starts, flags = launch.run(recs)
    same = flagged = 0
    for i, (data_i, win) in enumerate(work):
        if not planned[i]:
            continue
        if flags[i]:
            flagged += 1
            continue
        try:
            want = jw.decode_window(data_i, *win)
        except ValueError:
            continue   # libjpeg gave up where the device found consistent bits: rare
        np.testing.assert_array_equal(out[starts[i]:starts[i + 1]].reshape(win[2], win[3], 3),
                                      want, err_msg=str(win))
        same += 1
    assert flagged > 10 and same > 100, (flagged, same)


def test_crafted_index_is_flagged_or_decoded_as_the_cpu_does(golden):  # noqa: F811
    """An index that passes its hash but lies (bit positions, predictors): refused by the
    plan, flagged by the device, or the CPU's pixels."""
    rng = np.random.default_rng(5)
    z, _ = golden
    jpeg = _data(z, 5)
    body = jw.index(jpeg)[len(jpeg):-16]
    h, w = jw.header(jpeg)
    work = []
    for trial in range(300):
        bad = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            bad[rng.integers(0, len(bad))] = rng.integers(0, 256)
        data = _with_index(jpeg, bad)
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        work.append((data, (y, x, int(rng.integers(8, h - y + 1)),
                            int(rng.integers(8, w - x + 1)))))
    recs, planned = launch.plan_batch([p for p, _ in work], [b for _, b in work])
    recs[~planned] = 0
    out, starts, flags = launch.run(recs)
    for i, (data, win) in enumerate(work):
        if planned[i] and not flags[i]:
            try:
                want = jw.decode_window(data, *win)
            except ValueError:
                continue
            np.testing.assert_array_equal(
                out[starts[i]:starts[i + 1]].reshape(win[2], win[3], 3), want, str(win))


def test_plan_refuses_a_record_that_does_not_fit(golden):  # noqa: F811
    """A buffer too small for the window's bytes: PLAN_CPU, nothing written past it."""
    z, n = golden
    data = _golden_indexable(z, n)[0]
    h, w = jw.header(data)
    full = np.zeros(R.capacity(h, w, len(data)), np.uint8)
    used = R.plan(data, 0, 0, h // 2, w // 2, full)
    assert used > 4 * R.SEGS
    small = np.full(used + 64, 7, np.uint8)
    assert R.plan(data, 0, 0, h // 2, w // 2, small[:used - 8]) == R.PLAN_CPU
    assert (small[used - 8:] == 7).all()


SIMULATOR = """
import json, sys
import numpy as np
from vit_speedrun.jpeg import window as jw
from vit_speedrun.jpeg.device import launch
from test_window import _encoded
import skimage.data
photo = skimage.data.chelsea()
cases = json.loads(sys.argv[1])
work = []
for sampling, h, w, boxes in cases:
    ix = jw.index(_encoded(photo, sampling, h, w))
    work += [(ix, tuple(b)) for b in boxes]
recs, planned = launch.plan_batch([p for p, _ in work], [b for _, b in work])
recs[~planned] = 0
out, starts, flags = launch.run(recs, "cuda", threads=32)
cpu, _, cflags = launch.run(recs, "cpu")
assert planned.all() and not flags.any() and not cflags.any(), (planned, flags)
assert np.array_equal(out, cpu)
for i, (p, b) in enumerate(work):
    assert np.array_equal(out[starts[i]:starts[i + 1]].reshape(b[2], b[3], 3),
                          jw.decode_window(p, *b)), b
print("simulated", len(work), "windows", len(out), "pixels")
"""


def test_cuda_kernels_in_the_simulator():
    """The CUDA kernels (kernels.py's bodies compiled as device functions, one kernel per
    stage, launched over a grid) in numba's CUDA simulator, which runs them as Python:
    the same pixels as the CPU twin and the CPU decode. Small windows: it is slow."""
    cases = [["4:2:0", 24, 40, [[3, 17, 9, 7], [16, 0, 8, 20]]],
             ["4:2:2", 16, 48, [[0, 33, 5, 6]]], ["gray", 16, 24, [[2, 9, 4, 5]]]]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(str(ROOT / p) for p in ("", "tests", "tests/jpeg")))
    done = subprocess.run([sys.executable, "-c", SIMULATOR, json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulated 4 windows" in done.stdout


def test_damaged_and_crafted_files_read_inside_their_arrays(tmp_path):
    """The two tests above again with numba's bounds checks compiled in (a fresh cache):
    damaged bytes and lying indexes never make a kernel index outside an array."""
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
         "damaged_bytes or crafted_index"], env=env, capture_output=True, text=True,
        timeout=900, cwd=ROOT)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:]
