"""TF's image ops as big_vision's ImageNet preprocessing runs them, as numba kernels.

Why this file exists: the paper's numbers come from TensorFlow's own kernels, and the
nearest library equivalents are different functions, not approximations of them: an
area-uniform crop sampler (torchvision's, FFCV's) gives larger crops than TF's, which draws
a uniform height (mean 34% of a 375x500 image, not 43%), OpenCV's INTER_AREA resize
differs from TF's bilinear on most values of an upsampled crop, and a centre crop of
0.875 x the shorter side resized in one step is another sampling grid than
resize_small(256) + central_crop(224). Each kernel below repeats the TF C++ kernel's
arithmetic operation by operation (float32 where it is float32, double where C++ promotes
to double, the same summation order, round half to even where it calls lrintf), so that
the outputs equal TF's bit for bit (tests/pp/test_tf_image.py checks them against
tests/data/tf_*.npz, made with TF 2.15.1).

- Train crop (RECIPE.md, "Train preprocessing" 1): `crop_aspect` + `generate_random_crop`
  are one attempt of `sample_distorted_bounding_box` (TF's GenerateRandomCrop); the random
  numbers come from the caller (rand_augment.sample_crop feeds its counter-based streams).
- Train resize (step 2): `resize_bilinear`, tf.image.resize(bilinear, antialias=False)
  with half-pixel centres, clipped and truncated to uint8 as big_vision's `resize` does.
- Eval (`resize_small(256)|central_crop(224)`): `resize_small_size`, `resize_area` (TF's
  ResizeArea) and `EvalDecoder`, the FFCV decoder that runs them over a batch.

Every kernel pins fastmath=False and error_model="python": numba otherwise inherits them
from the caller, and FFCV compiles its stages with fastmath=True (see pp/randaug_ops.py).

`python -m vit_speedrun.pp.tf_image --bench` times resize_bilinear against FFCV's resize_crop.
"""
import argparse
import time

import numpy as np
from numba import njit

from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode
from ffcv.pipeline.compiler import Compiler

_jit = njit(cache=True, nogil=True, fastmath=False, error_model="python")
_F0, _HALF, _ONE = np.float32(0.0), np.float32(0.5), np.float32(1.0)
_U8_MAX = np.float32(255.0)
_EPS = np.float64(np.float32(1e-7))     # GenerateRandomCrop's kEps, a float used in double


# ----------------------------------------------------------------------------- crop
@_jit
def _lrint(v):
    """C's lrintf: float32 to the nearest integer, ties to even."""
    return np.int64(np.rint(v))


@_jit
def _below(u, n):
    """An integer uniform in [0, n) from a uniform float u in [0, 1)."""
    return min(np.int64(u * n), n - 1)


@_jit
def crop_aspect(u, aspect_lo, aspect_hi):
    """The attempt's aspect ratio as TF draws it, in float32: RandFloat() * (hi - lo) + lo.
    RandFloat has 23 random bits (multiples of 2^-23 in [0, 1)); u supplies them."""
    r = np.float32(np.int64(u * 8388608.0)) * np.float32(1.0 / 8388608.0)
    lo, hi = np.float32(aspect_lo), np.float32(aspect_hi)
    return r * (hi - lo) + lo


@_jit
def generate_random_crop(height, width, area_lo, area_hi, aspect, u_height, u_y, u_x):
    """One attempt of TF's GenerateRandomCrop: (ok, y, x, h, w).

    height, width: the image; area_lo, area_hi: the relative area range (float32, as the
    op's attribute); aspect: crop_aspect's float32 w/h; u_height, u_y, u_x: uniforms in
    [0, 1) for TF's three integer draws (random->Uniform(n) = floor(u * n) here). The
    height, not the area, is uniform; ok is False when rounding leaves the box outside the
    area range or the image (the caller then tries another aspect).
    """
    height, width = np.int64(height), np.int64(width)
    ar = np.float32(aspect)
    min_area = np.float32(np.float32(area_lo) * np.float32(width)) * np.float32(height)
    max_area = np.float32(np.float32(area_hi) * np.float32(width)) * np.float32(height)
    h = _lrint(np.sqrt(min_area / ar))
    max_h = _lrint(np.sqrt(max_area / ar))
    if _lrint(np.float32(max_h) * ar) > width:
        # C++ evaluates (width + 0.5 - kEps) / aspect in double, then truncates
        max_h = np.int64((np.float64(width) + 0.5 - _EPS) / np.float64(ar))
        if _lrint(np.float32(max_h) * ar) > width:
            max_h -= 1
    max_h = min(max_h, height)
    if h >= max_h:
        h = max_h
    else:
        h += _below(u_height, max_h - h + 1)
    w = _lrint(np.float32(h) * ar)
    area = np.float32(w * h)
    if area < min_area:
        h += 1
        w = _lrint(np.float32(h) * ar)
        area = np.float32(w * h)
    if area > max_area:
        h -= 1
        w = _lrint(np.float32(h) * ar)
        area = np.float32(w * h)
    if (area < min_area or area > max_area or w > width or h > height or w <= 0
            or h <= 0):
        return False, np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    # TF's off-by-one: Uniform(H - h) never reaches the last valid offset H - h
    y = _below(u_y, height - h) if h < height else np.int64(0)
    x = _below(u_x, width - w) if w < width else np.int64(0)
    return True, y, x, h, w


