"""The 16 RandAugment ops of big_vision (pp/archive/autoaugment.py) as numba kernels.

Why this file exists: the paper's preprocessing runs TF ops in float32 and truncates, and
RandAugment changes every training image, so small arithmetic differences would make this
a different recipe. Each kernel below repeats the reference's arithmetic operation by
operation (float32 where TF uses float32, the same summation order, the same rounding),
and `tests/pp/test_randaug_ops.py` checks every case of tests/data/randaug_bigvision.npz against it.

Layout: one small in-place kernel per op, a table `OPS` (name -> kernel), one numba
dispatcher `apply_op_inplace` that the FFCV RandAugment operation calls per image, and
`apply_op` for Python callers. Images are C-contiguous uint8 HxWx3 (the kernels loop over
the flat array, which is what lets LLVM vectorise them); kernels write their result into
`img` and may use `scratch` (same shape) as work space. Nothing image-sized is allocated
per call, only small tables (a LUT, one row of source offsets).

Reference quirks reproduced by default (RECIPE.md, "RandAugment as big_vision runs it"):
- Solarize: the threshold is a uint8 in TF, so 256 (magnitude 10) wraps to 0 and every
  pixel is inverted.
- Contrast: the degenerate gray is sum(histogram) / 256 = num_pixels / 256 (196 for
  224x224), not the mean intensity.
- Posterize: TF clamps shifts to [0, 7], so 0 bits (magnitude < 2.5) keeps the top bit.

`fixed=True` (OFF by default) is our documented correction of the first two:
- `level_to_arg(SOLARIZE, m, negate, fixed=True)` returns min(int(256 f), 255), so at
  magnitude 10 only pixels of value 255 are inverted (no wrap to 0). The Solarize kernel
  itself always treats its threshold as a uint8, like TF.
- Contrast needs the flag in the kernel: `apply_op_inplace(..., fixed=True)` (and
  `apply_op(img, "Contrast", factor, fixed=True)`) blends against the true mean of the
  grayscale image, computed as the later, fixed big_vision/TF code does:
  trunc(sum_k hist[k] * k / num_pixels) in float32.

Run `python -m vit_speedrun.pp.randaug_ops --golden` for the per-op match table against the reference and
`python -m vit_speedrun.pp.randaug_ops --bench` for microseconds per 224x224 image per op.
"""
import argparse
import json
import math
import numbers
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

from vit_speedrun.twin import fma_f32 as _fma32   # float32 a * b + c, rounded once

OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
            "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
            "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
(AUTOCONTRAST, EQUALIZE, INVERT, ROTATE, POSTERIZE, SOLARIZE, COLOR, CONTRAST, BRIGHTNESS,
 SHARPNESS, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, CUTOUT, SOLARIZE_ADD) = range(16)
NUM_ARGS = tuple(0 if i in (AUTOCONTRAST, EQUALIZE, INVERT) else 1 for i in range(16))

MAX_LEVEL = 10.0      # big_vision's _MAX_LEVEL
FILL = 128            # replace value of the geometric ops and Cutout
CUTOUT_CONST = 40     # HParams(cutout_const=40, translate_const=100) of RandAugment
TRANSLATE_CONST = 100

# fastmath and error_model are set explicitly because numba otherwise inherits them from
# the caller: FFCV compiles its pipeline stages with fastmath=True, and the cached build of
# a kernel first compiled from there would then be a fastmath one for every caller
# (hundreds of Rotate pixels off the reference).
_jit = njit(cache=True, nogil=True, fastmath=False, error_model="python")


# ----------------------------------------------------------------------------- helpers
# Kernels view the image as one flat uint8 array (img.reshape(-1), so img and scratch
# must be C-contiguous) and loop over it in simple branch-free loops that LLVM vectorises.

@_jit
def _to_u8(t):
    """TF's clip_by_value(t, 0, 255) then cast to uint8 (truncation toward zero)."""
    return np.uint8(np.int32(min(max(t, np.float32(0.0)), np.float32(255.0))))


@_jit
def _gray(r, g, b):
    """tf.image.rgb_to_grayscale of one uint8 pixel, operation by operation:
    convert_image_dtype multiplies by float32(1/255), the dot product with
    [0.2989, 0.5870, 0.1140] sums left to right in float32, and the conversion back
    multiplies by 255.5 and truncates."""
    s = np.float32(1.0 / 255.0)
    acc = (np.float32(r) * s) * np.float32(0.2989) + (np.float32(g) * s) * np.float32(0.5870)
    acc = acc + (np.float32(b) * s) * np.float32(0.1140)
    return np.uint8(acc * np.float32(255.5))


