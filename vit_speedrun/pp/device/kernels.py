"""The train augmentations on the device, one body per thread (vit_speedrun/twin.py: the
same source runs on the CPU in the tests and as CUDA on a GPU), equal to the numba ops of
vit_speedrun/pp/ (tf_image.resize_bilinear, ffcv_ops' flip, randaug_ops' 16 ops) value for
value: every float32 step goes through twin's mul32/add32/sub32/div32 (never fused into
an FMA on the GPU), Sharpness's taps through fma32 as the reference's convolution.

Batch layout: images are uint8 [n, res, res, 3]. Per image, `ip` (int64) and `fp`
(float32) hold what the host drew (launch.py: the crop stream's window, the flip, each
RandAugment layer's op and argument, the same counter-based draws as the CPU path):
IP_* and FP_* below, then per layer L_* words at IP_LAYERS + L_WORDS * layer.
"""
import math

import numpy as np

from vit_speedrun.pp import randaug_ops as A
from vit_speedrun.twin import add32, body, div32, fma32, mul32, sub32

IP_MODE, IP_SRC, IP_H, IP_W, IP_FLIP, IP_LAYERS = range(6)   # IP_SRC: first decoded pixel
MODE_NONE, MODE_DECODED, MODE_RESIZED = 0, 1, 2               # how the image arrives
L_OP, L_INT, L_CY, L_CX, L_SKIP = range(5)                    # per layer (ints)
L_WORDS = 5
F_FACTOR, F_T0 = 0, 1                                         # per layer (floats): f, t0..t5
F_WORDS = 7
FILL = A.FILL


@body
def clamp255(v):
    return 0 if v < 0 else (255 if v > 255 else v)


@body
def to_u8(v):
    """TF's clip_by_value(v, 0, 255) and cast to uint8 (truncation)."""
    v = np.float32(v)
    if v < np.float32(0.0):
        v = np.float32(0.0)
    if v > np.float32(255.0):
        v = np.float32(255.0)
    return int(v)


@body
def half_pixel(i, in_size, out_size):
    """TF's half-pixel bilinear source of output index i: (lower, upper, float32 frac)."""
    scale = div32(np.float32(in_size), np.float32(out_size))
    src = sub32(mul32(add32(np.float32(i), np.float32(0.5)), scale), np.float32(0.5))
    f = int(math.floor(src))   # int(): CUDA's floor and ceil of a float32 return floats
    lo = f if f > 0 else 0
    hi = int(math.ceil(src))
    hi = hi if hi < in_size - 1 else in_size - 1
    return lo, hi, sub32(src, np.float32(f))