# ----------------------------------------------------------------------------- bilinear
@_jit
def _bilinear_axis(in_size, out_size):
    """TF's compute_interpolation_weights with the HalfPixelScaler, for one axis:
    lower and upper source index and the float32 fraction of each output index."""
    scale = np.float32(in_size) / np.float32(out_size)
    lo = np.empty(out_size, np.int64)
    hi = np.empty(out_size, np.int64)
    frac = np.empty(out_size, np.float32)
    for i in range(out_size):
        src = (np.float32(i) + _HALF) * scale - _HALF
        f = np.floor(src)
        lo[i] = max(np.int64(f), 0)
        hi[i] = min(np.int64(np.ceil(src)), in_size - 1)
        frac[i] = src - f
    return lo, hi, frac


@_jit
def _lerp_row(row, as_float, cols_lo, cols_hi, fx, out):
    """One source row (the crop's columns) mixed along x: out[k] = a + (b - a) * fx[k] in
    float32. Converting the row to float32 first, then gathering floats, is ~1.4x faster
    than gathering bytes; unsigned indices spare numba's negative-index checks."""
    for k in range(row.size):
        as_float[k] = np.float32(row[k])
    for k in range(out.size):
        a = as_float[cols_lo[k]]
        out[k] = a + (as_float[cols_hi[k]] - a) * fx[k]


@_jit
def resize_bilinear(src, y, x, h, w, dst):
    """dst[...] = TF's bilinear resize of src[y:y+h, x:x+w] (half-pixel centres, float32,
    no antialias), clipped to [0, 255] and truncated to uint8, as big_vision's `resize`.

    src: C-contiguous uint8 HxWx3 (pass y = x = 0 and its own h, w for a separate crop);
    dst: C-contiguous uint8 out_h x out_w x 3. TF mixes each output value along x first
    (top and bottom rows), then along y; the x-mixed source rows depend only on the source
    row, so each is computed once and reused by the output rows that share it (exact).
    """
    y, x, h, w = np.int64(y), np.int64(x), np.int64(h), np.int64(w)
    out_h, out_w = dst.shape[0], dst.shape[1]
    n = out_w * 3
    row_len = src.shape[1] * 3
    flat = src.reshape(-1)
    out = dst.reshape(-1)
    ylo, yhi, fy = _bilinear_axis(h, out_h)
    xlo, xhi, fx1 = _bilinear_axis(w, out_w)
    cols_lo = np.empty(n, np.uint64)
    cols_hi = np.empty(n, np.uint64)
    fx = np.empty(n, np.float32)
    for j in range(out_w):
        for c in range(3):
            cols_lo[3 * j + c] = xlo[j] * 3 + c
            cols_hi[3 * j + c] = xhi[j] * 3 + c
            fx[3 * j + c] = fx1[j]
    as_float = np.empty(w * 3, np.float32)
    mixed = np.empty((2, n), np.float32)      # two x-mixed source rows
    held = np.full(2, -1, np.int64)           # the source row each slot holds
    first, last = x * 3, (x + w) * 3
    for i in range(out_h):
        # slot t holds source row r0 (top), slot 1 - t row r1 (bottom); keep what we have
        r0, r1 = y + ylo[i], y + yhi[i]
        t = np.int64(1)
        if held[0] == r0 or (held[1] != r0 and held[1] == r1):
            t = np.int64(0)
        if held[t] != r0:
            _lerp_row(flat[r0 * row_len + first:r0 * row_len + last], as_float, cols_lo,
                      cols_hi, fx, mixed[t])
            held[t] = r0
        b = 1 - t
        if held[b] != r1:
            if r1 == r0:
                mixed[b, :] = mixed[t]
            else:
                _lerp_row(flat[r1 * row_len + first:r1 * row_len + last], as_float, cols_lo,
                          cols_hi, fx, mixed[b])
            held[b] = r1
        top, bottom = mixed[t], mixed[b]
        f = fy[i]
        o = out[i * n:(i + 1) * n]
        for k in range(n):
            v = top[k] + (bottom[k] - top[k]) * f
            o[k] = np.uint8(min(max(v, _F0), _U8_MAX))
    return dst