@_jit
def _blend_const(img, deg, factor):
    """blend(degenerate, img, factor) with a constant degenerate value `deg`:
    deg + factor * (img - deg) in float32, clipped and truncated (factor 0 gives deg and
    factor 1 gives img, as the reference's early returns do)."""
    if factor == 1.0:
        return
    f = np.float32(factor)
    d = np.float32(deg)
    a = img.reshape(-1)
    for i in range(a.size):
        a[i] = _to_u8(d + f * (np.float32(a[i]) - d))


@_jit
def _copy(dst, src):
    """dst[:] = src for flat arrays; an explicit loop is ~15x faster than numba's slice
    assignment, which goes through its generic (overlap-checking) array copy."""
    for i in range(dst.size):
        dst[i] = src[i]


@_jit
def _apply_lut3(img, lut):
    """img[..., c] = lut[c, img[..., c]] for a (3, 256) table."""
    a = img.reshape(-1)
    l0, l1, l2 = lut[0], lut[1], lut[2]
    for p in range(a.size // 3):
        a[3 * p] = l0[a[3 * p]]
        a[3 * p + 1] = l1[a[3 * p + 1]]
        a[3 * p + 2] = l2[a[3 * p + 2]]


# ----------------------------------------------------------------------------- point ops
@_jit
def autocontrast(img):
    """Per channel, stretch [lo, hi] to [0, 255] in float32 (x * scale + offset, clip,
    truncate); a flat channel is left alone (scale 1, offset 0 is the identity)."""
    a = img.reshape(-1)
    n = a.size // 3
    lo0 = lo1 = lo2 = np.uint8(255)
    hi0 = hi1 = hi2 = np.uint8(0)
    for p in range(n):
        lo0, hi0 = min(lo0, a[3 * p]), max(hi0, a[3 * p])
        lo1, hi1 = min(lo1, a[3 * p + 1]), max(hi1, a[3 * p + 1])
        lo2, hi2 = min(lo2, a[3 * p + 2]), max(hi2, a[3 * p + 2])
    s0, o0 = _stretch(lo0, hi0)
    s1, o1 = _stretch(lo1, hi1)
    s2, o2 = _stretch(lo2, hi2)
    for p in range(n):
        a[3 * p] = _to_u8(np.float32(a[3 * p]) * s0 + o0)
        a[3 * p + 1] = _to_u8(np.float32(a[3 * p + 1]) * s1 + o1)
        a[3 * p + 2] = _to_u8(np.float32(a[3 * p + 2]) * s2 + o2)


@_jit
def _stretch(lo, hi):
    """AutoContrast's float32 (scale, offset) for one channel; (1, 0) if it is flat."""
    if hi <= lo:
        return np.float32(1.0), np.float32(0.0)
    flo = np.float32(lo)
    scale = np.float32(255.0) / (np.float32(hi) - flo)
    return scale, -flo * scale


@_jit
def _histograms(a):
    """Per-channel 256-bin histograms of a flat HxWx3 image, as int64[3, 256]. Even and
    odd pixels count into separate tables, which roughly halves the stalls of repeated
    increments of one bin (neighbouring pixels are often equal)."""
    sub = np.zeros((6, 256), np.int32)
    s0, s1, s2, s3, s4, s5 = sub[0], sub[1], sub[2], sub[3], sub[4], sub[5]
    n = a.size // 3
    for q in range(n // 2):
        p = 6 * q
        s0[a[p]] += 1
        s1[a[p + 1]] += 1
        s2[a[p + 2]] += 1
        s3[a[p + 3]] += 1
        s4[a[p + 4]] += 1
        s5[a[p + 5]] += 1
    hist = np.zeros((3, 256), np.int64)
    for v in range(256):
        hist[0, v] = s0[v] + s3[v]
        hist[1, v] = s1[v] + s4[v]
        hist[2, v] = s2[v] + s5[v]
    if n % 2:
        p = 3 * (n - 1)
        hist[0, a[p]] += 1
        hist[1, a[p + 1]] += 1
        hist[2, a[p + 2]] += 1
    return hist


@_jit
def equalize(img):
    """PIL's equalize per channel, in integers exactly as the reference:
    step = (sum(hist) - hist[last non-empty bin]) // 255; step 0 leaves the channel;
    lut = (cumsum(hist) + step // 2) // step shifted right one bin, clipped to 255."""
    a = img.reshape(-1)
    n = a.size // 3
    hist = _histograms(a)
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        last = 0
        for v in range(256):
            if hist[c, v] != 0:
                last = hist[c, v]
        step = (n - last) // 255
        if step == 0:
            for v in range(256):
                lut[c, v] = v
            continue
        cum = 0
        lut[c, 0] = 0
        for v in range(255):
            cum += hist[c, v]
            lut[c, v + 1] = min((cum + step // 2) // step, 255)
    _apply_lut3(img, lut)


@_jit
def invert(img):
    """255 - x."""
    a = img.reshape(-1)
    for i in range(a.size):
        a[i] = 255 - a[i]


@_jit
def posterize(img, bits):
    """(x >> s) << s with s = 8 - bits clamped to [0, 7] as TF's bitwise shifts do."""
    s = min(max(8 - int(bits), 0), 7)
    mask = np.uint8((0xFF << s) & 0xFF)
    a = img.reshape(-1)
    for i in range(a.size):
        a[i] = a[i] & mask


@_jit
def solarize(img, threshold):
    """x < t ? x : 255 - x with t cast to uint8 like TF does (256 wraps to 0: invert all)."""
    t = np.uint8(int(threshold) & 0xFF)
    a = img.reshape(-1)
    for i in range(a.size):
        v = a[i]
        a[i] = v if v < t else np.uint8(255) - v


@_jit
def solarize_add(img, addition):
    """Pixels below 128 get `addition` added, clipped to [0, 255]; others are kept."""
    add = np.int32(addition)
    a = img.reshape(-1)
    for i in range(a.size):
        v = np.int32(a[i])
        a[i] = np.uint8(min(max(v + add, 0), 255)) if v < 128 else np.uint8(v)


# ----------------------------------------------------------------------------- blends
@_jit
def color(img, factor):
    """Blend with the grayscale image (TF's rgb_to_grayscale, see _gray)."""
    if factor == 1.0:
        return
    f = np.float32(factor)
    a = img.reshape(-1)
    for p in range(a.size // 3):
        r, g, b = a[3 * p], a[3 * p + 1], a[3 * p + 2]
        d = np.float32(_gray(r, g, b))
        a[3 * p] = _to_u8(d + f * (np.float32(r) - d))
        a[3 * p + 1] = _to_u8(d + f * (np.float32(g) - d))
        a[3 * p + 2] = _to_u8(d + f * (np.float32(b) - d))


@_jit
def contrast(img, factor, fixed=False):
    """Blend with a constant gray. Reference (fixed=False): gray = trunc(num_pixels / 256)
    clipped to 255 (its histogram-sum bug). fixed=True: the true mean of the grayscale,
    trunc(sum(gray) / num_pixels) in float32 as the later, fixed code computes it."""
    a = img.reshape(-1)
    n = a.size // 3
    if fixed:
        total = 0
        for p in range(n):
            total += np.int64(_gray(a[3 * p], a[3 * p + 1], a[3 * p + 2]))
        mean = np.float32(total) / np.float32(n)
    else:
        mean = np.float32(n) / np.float32(256.0)
    _blend_const(img, _to_u8(mean), factor)


@_jit
def brightness(img, factor):
    """Blend with black."""
    _blend_const(img, 0, factor)


@_jit
def sharpness(img, scratch, factor):
    """Blend with PIL's SMOOTH filter [[1,1,1],[1,5,1],[1,1,1]] / 13 on the interior (the
    1-pixel border keeps the input). The reference's depthwise convolution accumulates the
    9 taps row by row with float32 fused multiply-adds; so does this loop."""
    h, w = img.shape[0], img.shape[1]
    if factor == 1.0 or h < 3 or w < 3:
        return
    k1 = np.float32(1.0) / np.float32(13.0)
    k5 = np.float32(5.0) / np.float32(13.0)
    f = np.float32(factor)
    dst = img.reshape(-1)
    src = scratch.reshape(-1)
    _copy(src, dst)
    row = 3 * w
    for y in range(1, h - 1):
        o = y * row
        _smooth_row(src[o - row:o], src[o:o + row], src[o + row:o + 2 * row],
                    dst[o + 3:o + row - 3], k1, k5, f)


@_jit
def _smooth_row(up, md, dn, out, k1, k5, f):
    """One interior row of Sharpness. Zero-based indices and uint8 inputs: in this form
    LLVM drops numba's negative-index checks and vectorises (8 fmas at a time)."""
    for x in range(out.size):
        acc = np.float32(up[x]) * k1
        acc = _fma32(np.float32(up[x + 3]), k1, acc)
        acc = _fma32(np.float32(up[x + 6]), k1, acc)
        acc = _fma32(np.float32(md[x]), k1, acc)
        acc = _fma32(np.float32(md[x + 3]), k5, acc)
        acc = _fma32(np.float32(md[x + 6]), k1, acc)
        acc = _fma32(np.float32(dn[x]), k1, acc)
        acc = _fma32(np.float32(dn[x + 3]), k1, acc)
        acc = _fma32(np.float32(dn[x + 6]), k1, acc)
        d = np.float32(_to_u8(acc))
        out[x] = _to_u8(d + f * (np.float32(md[x + 3]) - d))


# ----------------------------------------------------------------------------- geometry
@_jit
def _round_inside(v, size):
    """(round half away from zero of float32 v, whether it lands in [0, size)).
    Inside means -0.5 < v < size - 0.5 (exact in float32 for any image size); there
    round(v) = trunc(v) + (v - trunc(v) >= 0.5), where the subtraction is exact.
    (Outside, the rounded value is garbage and must not be used.)"""
    inside = (v > np.float32(-0.5)) & (v < np.float32(size) - np.float32(0.5))
    t = np.int32(v)
    return t + np.int32(v - np.float32(t) >= np.float32(0.5)), inside


@_jit
def _gather_row(out, src, idx):
    """out[pixel x] = src pixel at flat offset idx[x], or the fill colour if idx[x] < 0."""
    for x in range(idx.size):
        k = idx[x]
        if k >= 0:
            out[3 * x] = src[k]
            out[3 * x + 1] = src[k + 1]
            out[3 * x + 2] = src[k + 2]
        else:
            out[3 * x] = FILL
            out[3 * x + 1] = FILL
            out[3 * x + 2] = FILL


@_jit
def _copy_runs(out, src, idx):
    """_gather_row for maps made of long runs (translations, ShearX): copies each run of
    consecutive source pixels, and fills each run of outside pixels, in one tight loop."""
    n = idx.size
    x = 0
    while x < n:
        k = idx[x]
        x1 = x + 1
        if k < 0:
            while x1 < n and idx[x1] < 0:
                x1 += 1
            f = out[3 * x:3 * x1]  # zero-based loops let LLVM drop negative-index checks
            for j in range(f.size):
                f[j] = FILL
        else:
            while x1 < n and idx[x1] == idx[x1 - 1] + 3:
                x1 += 1
            o = out[3 * x:3 * x1]
            i = src[k:k + 3 * (x1 - x)]
            for j in range(o.size):
                o[j] = i[j]
        x = x1


@_jit
def _column_map(idx, tx, ay, t2):
    """idx[x] = 3 * round((tx[x] + ay) + t2), or -1 where that is outside the row."""
    w = idx.size
    for x in range(w):
        sx, ok = _round_inside((tx[x] + ay) + t2, w)
        idx[x] = np.int32(3) * sx if ok else np.int32(-1)


@_jit
def _warp_nearest(img, scratch, t0, t1, t2, t3, t4, t5):
    """tfa.image.transform with NEAREST interpolation and fill 128: output pixel (x, y)
    reads input (round(t0 x + t1 y + t2), round(t3 x + t4 y + t5)), each product and sum
    in float32 in that order, rounding half away from zero; outside the image -> 128.
    Products with x are tabulated per column and those with y hoisted per row: the same
    float32 values, so the same result. When t3 = 0 (ShearX, translations) each output
    row reads one source row, mostly in long runs that are copied as blocks."""
    h, w = img.shape[0], img.shape[1]
    row = 3 * w
    dst = img.reshape(-1)
    src = scratch.reshape(-1)
    _copy(src, dst)
    tx = np.empty(w, np.float32)
    ty = np.empty(w, np.float32)
    idx = np.empty(w, np.int32)  # flat source offsets: images stay below 2**31 bytes
    w32 = np.int32(w)
    for x in range(w):
        tx[x] = t0 * np.float32(x)
        ty[x] = t3 * np.float32(x)
    if t3 == 0:
        _column_map(idx, tx, np.float32(0.0), t2)  # every row's map when t1 == 0
        for y in range(h):
            ay = t1 * np.float32(y)
            sy, ok = _round_inside((np.float32(0.0) + t4 * np.float32(y)) + t5, h)
            out = dst[y * row:(y + 1) * row]
            if not ok:
                for j in range(row):
                    out[j] = FILL
                continue
            if t1 != 0:
                _column_map(idx, tx, ay, t2)
            _copy_runs(out, src[sy * row:(sy + 1) * row], idx)
        return
    for y in range(h):
        ay = t1 * np.float32(y)
        by = t4 * np.float32(y)
        for x in range(w):
            sx, okx = _round_inside((tx[x] + ay) + t2, w)
            sy, oky = _round_inside((ty[x] + by) + t5, h)
            idx[x] = (sy * w32 + sx) * np.int32(3) if okx & oky else np.int32(-1)
        _gather_row(dst[y * row:(y + 1) * row], src, idx)


@_jit
def rotate(img, scratch, degrees):
    """tfa.image.rotate: radians = float32(degrees) * float32(pi / 180) (the reference's
    degrees is a float32 tensor after the random sign), cos/sin in float32, offsets
    ((W-1) - (c (W-1) - s (H-1))) / 2 and ((H-1) - (s (W-1) + c (H-1))) / 2 in float32."""
    c, ms, ox, s, c, oy = rotate_transform(img.shape[0], img.shape[1], degrees)
    _warp_nearest(img, scratch, c, ms, ox, s, c, oy)


@_jit
def rotate_transform(h, w, degrees):
    """Rotate's float32 (t0, t1, t2, t3, t4, t5) for an h x w image (the device ops use it
    too)."""
    rad = np.float32(degrees) * np.float32(math.pi / 180.0)
    c = np.float32(math.cos(np.float64(rad)))
    s = np.float32(math.sin(np.float64(rad)))
    w1 = np.float32(w) - np.float32(1.0)
    h1 = np.float32(h) - np.float32(1.0)
    ox = (w1 - (c * w1 - s * h1)) / np.float32(2.0)
    oy = (h1 - (s * w1 + c * h1)) / np.float32(2.0)
    return c, -s, ox, s, c, oy


@_jit
def shear_x(img, scratch, level):
    """x_in = x + level * y."""
    one, zero = np.float32(1.0), np.float32(0.0)
    _warp_nearest(img, scratch, one, np.float32(level), zero, zero, one, zero)


@_jit
def shear_y(img, scratch, level):
    """y_in = level * x + y."""
    one, zero = np.float32(1.0), np.float32(0.0)
    _warp_nearest(img, scratch, one, zero, zero, np.float32(level), one, zero)


@_jit
def translate_x(img, scratch, pixels):
    """x_in = x + pixels (the content moves left by `pixels`)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    _warp_nearest(img, scratch, one, zero, np.float32(pixels), zero, one, zero)


@_jit
def translate_y(img, scratch, pixels):
    """y_in = y + pixels (the content moves up by `pixels`)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    _warp_nearest(img, scratch, one, zero, zero, zero, one, np.float32(pixels))


@_jit
def cutout(img, pad_size, cy, cx):
    """Fill rows [cy - pad, cy + pad) x cols [cx - pad, cx + pad), clipped to the image,
    with 128 (the reference's pad arithmetic; the centre is drawn by the caller)."""
    h, w = img.shape[0], img.shape[1]
    p = int(pad_size)
    y0, y1 = max(0, cy - p), min(h, cy + p)
    x0, x1 = max(0, cx - p), min(w, cx + p)
    for y in range(y0, y1):
        for x in range(x0, x1):
            for c in range(3):
                img[y, x, c] = FILL


# ----------------------------------------------------------------------------- dispatch
OPS = {
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert,
    "Rotate": rotate, "Posterize": posterize, "Solarize": solarize, "Color": color,
    "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
    "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Cutout": cutout, "SolarizeAdd": solarize_add,
}
assert tuple(OPS) == OP_NAMES


@_jit
def apply_op_inplace(img, scratch, op_index, arg, cy, cx, fixed=False):
    """Apply op `op_index` (position in OP_NAMES) with its argument `arg` (as returned by
    level_to_arg) to `img` in place; `scratch` is a work buffer of img's shape; both
    C-contiguous uint8 HxWx3 (numba refuses other layouts at compile time).
    (cy, cx) is Cutout's centre (ignored by the other ops); `fixed` selects the corrected
    Contrast (see the module docstring). Numba-callable; pass op_index/cy/cx as int64,
    arg as float64 and fixed as bool to share one compiled specialisation."""
    if op_index == AUTOCONTRAST:
        autocontrast(img)
    elif op_index == EQUALIZE:
        equalize(img)
    elif op_index == INVERT:
        invert(img)
    elif op_index == ROTATE:
        rotate(img, scratch, arg)
    elif op_index == POSTERIZE:
        posterize(img, arg)
    elif op_index == SOLARIZE:
        solarize(img, arg)
    elif op_index == COLOR:
        color(img, arg)
    elif op_index == CONTRAST:
        contrast(img, arg, fixed)
    elif op_index == BRIGHTNESS:
        brightness(img, arg)
    elif op_index == SHARPNESS:
        sharpness(img, scratch, arg)
    elif op_index == SHEAR_X:
        shear_x(img, scratch, arg)
    elif op_index == SHEAR_Y:
        shear_y(img, scratch, arg)
    elif op_index == TRANSLATE_X:
        translate_x(img, scratch, arg)
    elif op_index == TRANSLATE_Y:
        translate_y(img, scratch, arg)
    elif op_index == CUTOUT:
        cutout(img, arg, cy, cx)
    elif op_index == SOLARIZE_ADD:
        solarize_add(img, arg)


@_jit
def level_to_arg(op_index, magnitude, negate, fixed):
    """The reference's level -> argument mapping at `magnitude` (max 10), f = m / 10:
    Rotate 30 f, ShearX/Y 0.3 f, TranslateX/Y 100 f (these three negated when `negate`),
    Posterize int(4 f), Solarize int(256 f) (fixed: at most 255), SolarizeAdd int(110 f),
    Color/Contrast/Brightness/Sharpness 1.8 f + 0.1, Cutout int(40 f); 0.0 for the
    argument-less ops. Same float64 operation order as the reference's Python."""
    f = magnitude / MAX_LEVEL
    sign = -1.0 if negate else 1.0
    if op_index == ROTATE:
        return sign * (f * 30.0)
    if op_index == SHEAR_X or op_index == SHEAR_Y:
        return sign * (f * 0.3)
    if op_index == TRANSLATE_X or op_index == TRANSLATE_Y:
        return sign * (f * float(TRANSLATE_CONST))
    if op_index == POSTERIZE:
        return float(int(f * 4))
    if op_index == SOLARIZE:
        t = int(f * 256)
        if fixed and t > 255:
            t = 255
        return float(t)
    if op_index == SOLARIZE_ADD:
        return float(int(f * 110))
    if op_index == COLOR or op_index == CONTRAST or op_index == BRIGHTNESS \
            or op_index == SHARPNESS:
        return f * 1.8 + 0.1
    if op_index == CUTOUT:
        return float(int(f * CUTOUT_CONST))
    return 0.0


def apply_op(image, name, *args, center=None, fixed=False, rng=None):
    """Return a new uint8 HxWx3 image: op `name` applied with its own arguments (after the
    level mapping and sign, as in tests/data/README.md: Rotate(-30.0),
    Posterize(4), Solarize(256), Color(1.9), Cutout(40), ...). Cutout's centre (cy, cx)
    comes from `center=` or a second positional argument, else it is drawn uniformly
    with numpy (`rng`, a np.random.Generator, else a fresh default_rng())."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"apply_op: image must be a uint8 numpy array, got "
                         f"{type(image).__name__} {getattr(image, 'dtype', '')}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"apply_op: image must be HxWx3 (RGB), got shape {image.shape}")
    if image.size >= 2 ** 31:
        raise ValueError(f"apply_op: image {image.shape} is too large (the kernels use "
                         f"int32 offsets, below 2**31 bytes)")
    if name not in OP_INDEX:
        raise ValueError(f"apply_op: unknown op {name!r}; known ops: {', '.join(OP_NAMES)}")
    op = OP_INDEX[name]
    if op == CUTOUT and len(args) == 2 and center is None:
        args, center = args[:1], args[1]
    if len(args) != NUM_ARGS[op]:
        raise ValueError(f"apply_op: {name} takes {NUM_ARGS[op]} argument(s), got {len(args)}")
    if args and (not isinstance(args[0], numbers.Real) or isinstance(args[0], bool)):
        raise ValueError(f"apply_op: {name} argument must be a number, got {args[0]!r}")
    arg = float(args[0]) if args else 0.0
    if not math.isfinite(arg):
        raise ValueError(f"apply_op: {name} argument must be finite, got {args[0]!r}")
    h, w = image.shape[:2]
    cy = cx = 0
    if op == CUTOUT:
        if center is None:
            rng = np.random.default_rng() if rng is None else rng
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        else:
            cy, cx = (int(v) for v in center)
    out = np.array(image, dtype=np.uint8, order="C", copy=True)
    scratch = np.empty_like(out)
    apply_op_inplace(out, scratch, np.int64(op), np.float64(arg), np.int64(cy),
                     np.int64(cx), bool(fixed))
    return out


# ----------------------------------------------------------------------------- CLI
GOLDEN_DEFAULT = Path(__file__).resolve().parents[2] / "tests" / "data" / "randaug_bigvision.npz"


def load_golden(path):
    """(index dict, npz) of the golden file; the index is {"images": [...], "cases": [...]}."""
    z = np.load(path)
    return json.loads(bytes(z["index_json"]).decode()), z


def golden_table(path):
    """{op: (num_pixels, exact fraction, within-1 fraction)} over all non-Cutout cases."""
    index, z = load_golden(path)
    stats = {}
    for case in index["cases"]:
        if case["op"] == "Cutout":
            continue
        ours = apply_op(z["img_" + case["image"]], case["op"], *case["args"])
        ref = z[case["output"]]
        diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
        n, e, w1 = stats.get(case["op"], (0, 0, 0))
        stats[case["op"]] = (n + diff.size, e + int((diff == 0).sum()),
                             w1 + int((diff <= 1).sum()))
    return {op: (n, e / n, w1 / n) for op, (n, e, w1) in stats.items()}


def _print_golden(path):
    rows = golden_table(path)
    print("| op | values compared | exact | within 1 |\n|---|---:|---:|---:|")
    for op in OP_NAMES:
        if op in rows:
            n, e, w1 = rows[op]
            print(f"| {op} | {n} | {e:.6%} | {w1:.6%} |")


def _bench(size=224, reps=100):
    """Microseconds per image per op on one thread, on a real photograph: the best of 7
    rounds of `reps` calls, in thread CPU time (robust to a busy shared machine); each
    call restores the input first (a 150 kB copy, a few microseconds, included)."""
    import skimage.data
    img = np.ascontiguousarray(skimage.data.astronaut()[:size, :size, :3])
    work, scratch = img.copy(), np.empty_like(img)
    centre = np.int64(size // 2)
    print(f"| op | us / {size}x{size} image |\n|---|---:|")
    total = 0.0
    for i, name in enumerate(OP_NAMES):
        arg = level_to_arg(i, 10.0, False, False)
        apply_op_inplace(work, scratch, np.int64(i), arg, centre, centre, False)  # compile
        best = float("inf")
        for _ in range(7):
            t0 = time.thread_time()
            for _ in range(reps):
                work[...] = img
                apply_op_inplace(work, scratch, np.int64(i), arg, centre, centre, False)
            best = min(best, (time.thread_time() - t0) / reps)
        total += best
        print(f"| {name} | {best * 1e6:.0f} |")
    print(f"| mean over the 16 ops | {total / len(OP_NAMES) * 1e6:.0f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--golden", nargs="?", const=str(GOLDEN_DEFAULT),
                   help="print the per-op match table against the golden npz")
    p.add_argument("--bench", action="store_true", help="print microseconds per op")
    a = p.parse_args(argv)
    if a.golden:
        _print_golden(a.golden)
    if a.bench:
        _bench()
    if not (a.golden or a.bench):
        p.print_help()


if __name__ == "__main__":
    sys.exit(main())
