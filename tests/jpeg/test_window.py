"""jpeg_window must give TensorFlow's pixels exactly: tf.io.decode_jpeg for whole images and
tf.image.decode_and_crop_jpeg for windows (tests/data/tf_decode.npz, README there),
through the numba path the FFCV decoder uses; and fail cleanly on bad input."""
import io
import json
import struct
import subprocess

import numpy as np
import pytest
from numba import njit
from PIL import Image

from vit_speedrun.jpeg import window as jw
from conftest import DATA

GOLDEN_DECODE = DATA / "tf_decode.npz"


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN_DECODE.exists():
        pytest.fail(f"golden file {GOLDEN_DECODE} is missing: it ships in tests/data")
    z = np.load(GOLDEN_DECODE)
    n = len(json.loads(bytes(z["index_json"]).decode()))
    assert n == 13 and z["windows"].shape == (n, 3, 4)
    return z, n


def _data(z, i):
    return z[f"data_{i}"].tobytes()


def test_full_decode_equals_tf_decode_jpeg(golden):
    z, n = golden
    for i in range(n):
        ref = z[f"decoded_{i}"]
        assert jw.header(_data(z, i)) == ref.shape[:2]
        np.testing.assert_array_equal(jw.decode(_data(z, i)), ref, err_msg=f"file {i}")


def test_window_decode_equals_tf_decode_and_crop(golden):
    z, n = golden
    for i in range(n):
        for j in range(3):
            y, x, h, w = (int(v) for v in z["windows"][i, j])
            np.testing.assert_array_equal(jw.decode_window(_data(z, i), y, x, h, w),
                                          z[f"crop_{i}_{j}"], err_msg=f"window {i},{j}")


def test_window_is_not_decode_then_slice(golden):
    """Where TF's crop differs from its full decode sliced, ours differs the same way:
    we decode the window, not the image."""
    z, n = golden
    differ = 0
    for i in range(n):
        full = jw.decode(_data(z, i))
        for j in range(3):
            y, x, h, w = (int(v) for v in z["windows"][i, j])
            same = np.array_equal(jw.decode_window(_data(z, i), y, x, h, w),
                                  full[y:y + h, x:x + w])
            assert same == bool(z["crop_equals_slice"][i, j]), f"window {i},{j}"
            differ += not same
    assert differ == 5


@njit(nogil=True)
def _decode_all(data, size, windows, out):
    """The FFCV-decoder way: ctypes functions called from nopython code."""
    hw = np.zeros(2, np.int32)
    codes = np.zeros(len(windows) + 1, np.int64)
    codes[0] = jw.header_c(data.ctypes.data, size, hw.ctypes.data)
    at = 0
    for k in range(len(windows)):
        y, x, h, w = windows[k, 0], windows[k, 1], windows[k, 2], windows[k, 3]
        codes[k + 1] = jw.decode_window_c(data.ctypes.data, size, y, x, h, w,
                                          out[at:].ctypes.data, 3 * w)
        at += 3 * h * w
    return codes, hw


def test_numba_path_equals_tf_and_returns_error_codes(golden):
    z, n = golden
    for i in range(n):
        data = z[f"data_{i}"]
        height, width = z[f"decoded_{i}"].shape[:2]
        windows = np.concatenate([z["windows"][i].astype(np.int64),
                                  [[0, 0, height, width], [1, 0, height, width]]])
        out = np.zeros(int((windows[:, 2] * windows[:, 3]).sum()) * 3, np.uint8)
        codes, hw = _decode_all(data, data.size, windows, out)
        assert tuple(hw) == (height, width)
        assert list(codes) == [0, 0, 0, 0, 0, jw.ERR_WINDOW]
        at = 0
        for j, ref in enumerate([z[f"crop_{i}_{j}"] for j in range(3)]
                                + [z[f"decoded_{i}"]]):
            np.testing.assert_array_equal(out[at:at + ref.size].reshape(ref.shape), ref)
            at += ref.size
    # Half a file: a window in the top rows decodes (it never reads further), one near
    # the bottom is an error; header and windows checked as above.
    half = z["data_0"][:z["data_0"].size // 2]
    codes, _ = _decode_all(half, half.size, np.array([[0, 0, 16, 16], [300, 0, 16, 16]]),
                           np.zeros(2 * 16 * 16 * 3, np.uint8))
    assert list(codes) == [0, 0, jw.ERR_DATA]


def test_threads_decode_the_same(golden):
    """FFCV's decoder calls it from several threads at once: the C code must be re-entrant."""
    from concurrent.futures import ThreadPoolExecutor
    z, n = golden
    jobs = [(i, j) for i in range(n) for j in range(3)] * 4
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda ij: jw.decode_window(
            _data(z, ij[0]), *(int(v) for v in z["windows"][ij])), jobs))
    for (i, j), out in zip(jobs, outs):
        np.testing.assert_array_equal(out, z[f"crop_{i}_{j}"])