# ----------------------------------------------------------------------------- area
@_jit
def resize_small_size(height, width, smaller_size):
    """big_vision's resize_small size rule: (new_h, new_w) with the ratio in float32 and
    tf.round (half to even): 681 * 0.5 = 340.5 -> 340."""
    ratio = np.float32(smaller_size) / np.float32(min(height, width))
    return (np.int64(np.rint(np.float32(height) * ratio)),
            np.int64(np.rint(np.float32(width) * ratio)))


@_jit
def _area_weight(v, lo, hi, scale):
    """The share of source cell [v, v + 1) inside [lo, hi), as ResizeArea computes it."""
    fv = np.float32(v)
    fv1 = np.float32(v + 1)
    if fv < lo:
        return scale if fv1 > hi else fv1 - lo
    return hi - fv if fv1 > hi else _ONE


@_jit
def _area_axis(in_size, out_size, first, count):
    """ResizeArea's cached interpolation of output indices first..first+count-1: start and
    end source index (end exclusive, may pass the edge: the kernel clamps reads) and the
    float32 weights of the first and last cell."""
    scale = np.float32(in_size) / np.float32(out_size)
    start = np.empty(count, np.int64)
    end = np.empty(count, np.int64)
    w_start = np.empty(count, np.float32)
    w_end = np.empty(count, np.float32)
    for k in range(count):
        lo = np.float32(first + k) * scale
        hi = np.float32(first + k + 1) * scale
        start[k] = np.int64(np.floor(lo))
        end[k] = np.int64(np.ceil(hi))
        w_start[k] = _area_weight(start[k], lo, hi, scale)
        w_end[k] = _area_weight(end[k] - 1, lo, hi, scale)
    return start, end, w_start, w_end, scale


@_jit
def resize_area(src, out_h, out_w, y0, x0, dst):
    """dst = rows y0.., columns x0.. of TF's ResizeArea of src to out_h x out_w, clipped
    and truncated to uint8 (big_vision's resize_small casts so). src: C-contiguous uint8
    HxWx3; dst: uint8 rows x cols x 3.

    The window lets the eval path compute only the central crop: each output pixel
    depends on its own coordinates alone, so a window equals the same slice of the full
    resize. The sums follow TF's ComputePatchSumOf3Channels: per source row, first cell
    times its weight, the inner cells, the last cell times its weight (float32, in that
    order); the row sums times their row weights, added in row order; times
    1 / (height_scale * width_scale) (that reciprocal in double, as C++ promotes 1.0).
    """
    in_h, in_w = src.shape[0], src.shape[1]
    rows, cols = dst.shape[0], dst.shape[1]
    ys, ye, _, _, hs = _area_axis(in_h, out_h, y0, rows)
    xs, xe, wxs, wxe, ws = _area_axis(in_w, out_w, x0, cols)
    scale = np.float32(1.0 / np.float64(hs * ws))
    flat = src.reshape(-1)
    # flat offsets (unsigned: no negative-index checks) of the clamped first and last cell
    first = np.empty(cols, np.uint64)
    last = np.empty(cols, np.uint64)
    for j in range(cols):
        first[j] = min(max(xs[j], 0), in_w - 1) * 3
        last[j] = min(max(xe[j] - 1, 0), in_w - 1) * 3
    span = 0
    for i in range(rows):
        span = max(span, ye[i] - ys[i])
    wy = np.empty(span, np.float32)
    row_at = np.empty(span, np.uint64)
    one, two = np.uint64(1), np.uint64(2)
    for i in range(rows):
        lo_y = np.float32(y0 + i) * hs
        hi_y = np.float32(y0 + i + 1) * hs
        n_rows = ye[i] - ys[i]
        for k in range(n_rows):
            wy[k] = _area_weight(ys[i] + k, lo_y, hi_y, hs)
            row_at[k] = min(max(ys[i] + k, 0), in_h - 1) * in_w * 3
        for j in range(cols):
            s0 = s1 = s2 = _F0
            for k in range(n_rows):
                c = row_at[k] + first[j]
                t0 = np.float32(flat[c]) * wxs[j]
                t1 = np.float32(flat[c + one]) * wxs[j]
                t2 = np.float32(flat[c + two]) * wxs[j]
                if xs[j] + 1 != xe[j]:
                    for q in range(xs[j] + 1, xe[j] - 1):
                        c = row_at[k] + np.uint64(min(q, in_w - 1) * 3)
                        t0 += np.float32(flat[c])
                        t1 += np.float32(flat[c + one])
                        t2 += np.float32(flat[c + two])
                    c = row_at[k] + last[j]
                    t0 += np.float32(flat[c]) * wxe[j]
                    t1 += np.float32(flat[c + one]) * wxe[j]
                    t2 += np.float32(flat[c + two]) * wxe[j]
                s0 += t0 * wy[k]
                s1 += t1 * wy[k]
                s2 += t2 * wy[k]
            dst[i, j, 0] = np.uint8(min(max(s0 * scale, _F0), _U8_MAX))
            dst[i, j, 1] = np.uint8(min(max(s1 * scale, _F0), _U8_MAX))
            dst[i, j, 2] = np.uint8(min(max(s2 * scale, _F0), _U8_MAX))
    return dst


