"""The 16 RandAugment ops of big_vision (pp/archive/autoaugment.py) as numba kernels.

Why this file exists: the paper's preprocessing runs TF ops in float32 and truncates, and
RandAugment changes every training image, so small arithmetic differences would make this
a different recipe. Each kernel below repeats the reference's arithmetic operation by
operation (float32 where TF uses float32, the same summation order, the same rounding),
and `tests/test_augment_ops.py` checks every case of ../shared/golden against it.

Layout: one small in-place kernel per op, a table `OPS` (name -> kernel), one numba
dispatcher `apply_op_inplace` that the FFCV RandAugment operation calls per image, and
`apply_op` for Python callers. Images are uint8 HxWx3; kernels write their result into
`img` and may use `scratch` (same shape) as work space; nothing image-sized is allocated.

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

Run `python augment_ops.py --golden` for the per-op match table against the reference and
`python augment_ops.py --bench` for microseconds per 224x224 image per op.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
from numba import njit

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

_jit = njit(cache=True, nogil=True)


# ----------------------------------------------------------------------------- helpers
@_jit
def _to_u8(t):
    """TF's clip_by_value(t, 0, 255) then cast to uint8 (truncation toward zero)."""
    if t < np.float32(0.0):
        t = np.float32(0.0)
    elif t > np.float32(255.0):
        t = np.float32(255.0)
    return np.uint8(t)


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
    """blend(degenerate, img, factor) for a constant degenerate value `deg` (0..255):
    deg + factor * (img - deg) in float32, clipped and truncated."""
    if factor == 0.0:
        img[:, :, :] = deg
        return
    if factor == 1.0:
        return
    f = np.float32(factor)
    d = np.float32(deg)
    # A lookup table is exact (the result depends on the pixel value only) and fast.
    lut = np.empty(256, np.uint8)
    for v in range(256):
        lut[v] = _to_u8(d + f * (np.float32(v) - d))
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = lut[img[y, x, c]]


# ----------------------------------------------------------------------------- point ops
@_jit
def autocontrast(img):
    """Per channel, stretch [lo, hi] to [0, 255] in float32 (x * scale + offset, clip,
    truncate); a flat channel is left alone."""
    h, w = img.shape[0], img.shape[1]
    lo = np.full(3, 255, np.int64)
    hi = np.zeros(3, np.int64)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                v = np.int64(img[y, x, c])
                if v < lo[c]:
                    lo[c] = v
                if v > hi[c]:
                    hi[c] = v
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        if hi[c] > lo[c]:
            flo = np.float32(lo[c])
            scale = np.float32(255.0) / (np.float32(hi[c]) - flo)
            offset = -flo * scale
            for v in range(256):
                lut[c, v] = _to_u8(np.float32(v) * scale + offset)
        else:
            for v in range(256):
                lut[c, v] = v
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = lut[c, img[y, x, c]]