def test_ffcv_imdecode_full_decode_equals_tf(golden):
    """FFCV's imdecode (TurboJPEG, TJFLAG_FASTDCT) equals TF's full decode, so the eval
    path (whole images) may keep using it; only windows need jpeg_window."""
    from ffcv.libffcv import imdecode
    z, n = golden
    for i in range(n):
        ref = z[f"decoded_{i}"]
        h, w = ref.shape[:2]
        out = np.zeros_like(ref)
        assert imdecode(z[f"data_{i}"], out, h, w, h, w, 0, 0, 1, 1, False, False) == 0
        np.testing.assert_array_equal(out, ref, err_msg=f"file {i}")


def test_bad_input_raises_a_clear_error(golden):
    z, _ = golden
    data = _data(z, 0)
    png = io.BytesIO()
    Image.fromarray(z["decoded_0"]).save(png, "PNG")
    cases = {b"": "empty data", png.getvalue(): "Not a JPEG file",
             data[:len(data) // 2]: "Premature end", data[:300]: "Premature end",
             b"\xff\xd8" + bytes(500): "not a decodable JPEG"}
    for bad, message in cases.items():
        with pytest.raises(ValueError, match=message):
            jw.decode(bad)
    with pytest.raises(ValueError, match="1-D uint8"):
        jw.decode(np.zeros(10, np.float32))


@pytest.mark.parametrize("window", [(0, 0, 376, 500), (-1, 0, 5, 5), (0, 499, 1, 2),
                                    (375, 0, 1, 1), (0, 0, 0, 5), (0, 0, 5, -1)])
def test_window_outside_the_image_raises(golden, window):
    with pytest.raises(ValueError, match="window"):
        jw.decode_window(_data(golden[0], 0), *window)


def test_adobe_cmyk_decodes_to_the_right_colours(photos):
    """TF converts CMYK itself (r = k * c // 255 with an Adobe marker); a sign error would
    invert the colours."""
    rgb = photos["astronaut"][:200, :240]
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    out = jw.decode(buf.getvalue())
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 4


def test_build_links_rpath_origin_and_bundle_copies_libjpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(jw, "BUILD", tmp_path)
    monkeypatch.setattr(jw, "LIBRARY", tmp_path / "libjpeg_window.so")
    assert jw.ensure_built() == tmp_path / "libjpeg_window.so"
    dynamic = subprocess.run(["readelf", "-d", str(jw.LIBRARY)], capture_output=True,
                             text=True, check=True).stdout
    assert "$ORIGIN" in dynamic and "libjpeg.so" in dynamic
    bundled = jw.bundle()
    assert bundled.parent == tmp_path and bundled.name.startswith("libjpeg.so.")
    assert bundled.stat().st_size > 100_000


def test_missing_compiler_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(jw, "BUILD", tmp_path)
    monkeypatch.setattr(jw, "LIBRARY", tmp_path / "libjpeg_window.so")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no-such-cc.*apt-get install gcc libjpeg-dev"):
        jw.ensure_built()


# ------------------------------------------------- restart-indexed files (write_mode=restart)
def _random_windows(rng, height, width, n):
    """Edges, single rows and columns, the whole image, then n uniform windows."""
    wins = [(0, 0, height, width), (height - 1, width - 1, 1, 1), (0, width - 1, height, 1),
            (height - 1, 0, 1, width), (0, 0, 1, 1)]
    for y in range(0, height, 16):   # first and last rows on and beside MCU boundaries
        for h in (1, 2, 15, 16, 17, 31, 32):
            if y + h <= height:
                x = int(rng.integers(0, width))
                wins.append((y, x, h, int(rng.integers(1, width - x + 1))))
                if y + 1 + h <= height:
                    wins.append((y + 1, 0, h, width))
    for _ in range(n):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        wins.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)),
                     h, w))
    return wins