@_jit
def eval_window(height, width, smaller_size, out_h, out_w):
    """(new_h, new_w, dy, dx): resize_small(smaller_size)'s size and central_crop's
    offsets ((new_h - out_h) // 2, (new_w - out_w) // 2)."""
    nh, nw = resize_small_size(height, width, smaller_size)
    return nh, nw, (nh - out_h) // 2, (nw - out_w) // 2


@_jit
def resize_small_central_crop(src, smaller_size, dst):
    """big_vision's resize_small(smaller_size)|central_crop(dst's size) of one image."""
    nh, nw, dy, dx = eval_window(src.shape[0], src.shape[1], smaller_size, dst.shape[0],
                                 dst.shape[1])
    return resize_area(src, nh, nw, dy, dx, dst)


class EvalDecoder(ResizedCropRGBImageDecoder):
    """big_vision's eval `decode|resize_small(resize_small)|central_crop(output_size)`:
    uint8 HxWx3 per image (follow it with rand_augment.Normalize() for value_range).

    Decodes with FFCV's imdecode (TurboJPEG with TJFLAG_FASTDCT: libjpeg's JDCT_IFAST, TF's
    default), then TF's area resize of the shorter side to `resize_small` (computed only
    over the central output_size window) and truncation to uint8.
    """

    def __init__(self, output_size=224, resize_small=256):
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        super().__init__(tuple(output_size))
        if resize_small < max(output_size):
            raise ValueError(f"EvalDecoder: resize_small={resize_small} is smaller than the "
                             f"crop {output_size}")
        self.resize_small = int(resize_small)

    @property
    def get_crop_generator(self):
        return eval_window

    def generate_code(self):
        jpg = IMAGE_MODES['jpg']
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)   # one dispatcher per Loader, as FFCV does
        smaller_size = self.resize_small

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field['data_ptr'], storage_state)
                height, width = np.uint32(field['height']), np.uint32(field['width'])
                if field['mode'] == jpg:
                    pixels = temp_storage[dst_ix]
                    imdecode_c(image_data, pixels, height, width, height, width, 0, 0, 1, 1,
                               False, False)
                    pixels = pixels.reshape(-1)[:3 * height * width]
                    pixels = pixels.reshape(height, width, 3)
                else:
                    pixels = image_data.reshape(height, width, 3)
                resize_small_central_crop(pixels, smaller_size, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


# ----------------------------------------------------------------------------- bench
def bench(repeats=300, rounds=5, seed=0):
    """{name: (CPU us, wall us)} per 224x224 output: resize_bilinear vs FFCV's resize_crop
    (OpenCV INTER_AREA) on the same inception crops of a 375x500 image, interleaved
    rounds (the machine is shared), best round of each. CPU time counts every thread."""
    from ffcv.libffcv import resize_crop
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    dst = np.empty((224, 224, 3), np.uint8)
    boxes = []
    while len(boxes) < repeats:
        u = rng.random(4)
        ok, y, x, h, w = generate_random_crop(375, 500, 0.05, 1.0,
                                              crop_aspect(u[0], 0.75, 1.33), *u[1:])
        if ok:
            boxes.append((y, x, h, w))
    runs = {"tf_image.resize_bilinear": lambda y, x, h, w: resize_bilinear(img, y, x, h, w, dst),
            "ffcv resize_crop (cv2 INTER_AREA)":
                lambda y, x, h, w: resize_crop(img, y, y + h, x, x + w, dst)}
    times = {name: [] for name in runs}
    for f in runs.values():
        f(*boxes[0])
    for _ in range(rounds):
        for name, f in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for box in boxes:
                f(*box)
            times[name].append(((time.process_time() - c0) / len(boxes) * 1e6,
                                (time.perf_counter() - t0) / len(boxes) * 1e6))
    return {name: (min(c for c, _ in t), min(w for _, w in t)) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument('--bench', action='store_true', help="time the train resize")
    args = p.parse_args(argv)
    if args.bench:
        for name, (cpu, wall) in bench().items():
            print(f"{name:36s} {cpu:7.1f} us CPU {wall:7.1f} us wall per 224x224 output")


if __name__ == '__main__':
    main()