@_jit
def equalize(img):
    """PIL's equalize per channel, with integer arithmetic exactly as the reference:
    step = (sum(hist) - hist[last non-empty bin]) // 255; step 0 leaves the channel;
    lut = (cumsum(hist) + step // 2) // step shifted right one bin, clipped to 255."""
    h, w = img.shape[0], img.shape[1]
    hist = np.zeros((3, 256), np.int64)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                hist[c, img[y, x, c]] += 1
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        last = 0
        for v in range(256):
            if hist[c, v] != 0:
                last = hist[c, v]
        step = (h * w - last) // 255
        if step == 0:
            for v in range(256):
                lut[c, v] = v
            continue
        cum = 0
        lut[c, 0] = 0
        for v in range(255):
            cum += hist[c, v]
            lut[c, v + 1] = min((cum + step // 2) // step, 255)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = lut[c, img[y, x, c]]


@_jit
def invert(img):
    """255 - x."""
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = 255 - img[y, x, c]


@_jit
def posterize(img, bits):
    """(x >> s) << s with s = 8 - bits clamped to [0, 7] as TF's bitwise shifts do."""
    s = 8 - int(bits)
    s = min(max(s, 0), 7)
    mask = np.uint8((0xFF << s) & 0xFF)
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = img[y, x, c] & mask


@_jit
def solarize(img, threshold):
    """x < t ? x : 255 - x with t cast to uint8 like TF does (256 wraps to 0: invert all)."""
    t = int(threshold) & 0xFF
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        for x in range(w):
            for c in range(3):
                v = img[y, x, c]
                if v >= t:
                    img[y, x, c] = 255 - v


@_jit
def solarize_add(img, addition):
    """Pixels below 128 get `addition` added, clipped to [0, 255]; others are kept."""
    a = int(addition)
    lut = np.empty(256, np.uint8)
    for v in range(256):
        lut[v] = min(max(v + a, 0), 255) if v < 128 else v
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = lut[img[y, x, c]]


# ----------------------------------------------------------------------------- blends
@_jit
def color(img, factor):
    """Blend with the grayscale image (TF's rgb_to_grayscale, see _gray)."""
    if factor == 1.0:
        return
    f = np.float32(factor)
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        for x in range(w):
            g = _gray(img[y, x, 0], img[y, x, 1], img[y, x, 2])
            if factor == 0.0:
                img[y, x, 0] = g
                img[y, x, 1] = g
                img[y, x, 2] = g
                continue
            d = np.float32(g)
            for c in range(3):
                img[y, x, c] = _to_u8(d + f * (np.float32(img[y, x, c]) - d))


@_jit
def contrast(img, factor, fixed=False):
    """Blend with a constant gray. Reference (fixed=False): gray = trunc(num_pixels / 256)
    clipped to 255 (its histogram-sum bug). fixed=True: the true mean of the grayscale."""
    h, w = img.shape[0], img.shape[1]
    if fixed:
        total = 0
        for y in range(h):
            for x in range(w):
                total += np.int64(_gray(img[y, x, 0], img[y, x, 1], img[y, x, 2]))
        mean = np.float32(total) / np.float32(h * w)
    else:
        mean = np.float32(h * w) / np.float32(256.0)
    deg = _to_u8(mean)
    _blend_const(img, deg, factor)


@_jit
def brightness(img, factor):
    """Blend with black."""
    _blend_const(img, 0, factor)


@_jit
def sharpness(img, scratch, factor):
    """Blend with PIL's SMOOTH filter [[1,1,1],[1,5,1],[1,1,1]] / 13 on the interior (the
    border keeps the input). The reference's depthwise conv accumulates the 9 taps row by
    row with fused multiply-adds in float32; each fma is computed here exactly in float64
    (every operand is a multiple of 2**-27 below 2**9, so the float64 sum is exact) and
    rounded once to float32, which reproduces it bit for bit."""
    if factor == 1.0:
        return
    h, w = img.shape[0], img.shape[1]
    if h < 3 or w < 3:
        return
    k1 = np.float64(np.float32(1.0) / np.float32(13.0))
    k5 = np.float64(np.float32(5.0) / np.float32(13.0))
    f = np.float32(factor)
    scratch[:, :, :] = img
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            for c in range(3):
                acc = np.float32(np.float64(scratch[y - 1, x - 1, c]) * k1)
                acc = np.float32(np.float64(scratch[y - 1, x, c]) * k1 + np.float64(acc))
                acc = np.float32(np.float64(scratch[y - 1, x + 1, c]) * k1 + np.float64(acc))
                acc = np.float32(np.float64(scratch[y, x - 1, c]) * k1 + np.float64(acc))
                acc = np.float32(np.float64(scratch[y, x, c]) * k5 + np.float64(acc))
                acc = np.float32(np.float64(scratch[y, x + 1, c]) * k1 + np.float64(acc))
                acc = np.float32(np.float64(scratch[y + 1, x - 1, c]) * k1 + np.float64(acc))
                acc = np.float32(np.float64(scratch[y + 1, x, c]) * k1 + np.float64(acc))
                acc = np.float32(np.float64(scratch[y + 1, x + 1, c]) * k1 + np.float64(acc))
                d = np.float32(_to_u8(acc))
                if factor == 0.0:
                    img[y, x, c] = np.uint8(d)
                else:
                    img[y, x, c] = _to_u8(d + f * (np.float32(scratch[y, x, c]) - d))


# ----------------------------------------------------------------------------- geometry
@_jit
def _warp_nearest(img, scratch, t0, t1, t2, t3, t4, t5):
    """tfa.image.transform with NEAREST interpolation and fill 128: output pixel (x, y)
    reads input (round(t0 x + t1 y + t2), round(t3 x + t4 y + t5)), every product and
    sum in float32 in that order, rounding half away from zero; outside -> 128.
    The products with y are hoisted per row (same float32 values); a point is inside iff
    -0.5 < coordinate < size - 0.5, decided in float64 where +0.5 is exact."""
    h, w = img.shape[0], img.shape[1]
    scratch[:, :, :] = img
    xmax = np.float64(w) - 0.5
    ymax = np.float64(h) - 0.5
    for y in range(h):
        fy = np.float32(y)
        ay = t1 * fy
        by = t4 * fy
        for x in range(w):
            fx = np.float32(x)
            xi = np.float64((t0 * fx + ay) + t2)
            yi = np.float64((t3 * fx + by) + t5)
            if xi > -0.5 and xi < xmax and yi > -0.5 and yi < ymax:
                sx = int(xi + 0.5)
                sy = int(yi + 0.5)
                img[y, x, 0] = scratch[sy, sx, 0]
                img[y, x, 1] = scratch[sy, sx, 1]
                img[y, x, 2] = scratch[sy, sx, 2]
            else:
                img[y, x, 0] = FILL
                img[y, x, 1] = FILL
                img[y, x, 2] = FILL


@_jit
def rotate(img, scratch, degrees):
    """tfa.image.rotate: radians = float32(degrees) * float32(pi / 180) (the reference's
    degrees is a float32 tensor after the random sign), cos/sin in float32, offsets
    ((W-1) - (c (W-1) - s (H-1))) / 2 and ((H-1) - (s (W-1) + c (H-1))) / 2 in float32."""
    h, w = img.shape[0], img.shape[1]
    rad = np.float32(degrees) * np.float32(math.pi / 180.0)
    c = np.float32(math.cos(np.float64(rad)))
    s = np.float32(math.sin(np.float64(rad)))
    w1 = np.float32(w) - np.float32(1.0)
    h1 = np.float32(h) - np.float32(1.0)
    ox = (w1 - (c * w1 - s * h1)) / np.float32(2.0)
    oy = (h1 - (s * w1 + c * h1)) / np.float32(2.0)
    _warp_nearest(img, scratch, c, -s, ox, s, c, oy)


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
    level_to_arg) to `img` in place; `scratch` is a work buffer of img's shape.
    (cy, cx) is Cutout's centre (ignored by the other ops); `fixed` selects the corrected
    Contrast (see the module docstring). Numba-callable; pass op_index/cy/cx as int64 and
    arg as float64 to share one compiled specialisation."""
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
    level mapping and sign, as in ../shared/golden/README.md: Rotate(-30.0),
    Posterize(4), Solarize(256), Color(1.9), Cutout(40), ...). Cutout's centre (cy, cx)
    comes from `center=` or a second positional argument, else it is drawn uniformly
    with numpy (`rng`, a np.random.Generator, or the global default one)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"apply_op: image must be a uint8 numpy array, got "
                         f"{type(image).__name__} {getattr(image, 'dtype', '')}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"apply_op: image must be HxWx3 (RGB), got shape {image.shape}")
    if name not in OP_INDEX:
        raise ValueError(f"apply_op: unknown op {name!r}; known ops: {', '.join(OP_NAMES)}")
    op = OP_INDEX[name]
    if op == CUTOUT and len(args) == 2 and center is None:
        args, center = args[:1], args[1]
    if len(args) != NUM_ARGS[op]:
        raise ValueError(f"apply_op: {name} takes {NUM_ARGS[op]} argument(s), got {len(args)}")
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
    print(f"| op | values compared | exact | within 1 |\n|---|---:|---:|---:|")
    for op in OP_NAMES:
        if op in rows:
            n, e, w1 = rows[op]
            print(f"| {op} | {n} | {e:.6%} | {w1:.6%} |")


def _bench(size=224, reps=200):
    """Microseconds per image per op, single thread, on a real photograph."""
    import skimage.data
    photo = skimage.data.astronaut()[:size, :size, :3]
    img = np.ascontiguousarray(photo)
    work, scratch = img.copy(), np.empty_like(img)
    print(f"| op | us / {size}x{size} image |\n|---|---:|")
    for i, name in enumerate(OP_NAMES):
        arg = level_to_arg(i, 10.0, False, False)
        apply_op_inplace(work, scratch, np.int64(i), arg, np.int64(size // 2),
                         np.int64(size // 2), False)  # compile / load
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                work[...] = img
                apply_op_inplace(work, scratch, np.int64(i), arg, np.int64(size // 2),
                                 np.int64(size // 2), False)
            best = min(best, (time.perf_counter() - t0) / reps)
        print(f"| {name} | {best * 1e6:.0f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--golden", nargs="?", const="../shared/golden/randaug_bigvision.npz",
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