def test_restart_transcode_decodes_like_tf(golden):
    """The transcode keeps every pixel of TF's full decode and of each golden
    decode_and_crop_jpeg window, and its windows take the MCU-copying path."""
    z, n = golden
    for i in range(n):
        data = jw.restart(_data(z, i))
        assert b"\xff\xdd\x00\x04\x00\x01" in data, i  # DRI = 1 MCU
        assert jw.fast_path(data) == "restart", i
        assert jw.fast_path(_data(z, i)) == "plain"
        np.testing.assert_array_equal(jw.decode(data), z[f"decoded_{i}"], err_msg=f"file {i}")
        for j in range(3):
            y, x, h, w = (int(v) for v in z["windows"][i, j])
            np.testing.assert_array_equal(jw.decode_window(data, y, x, h, w),
                                          z[f"crop_{i}_{j}"], err_msg=f"window {i},{j}")


SAMPLINGS = {"4:2:0": "IMWRITE_JPEG_SAMPLING_FACTOR_420",
             "4:2:2": "IMWRITE_JPEG_SAMPLING_FACTOR_422",
             "4:4:4": "IMWRITE_JPEG_SAMPLING_FACTOR_444",
             "4:4:0": "IMWRITE_JPEG_SAMPLING_FACTOR_440",
             "4:1:1": "IMWRITE_JPEG_SAMPLING_FACTOR_411"}


def _encoded(photo, sampling, height, width):
    """A height x width crop of the tiled photo as a JPEG: cv2 at quality 90 for the chroma
    layouts in SAMPLINGS, PIL at 85 for "progressive", "gray" and "optimized" (tables)."""
    import cv2
    img = np.ascontiguousarray(np.tile(photo, (2, 2, 1))[:height, :width])
    if sampling in SAMPLINGS:
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [
            cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            getattr(cv2, SAMPLINGS[sampling])])
        return buf.tobytes()
    out = io.BytesIO()
    pil = Image.fromarray(img)
    (pil.convert("L") if sampling == "gray" else pil).save(
        out, "JPEG", quality=85, progressive=sampling == "progressive",
        optimize=sampling == "optimized")
    return out.getvalue()


@pytest.mark.parametrize("sampling", [*SAMPLINGS, "progressive", "gray"])
def test_restart_windows_equal_the_plain_path(photos, sampling):
    """Every chroma layout, odd and tiny sizes, edge and one-pixel windows: a restart file's
    window (only its MCUs decoded) equals the original file's (the path checked against TF
    above), which rules out the traps of the smaller image (the upsampler libjpeg picks by
    width, the context rows of vertically subsampled chroma, the true edges)."""
    rng = np.random.default_rng(len(sampling))
    photo = photos["astronaut"]
    for height, width in [(375, 500), (333, 251), (17, 40), (40, 7), (9, 8), (1, 1), (2, 3)]:
        data = _encoded(photo, sampling, height, width)
        fast = jw.restart(data)
        assert jw.fast_path(fast) == "restart", (sampling, height, width)
        for y, x, h, w in _random_windows(rng, height, width, 40):
            np.testing.assert_array_equal(
                jw.decode_window(fast, y, x, h, w), jw.decode_window(data, y, x, h, w),
                err_msg=f"{sampling} {height}x{width} window {(y, x, h, w)}")