@body
def resize_body(t, ip, decoded, res, out):
    """Thread t: output pixel t of the batch, TF's bilinear resize of its image's decoded
    window (mixed along x, then y, in float32; clipped, truncated), flipped if drawn."""
    img = t // (res * res)
    if int(ip[img, IP_MODE]) != MODE_DECODED:
        return
    i = (t // res) % res
    j = t % res
    if int(ip[img, IP_FLIP]) != 0:
        j = res - 1 - j
    h = int(ip[img, IP_H])
    w = int(ip[img, IP_W])
    src = int(ip[img, IP_SRC])
    ylo, yhi, fy = half_pixel(i, h, res)
    xlo, xhi, fx = half_pixel(j, w, res)
    for c in range(3):
        a = np.float32(decoded[src + ylo * w + xlo, c])
        b = np.float32(decoded[src + ylo * w + xhi, c])
        top = add32(a, mul32(sub32(b, a), fx))
        a = np.float32(decoded[src + yhi * w + xlo, c])
        b = np.float32(decoded[src + yhi * w + xhi, c])
        bottom = add32(a, mul32(sub32(b, a), fx))
        out[img, i, t % res, c] = to_u8(add32(top, mul32(sub32(bottom, top), fy)))


@body
def place_body(t, ip, resized, res, out):
    """Thread t: output pixel t for an image the CPU decoded and resized (resized holds
    one res x res image per batch slot), flipped if drawn."""
    img = t // (res * res)
    if int(ip[img, IP_MODE]) != MODE_RESIZED:
        return
    i = (t // res) % res
    j = t % res
    jj = res - 1 - j if int(ip[img, IP_FLIP]) != 0 else j
    for c in range(3):
        out[img, i, j, c] = resized[img, i, jj, c]


# ---------------------------------------------------------------- RandAugment
@body
def gray(r, g, b):
    """tf.image.rgb_to_grayscale of one pixel, as randaug_ops._gray."""
    s = np.float32(1.0 / 255.0)
    acc = add32(mul32(mul32(np.float32(r), s), np.float32(0.2989)),
                mul32(mul32(np.float32(g), s), np.float32(0.5870)))
    acc = add32(acc, mul32(mul32(np.float32(b), s), np.float32(0.1140)))
    return int(mul32(acc, np.float32(255.5)))


@body
def blend(d, f, v):
    """to_u8(d + f * (v - d)) in float32."""
    return to_u8(add32(d, mul32(f, sub32(np.float32(v), d))))


@body
def stats_body(t, ip, layer, src, res, lut, deg):
    """Thread t = 3 * image + channel: what this layer's op needs of the whole image.
    AutoContrast and Equalize become a 256-entry table per channel (the same values their
    per-pixel formulas give); fixed Contrast needs the mean gray (channel 0's thread)."""
    img = t // 3
    ch = t % 3
    base = IP_LAYERS + L_WORDS * layer
    op = int(ip[img, base + L_OP])
    if int(ip[img, IP_MODE]) == MODE_NONE or int(ip[img, base + L_SKIP]) != 0:
        return
    n = res * res
    if op == A.AUTOCONTRAST:
        lo = 255
        hi = 0
        for p in range(n):
            v = int(src[img, p // res, p % res, ch])
            lo = v if v < lo else lo
            hi = v if v > hi else hi
        if hi <= lo:
            for v in range(256):
                lut[img, ch, v] = v
            return
        flo = np.float32(lo)
        scale = div32(np.float32(255.0), sub32(np.float32(hi), flo))
        offset = -mul32(flo, scale)
        for v in range(256):
            lut[img, ch, v] = to_u8(add32(mul32(np.float32(v), scale), offset))
    elif op == A.EQUALIZE:
        hist = lut[img, ch]   # int32: the counts first, then the table
        for v in range(256):
            hist[v] = 0
        for p in range(n):
            hist[int(src[img, p // res, p % res, ch])] += 1
        last = 0
        for v in range(256):
            if int(hist[v]) != 0:
                last = int(hist[v])
        step = (n - last) // 255
        if step == 0:
            for v in range(256):
                hist[v] = v
            return
        cum = 0
        prev = int(hist[0])
        hist[0] = 0
        for v in range(255):
            cum += prev
            prev = int(hist[v + 1])
            q = (cum + step // 2) // step
            hist[v + 1] = q if q < 255 else 255
    elif op == A.CONTRAST and ch == 0 and int(ip[img, base + L_INT]) != 0:
        total = 0
        for p in range(n):
            total += gray(src[img, p // res, p % res, 0], src[img, p // res, p % res, 1],
                          src[img, p // res, p % res, 2])
        deg[img] = to_u8(div32(np.float32(total), np.float32(n)))


@body
def round_inside(v, size):
    """randaug_ops._round_inside: (round half away from zero, inside [0, size))."""
    inside = v > np.float32(-0.5) and v < sub32(np.float32(size), np.float32(0.5))
    t = int(v) if inside else 0
    if inside and sub32(v, np.float32(t)) >= np.float32(0.5):
        t += 1
    return t, inside


@body
def op_body(t, ip, fp, layer, src, res, lut, deg, dst):
    """Thread t: pixel t of the batch after this layer's op (read from src, the image
    before it)."""
    img = t // (res * res)
    y = (t // res) % res
    x = t % res
    base = IP_LAYERS + L_WORDS * layer
    fb = F_WORDS * layer
    op = int(ip[img, base + L_OP])
    if int(ip[img, IP_MODE]) == MODE_NONE:
        return
    r = int(src[img, y, x, 0])
    g = int(src[img, y, x, 1])
    b = int(src[img, y, x, 2])
    if int(ip[img, base + L_SKIP]) != 0:
        pass
    elif op == A.AUTOCONTRAST or op == A.EQUALIZE:
        r = int(lut[img, 0, r])
        g = int(lut[img, 1, g])
        b = int(lut[img, 2, b])
    elif op == A.INVERT:
        r, g, b = 255 - r, 255 - g, 255 - b
    elif op == A.POSTERIZE:
        s = 8 - int(ip[img, base + L_INT])
        s = 0 if s < 0 else (7 if s > 7 else s)
        mask = (0xFF << s) & 0xFF
        r, g, b = r & mask, g & mask, b & mask
    elif op == A.SOLARIZE:
        th = int(ip[img, base + L_INT]) & 0xFF
        r = r if r < th else 255 - r
        g = g if g < th else 255 - g
        b = b if b < th else 255 - b
    elif op == A.SOLARIZE_ADD:
        add = int(ip[img, base + L_INT])
        r = r if r >= 128 else clamp255(r + add)
        g = g if g >= 128 else clamp255(g + add)
        b = b if b >= 128 else clamp255(b + add)
    elif op == A.COLOR:
        f = fp[img, fb + F_FACTOR]
        d = np.float32(gray(r, g, b))
        r, g, b = blend(d, f, r), blend(d, f, g), blend(d, f, b)
    elif op == A.CONTRAST or op == A.BRIGHTNESS:
        f = fp[img, fb + F_FACTOR]
        d = np.float32(0.0)
        if op == A.CONTRAST:
            if int(ip[img, base + L_INT]) != 0:
                d = np.float32(deg[img])
            else:
                d = np.float32(to_u8(div32(np.float32(res * res), np.float32(256.0))))
        r, g, b = blend(d, f, r), blend(d, f, g), blend(d, f, b)
    elif op == A.SHARPNESS:
        if 0 < y < res - 1 and 0 < x < res - 1:
            f = fp[img, fb + F_FACTOR]
            k1 = div32(np.float32(1.0), np.float32(13.0))
            k5 = div32(np.float32(5.0), np.float32(13.0))
            for c in range(3):
                acc = mul32(np.float32(src[img, y - 1, x - 1, c]), k1)
                acc = fma32(np.float32(src[img, y - 1, x, c]), k1, acc)
                acc = fma32(np.float32(src[img, y - 1, x + 1, c]), k1, acc)
                acc = fma32(np.float32(src[img, y, x - 1, c]), k1, acc)
                acc = fma32(np.float32(src[img, y, x, c]), k5, acc)
                acc = fma32(np.float32(src[img, y, x + 1, c]), k1, acc)
                acc = fma32(np.float32(src[img, y + 1, x - 1, c]), k1, acc)
                acc = fma32(np.float32(src[img, y + 1, x, c]), k1, acc)
                acc = fma32(np.float32(src[img, y + 1, x + 1, c]), k1, acc)
                v = blend(np.float32(to_u8(acc)), f, src[img, y, x, c])
                if c == 0:
                    r = v
                elif c == 1:
                    g = v
                else:
                    b = v
    elif op == A.CUTOUT:
        p = int(ip[img, base + L_INT])
        cy = int(ip[img, base + L_CY])
        cx = int(ip[img, base + L_CX])
        if cy - p <= y < cy + p and cx - p <= x < cx + p:
            r, g, b = FILL, FILL, FILL
    else:   # Rotate, ShearX/Y, TranslateX/Y: randaug_ops._warp_nearest, nearest, fill 128
        t0 = fp[img, fb + F_T0]
        t1 = fp[img, fb + F_T0 + 1]
        t2 = fp[img, fb + F_T0 + 2]
        t3 = fp[img, fb + F_T0 + 3]
        t4 = fp[img, fb + F_T0 + 4]
        t5 = fp[img, fb + F_T0 + 5]
        fx = np.float32(x)
        fy = np.float32(y)
        sx, okx = round_inside(add32(add32(mul32(t0, fx), mul32(t1, fy)), t2), res)
        if t3 == np.float32(0.0):
            sy, oky = round_inside(add32(add32(np.float32(0.0), mul32(t4, fy)), t5), res)
        else:
            sy, oky = round_inside(add32(add32(mul32(t3, fx), mul32(t4, fy)), t5), res)
        if okx and oky:
            r = int(src[img, sy, sx, 0])
            g = int(src[img, sy, sx, 1])
            b = int(src[img, sy, sx, 2])
        else:
            r, g, b = FILL, FILL, FILL
    dst[img, y, x, 0] = r
    dst[img, y, x, 1] = g
    dst[img, y, x, 2] = b