def test_truncated_restart_file_raises(golden):
    data = jw.restart(_data(golden[0], 0))
    h, w = jw.header(data)
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        jw.decode_window(data[:len(data) // 2], h - 20, 0, 20, w)
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        jw.restart(_data(golden[0], 0)[:len(data) // 3])


def test_damaged_restart_files_fail_cleanly(golden):
    """The restart path reads the header itself: flipped bytes anywhere (header, tables,
    entropy data, markers) and truncations give pixels or a ValueError, never a crash or a
    read outside the bytes (the loader thread would take the whole run down)."""
    rng = np.random.default_rng(0)
    data = np.frombuffer(jw.restart(_data(golden[0], 1)), np.uint8)
    h, w = jw.header(data)
    sos = data.tobytes().index(b"\xff\xda")
    outcomes = {"pixels": 0, "error": 0}
    for trial in range(1500):
        bad = data.copy()
        at = rng.integers(0, sos + 40) if trial % 2 else rng.integers(0, len(data))
        bad[at] = rng.integers(0, 256)
        if trial % 5 == 0:
            bad = bad[:rng.integers(2, len(bad))]
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        try:
            jw.decode_window(bad.copy(), y, x, int(rng.integers(1, h - y)),
                             int(rng.integers(1, w - x)))
            outcomes["pixels"] += 1
        except ValueError:
            outcomes["error"] += 1
    assert min(outcomes.values()) > 50, outcomes


# ------------------------------ window-indexed original bytes (write_mode=original, train)
def _with_index(jpeg, body):
    """jpeg + an index body with a valid footer (its FNV-1a hash), as a crafted file would
    carry one: a lying body gets past the hash to the checks behind it."""
    fnv = 2166136261
    for c in body:
        fnv = ((fnv ^ c) * 16777619) & 0xFFFFFFFF
    return jpeg + bytes(body) + struct.pack("<II", len(body), fnv) + b"JWINDEX1"


def _golden_indexable(z, n):
    """{file: indexed bytes} for the golden files that can be indexed; the others (the
    progressive ones and those with restart markers) must refuse."""
    out = {}
    for i in range(n):
        meta = json.loads(bytes(z["index_json"]).decode())[i]["header"]
        ix = jw.index(_data(z, i))
        if meta["sof"] != "baseline" or meta["restart_interval"]:
            assert ix is None, i
        else:
            assert ix is not None, i
            out[i] = ix
    return out


def test_window_index_decodes_like_tf(golden):
    """Original bytes + index: the bytes come back unchanged, the full decode and every
    golden decode_and_crop_jpeg window are TF's, and the windows take the index path."""
    z, n = golden
    indexed = _golden_indexable(z, n)
    assert len(indexed) == 9
    for i, data in indexed.items():
        assert data[:len(_data(z, i))] == _data(z, i) and jw.jpeg_bytes(data) == _data(z, i)
        assert jw.fast_path(data) == "index" and jw.jpeg_bytes(_data(z, i)) == _data(z, i)
        np.testing.assert_array_equal(jw.decode(data), z[f"decoded_{i}"], err_msg=f"file {i}")
        for j in range(3):
            y, x, h, w = (int(v) for v in z["windows"][i, j])
            got = jw.decode_window_indexed(data, y, x, h, w)
            if got is None:  # the whole image: nothing to leave out, the plain path
                assert (h, w) == jw.header(data), (i, j)
                got = jw.decode_window(data, y, x, h, w)
            np.testing.assert_array_equal(got, z[f"crop_{i}_{j}"], err_msg=f"window {i},{j}")


@pytest.mark.parametrize("sampling", [*SAMPLINGS, "gray", "optimized"])
@pytest.mark.parametrize("span", [32, 64, 96])
def test_window_index_equals_the_plain_path(photos, sampling, span):
    """Every chroma layout, optimised Huffman tables, odd and tiny sizes, edge and one-pixel
    windows, spans of one to six MCUs: the index path's window equals the
    plain path's, and it is the path taken wherever the window leaves something out."""
    rng = np.random.default_rng(len(sampling) + span)
    photo = photos["astronaut"]
    taken = tested = 0
    for height, width in [(375, 500), (333, 251), (17, 40), (40, 17), (9, 24), (2, 33)]:
        data = _encoded(photo, sampling, height, width)
        ix = jw.index(data, span)
        if ix is None:  # one MCU wide (4:1:1's are 32 px): nothing to leave out; or a
            # tiny image's optimised tables lack a code the lead MCU needs
            assert (sampling == "4:1:1" and width <= 32) or (
                sampling == "optimized" and min(height, width) < 64), (sampling, height, width)
            continue
        assert jw.jpeg_bytes(ix) == data, (sampling, height, width)
        for y, x, h, w in _random_windows(rng, height, width, 40):
            plain = jw.decode_window(data, y, x, h, w)
            np.testing.assert_array_equal(jw.decode_window(ix, y, x, h, w), plain,
                                          err_msg=f"{sampling} {height}x{width} {(y, x, h, w)}")
            fast = jw.decode_window_indexed(ix, y, x, h, w)
            tested += 1
            if fast is not None:
                taken += 1
                np.testing.assert_array_equal(fast, plain)
    assert tested >= 90 and taken > tested // 4, (taken, tested)


def test_window_index_with_the_wrong_points_fails_the_writers_check(golden):
    """write_ffcv.with_index decodes every index point against the full decode: an index
    built for another image of the same size (a valid footer, wrong bit positions and
    predictors) is caught; the right one passes."""
    import write_ffcv
    z, n = golden
    data = _data(z, 0)
    pixels = jw.decode(data)
    out = io.BytesIO()   # another image, the same size and sampling: the same MCU grid
    Image.fromarray(pixels[::-1].copy()).save(out, "JPEG", quality=75, subsampling=2)
    other = out.getvalue()
    assert write_ffcv.with_index(data, pixels, 32) is not None
    wrong = jw.index(other)
    swapped = data + wrong[len(other):]
    assert jw.fast_path(swapped) == "index"
    original_index = jw.index
    try:
        jw.index = lambda d, span=32: swapped
        assert write_ffcv.with_index(data, pixels, 32) is None
    finally:
        jw.index = original_index


def test_damaged_window_index_never_changes_pixels(golden):
    """The index is guarded by its hash: a flipped byte in the index or its footer takes the
    plain path (TF's pixels, unchanged); damage to the JPEG's bytes gives pixels or a
    ValueError, never a crash or a read outside the bytes."""
    rng = np.random.default_rng(1)
    z, _ = golden
    jpeg = _data(z, 1)
    data = np.frombuffer(jw.index(jpeg), np.uint8)
    h, w = jw.header(data)
    sos = jpeg.index(b"\xff\xda")
    outcomes = {"pixels": 0, "error": 0}
    for trial in range(1500):
        bad = data.copy()
        in_index = trial % 2 == 0
        at = (rng.integers(len(jpeg), len(data)) if in_index else
              rng.integers(0, sos + 40) if trial % 4 == 1 else rng.integers(0, len(jpeg)))
        bad[at] ^= np.uint8(rng.integers(1, 256))
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        win = (y, x, int(rng.integers(1, h - y)), int(rng.integers(1, w - x)))
        if in_index:
            assert jw.fast_path(bad) == "plain"
            np.testing.assert_array_equal(jw.decode_window(bad, *win),
                                          jw.decode_window(jpeg, *win))
            continue
        try:
            jw.decode_window(bad.copy(), *win)
            outcomes["pixels"] += 1
        except ValueError:
            outcomes["error"] += 1
    assert min(outcomes.values()) > 20, outcomes


def test_crafted_window_index_fails_cleanly(golden):
    """An index that passes the hash but lies (mutated, then re-hashed, as a crafted file
    would) gives pixels or a ValueError, never a crash or a read outside the bytes: the
    reader checks every position and predictor it uses."""
    rng = np.random.default_rng(2)
    z, _ = golden
    jpeg = _data(z, 5)
    body = jw.index(jpeg)[len(jpeg):-16]
    h, w = jw.header(jpeg)
    for trial in range(300):
        bad = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            bad[rng.integers(0, len(bad))] = rng.integers(0, 256)
        if trial % 7 == 0:
            bad = bad[:rng.integers(1, len(bad))]
        data = _with_index(jpeg, bad)
        assert jw.fast_path(data) == "index"
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        try:
            jw.decode_window(data, y, x, int(rng.integers(1, h - y)), int(rng.integers(1, w - x)))
        except ValueError:
            pass
