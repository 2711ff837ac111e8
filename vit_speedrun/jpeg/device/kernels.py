"""The device decoder's arithmetic: one body per thread, the same source on both targets.

Each `*_body(t, ...)` is what thread t of a launch does; launch.py runs them in a numba
`prange` on the CPU and compiles the same Python functions as CUDA device functions for
the GPU (vit_speedrun/twin.py), so the tests check the arithmetic the GPU runs. The bodies use only
what both targets (and plain Python, for the CUDA simulator) compute alike: integers held
in int64 (`int(...)` on every array read), shifts of non-negative or arithmetically
shifted values, explicit 16-bit wrap-around where the reference computes in 16 bits.

What they reproduce, from libjpeg-turbo 2.1 as TF's decode and ours run it on x86-64:
- jdhuff.c: canonical Huffman codes with a 9-bit lookahead, HUFF_EXTEND, the DC
  predictor per component (the coefficient stored as a 16-bit JCOEF), AC runs written
  through jpeg_natural_order (whose 16 extra entries send overlong runs to 63);
- simd/x86_64/jidctfst-sse2.asm, the IFAST IDCT that libjpeg-turbo calls there (not the C
  jidctfst.c): 16-bit pmullw dequantisation, 16-bit adds that wrap, pmulhw products of
  inputs pre-shifted by 2 with constants shifted by 6, a final arithmetic shift by 5,
  signed saturation to [-128, 127] and +128;
- jdsample.c: h2v1, h2v2 and h1v2 fancy upsampling (the cropped decode's first and last
  subsampled columns are edges, as the image's top and bottom rows are), integral
  replication otherwise;
- jdcolor.c: YCbCr -> RGB with its tables' rounding (the SSE2/AVX2 converters give the
  same numbers), grayscale replicated.
Anything the device cannot decode as libjpeg does sets the image's flag; launch.py then
decodes that image on the CPU.
"""
import numpy as np

from vit_speedrun.jpeg.device import record as R
from vit_speedrun.twin import body


# jpeg_natural_order plus libjpeg's 16 safety entries; the Huffman table's words.
NATURAL = np.array([0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
                    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
                    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
                    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63]
                   + [63] * 16, np.int64)
LOOK = 9                                  # bits decoded by one table lookup
T_LOOK, T_MAX, T_OFF, T_VALS = 0, 512, 530, 547
TABLE = 803                               # int32 words of a derived table
BAD = -1


@body
def find(starts, n, t):
    """The item i (0 <= i < n) with starts[i] <= t < starts[i + 1]."""
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(starts[mid]) <= t:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------- Huffman tables and bits
@body
def table_body(t, rec32, tables):
    """Thread t = 6 * image + slot: libjpeg's jpeg_make_d_derived_tbl of slot (2c: component
    c's DC table, 2c + 1: its AC table) into tables[image, slot]: the lookahead (length << 8
    | symbol, 0 when the code is longer), maxcode per length (-1: no code), value offsets."""
    img = t // 6
    slot = t % 6
    if int(rec32[img, R.STATUS]) != 1 or slot // 2 >= int(rec32[img, R.NC]):
        return
    src = R.HUFF + slot * R.HUFFW
    for i in range(T_VALS):
        tables[img, slot, i] = 0
    code = 0
    p = 0
    for length in range(1, 17):
        count = int(rec32[img, src + length - 1])
        tables[img, slot, T_OFF + length] = p - code
        for _ in range(count):
            if length <= LOOK and p < 256:
                first = code << (LOOK - length)
                entry = (length << 8) | int(rec32[img, src + 16 + p])
                for j in range(1 << (LOOK - length)):
                    tables[img, slot, T_LOOK + first + j] = entry
            code += 1
            p += 1
        tables[img, slot, T_MAX + length] = code - 1 if count > 0 else -1
        code <<= 1
    tables[img, slot, T_MAX + 17] = 0x7FFFFFFF
    for i in range(256):
        tables[img, slot, T_VALS + i] = int(rec32[img, src + 16 + i])


@body
def peek16(rec8, img, base, nbytes, pos):
    """The 16 bits at stuffed bit position pos of the image's bytes (an 0xFF data byte is
    followed by a stuffed 0x00; past the end or at a marker, zeros as libjpeg reads)."""
    q = pos >> 3
    acc = 0
    for _ in range(4):
        v = 0
        if q < nbytes:
            v = int(rec8[img, base + q])
            if v == 0xFF:
                if q + 1 < nbytes and int(rec8[img, base + q + 1]) == 0:
                    q += 2
                else:
                    v = 0
                    q = nbytes
            else:
                q += 1
        acc = (acc << 8) | v
    return (acc >> (16 - (pos & 7))) & 0xFFFF


@body
def advance(rec8, img, base, nbytes, pos, n):
    """The stuffed bit position n bits after pos, or BAD past the bytes or over a marker."""
    q = pos >> 3
    b = (pos & 7) + n
    while b >= 8:
        if q >= nbytes:
            return BAD
        if int(rec8[img, base + q]) == 0xFF:
            if q + 1 >= nbytes or int(rec8[img, base + q + 1]) != 0:
                return BAD
            q += 2
        else:
            q += 1
        b -= 8
    return q * 8 + b


@body
def decode_symbol(tables, img, slot, bits16):
    """(symbol << 5) | code length of the code at the top of bits16, or BAD."""
    e = int(tables[img, slot, T_LOOK + (bits16 >> (16 - LOOK))])
    if e != 0:
        return ((e & 255) << 5) | (e >> 8)
    for length in range(LOOK + 1, 17):
        code = bits16 >> (16 - length)
        if code <= int(tables[img, slot, T_MAX + length]):
            k = code + int(tables[img, slot, T_OFF + length])
            if k < 0 or k > 255:
                return BAD
            return (int(tables[img, slot, T_VALS + k]) << 5) | length
    return BAD


@body
def extend(v, s):
    """HUFF_EXTEND: s magnitude bits v as a signed value."""
    if s == 0:
        return 0
    if v < (1 << (s - 1)):
        return v - (1 << s) + 1
    return v


@body
def wrap16(v):
    return ((v + 32768) & 0xFFFF) - 32768


# ---------------------------------------------------------------- entropy decoding
@body
def segment_body(t, rec32, rec8, seg_starts, blk_starts, n_img, tables, coef, flags):
    """Thread t decodes one group of MCUs (its image's record: start and end bit, DC
    predictors at both) into coef (blocks of its image's region in MCU order, natural
    order, 16-bit). Any disagreement with the index (a bad code, bits past the group's end,
    predictors that differ at its end) flags the image."""
    img = find(seg_starts, n_img, t)
    s = R.SEGS + (t - int(seg_starts[img])) * R.SEGW
    row = int(rec32[img, s])
    col = int(rec32[img, s + 1])
    nmcu = int(rec32[img, s + 2])
    pos = int(rec32[img, s + 3])
    end = int(rec32[img, s + 4])
    p0 = int(rec32[img, s + 5])
    p1 = int(rec32[img, s + 6])
    p2 = int(rec32[img, s + 7])
    base = int(rec32[img, R.BYTES_AT])
    nbytes = int(rec32[img, R.NBYTES])
    nb = int(rec32[img, R.NB])
    cols = int(rec32[img, R.COLS])
    for m in range(nmcu):
        first = int(blk_starts[img]) + ((row * cols + col + m) * nb)
        for blk in range(nb):
            ci = int(rec32[img, R.COMPOF + blk])
            block = first + blk
            for k in range(64):
                coef[block, k] = 0
            if pos < 0 or pos > end:
                flags[img] = 1
                return
            sym = decode_symbol(tables, img, 2 * ci, peek16(rec8, img, base, nbytes, pos))
            if sym < 0 or (sym >> 5) > 15:
                flags[img] = 1
                return
            size = sym >> 5
            pos = advance(rec8, img, base, nbytes, pos, sym & 31)
            if pos < 0:
                flags[img] = 1
                return
            bits = peek16(rec8, img, base, nbytes, pos) >> (16 - size) if size else 0
            pos = advance(rec8, img, base, nbytes, pos, size)
            diff = extend(bits, size)
            if ci == 0:
                p0 += diff
                dc = p0
            elif ci == 1:
                p1 += diff
                dc = p1
            else:
                p2 += diff
                dc = p2
            coef[block, 0] = wrap16(dc)
            k = 1
            while k < 64:
                if pos < 0 or pos > end:
                    flags[img] = 1
                    return
                sym = decode_symbol(tables, img, 2 * ci + 1,
                                    peek16(rec8, img, base, nbytes, pos))
                if sym < 0:
                    flags[img] = 1
                    return
                pos = advance(rec8, img, base, nbytes, pos, sym & 31)
                run = sym >> 9
                size = (sym >> 5) & 15
                if size:
                    k += run
                    if pos < 0:
                        flags[img] = 1
                        return
                    bits = peek16(rec8, img, base, nbytes, pos) >> (16 - size)
                    pos = advance(rec8, img, base, nbytes, pos, size)
                    coef[block, NATURAL[k]] = wrap16(extend(bits, size))
                    k += 1
                elif run == 15:
                    k += 16
                else:
                    break
    if (pos != end or p0 != int(rec32[img, s + 8]) or p1 != int(rec32[img, s + 9])
            or p2 != int(rec32[img, s + 10])):
        flags[img] = 1


# ---------------------------------------------------------------- IDCT (SSE2 IFAST)
@body
def mulhi(a, c):
    """pmulhw: the high 16 bits of a 16 x 16-bit signed product."""
    return (a * c) >> 16


@body
def ifast_1d(v0, v1, v2, v3, v4, v5, v6, v7, out, o, step):
    """One pass of jsimd_idct_ifast_sse2 on one column (or row) of 16-bit values, into
    out[o + k * step]."""
    tmp10 = wrap16(v0 + v4)
    tmp11 = wrap16(v0 - v4)
    tmp13 = wrap16(v2 + v6)
    tmp12 = wrap16(mulhi(wrap16(wrap16(v2 - v6) << 2), 23168) - tmp13)   # F1414 << 6
    tmp0 = wrap16(tmp10 + tmp13)
    tmp3 = wrap16(tmp10 - tmp13)
    tmp1 = wrap16(tmp11 + tmp12)
    tmp2 = wrap16(tmp11 - tmp12)
    z13 = wrap16(v5 + v3)
    z10 = wrap16(v5 - v3)
    z11 = wrap16(v1 + v7)
    z12 = wrap16(v1 - v7)
    z10s = wrap16(z10 << 2)
    z12s = wrap16(z12 << 2)
    tmp7 = wrap16(z11 + z13)
    tmp11 = mulhi(wrap16(wrap16(z11 - z13) << 2), 23168)                  # F1414 << 6
    z5 = mulhi(wrap16(z10s + z12s), 30272)                                # F1847 << 6
    tmp12 = wrap16(wrap16(mulhi(z10s, -26432) - z10) + z5)                # -F1613 << 6
    tmp10 = wrap16(mulhi(z12s, 17728) - z5)                               # F1082 << 6
    tmp6 = wrap16(tmp12 - tmp7)
    tmp5 = wrap16(tmp11 - tmp6)
    tmp4 = wrap16(tmp10 + tmp5)
    out[o] = wrap16(tmp0 + tmp7)
    out[o + 7 * step] = wrap16(tmp0 - tmp7)
    out[o + step] = wrap16(tmp1 + tmp6)
    out[o + 6 * step] = wrap16(tmp1 - tmp6)
    out[o + 2 * step] = wrap16(tmp2 + tmp5)
    out[o + 5 * step] = wrap16(tmp2 - tmp5)
    out[o + 4 * step] = wrap16(tmp3 + tmp4)
    out[o + 3 * step] = wrap16(tmp3 - tmp4)


@body
def plane_offset(rec32, img, ci):
    """Where component ci's plane starts in the image's planes, and its width."""
    rows = int(rec32[img, R.ROWS])
    cols = int(rec32[img, R.COLS])
    off = 0
    for c in range(ci):
        off += (rows * int(rec32[img, R.COMP + 8 * c + R.C_VS]) * 8) * (
            cols * int(rec32[img, R.COMP + 8 * c + R.C_HS]) * 8)
    return off, cols * int(rec32[img, R.COMP + 8 * ci + R.C_HS]) * 8


@body
def idct_body(t, rec32, blk_starts, pln_starts, n_img, coef, work, planes):
    """Thread t: block t of the batch, dequantised and inverse-transformed into its
    component's plane (work: 64 int64 of scratch per block)."""
    img = find(blk_starts, n_img, t)
    local = t - int(blk_starts[img])
    nb = int(rec32[img, R.NB])
    cols = int(rec32[img, R.COLS])
    mcu = local // nb
    blk = local % nb
    ci = int(rec32[img, R.COMPOF + blk])
    comp = R.COMP + 8 * ci
    hs = int(rec32[img, comp + R.C_HS])
    vs = int(rec32[img, comp + R.C_VS])
    k = blk - int(rec32[img, comp + R.C_FIRST])
    qt = R.QT + 64 * ci
    for col in range(8):   # pass 1: columns; 16-bit pmullw dequantisation
        ifast_1d(wrap16(int(coef[t, col]) * int(rec32[img, qt + col])),
                 wrap16(int(coef[t, 8 + col]) * int(rec32[img, qt + 8 + col])),
                 wrap16(int(coef[t, 16 + col]) * int(rec32[img, qt + 16 + col])),
                 wrap16(int(coef[t, 24 + col]) * int(rec32[img, qt + 24 + col])),
                 wrap16(int(coef[t, 32 + col]) * int(rec32[img, qt + 32 + col])),
                 wrap16(int(coef[t, 40 + col]) * int(rec32[img, qt + 40 + col])),
                 wrap16(int(coef[t, 48 + col]) * int(rec32[img, qt + 48 + col])),
                 wrap16(int(coef[t, 56 + col]) * int(rec32[img, qt + 56 + col])),
                 work[t], col, 8)
    off, width = plane_offset(rec32, img, ci)
    y0 = ((mcu // cols) * vs + k // hs) * 8
    x0 = ((mcu % cols) * hs + k % hs) * 8
    base = int(pln_starts[img]) + off
    for row in range(8):   # pass 2: rows, then descale, saturate, recentre
        r = row * 8
        ifast_1d(int(work[t, r]), int(work[t, r + 1]), int(work[t, r + 2]), int(work[t, r + 3]),
                 int(work[t, r + 4]), int(work[t, r + 5]), int(work[t, r + 6]),
                 int(work[t, r + 7]), work[t], 64 + r, 1)
        for col in range(8):
            v = int(work[t, 64 + r + col]) >> 5
            v = -128 if v < -128 else (127 if v > 127 else v)
            planes[base + (y0 + row) * width + x0 + col] = v + 128


# ---------------------------------------------------------------- upsampling and colour
@body
def sample(rec32, img, planes, base, ci, yy, xx):
    """Component ci's value at output pixel (yy, xx) of the image, upsampled as libjpeg's
    cropped decode does."""
    comp = R.COMP + 8 * ci
    hs = int(rec32[img, comp + R.C_HS])
    vs = int(rec32[img, comp + R.C_VS])
    up = int(rec32[img, comp + R.C_UP])
    cw = int(rec32[img, comp + R.C_CW])
    ch = int(rec32[img, comp + R.C_CH])
    he = int(rec32[img, R.HMAX]) // hs
    ve = int(rec32[img, R.VMAX]) // vs
    xal = int(rec32[img, R.XAL])
    off, width = plane_offset(rec32, img, ci)
    height = int(rec32[img, R.ROWS]) * vs * 8
    oy = int(rec32[img, R.R0]) * vs * 8
    ox = int(rec32[img, R.C0]) * hs * 8
    p = base + off
    cy = yy // ve
    cx = (xx - xal) // he
    u = (xx - xal) % he
    v = yy % ve
    ny = cy
    if up == R.UP_H2V2 or up == R.UP_H1V2:
        ny = cy - 1 if v == 0 else cy + 1
        ny = 0 if ny < 0 else (ch - 1 if ny > ch - 1 else ny)
    cy = clamp(cy - oy, height - 1)
    ny = clamp(ny - oy, height - 1)
    x0 = xal // he - ox
    if up == R.UP_FULL or up == R.UP_INT or up == R.UP_H1V2:
        x = clamp(x0 + cx, width - 1)
        here = int(planes[p + cy * width + x])
        if up != R.UP_H1V2:
            return here
        return (3 * here + int(planes[p + ny * width + x]) + (1 if v == 0 else 2)) >> 2
    nx = cx - 1 if u == 0 else cx + 1
    nx = 0 if nx < 0 else (cw - 1 if nx > cw - 1 else nx)
    x = clamp(x0 + cx, width - 1)
    xn = clamp(x0 + nx, width - 1)
    if up == R.UP_H2V1:
        return (3 * int(planes[p + cy * width + x]) + int(planes[p + cy * width + xn])
                + (1 if u == 0 else 2)) >> 2
    here = 3 * int(planes[p + cy * width + x]) + int(planes[p + ny * width + x])
    there = 3 * int(planes[p + cy * width + xn]) + int(planes[p + ny * width + xn])
    return (3 * here + there + (8 if u == 0 else 7)) >> 4


@body
def clamp(v, hi):
    """v clipped to [0, hi] (plain comparisons: the CUDA target types them as the CPU)."""
    return 0 if v < 0 else (hi if v > hi else v)


@body
def clamp255(v):
    return clamp(v, 255)


@body
def pixel_body(t, rec32, pix_starts, pln_starts, n_img, planes, out):
    """Thread t: one output pixel of the batch's windows (row-major per window), RGB."""
    img = find(pix_starts, n_img, t)
    local = t - int(pix_starts[img])
    w = int(rec32[img, R.W])
    yy = int(rec32[img, R.Y]) + local // w
    xx = int(rec32[img, R.X]) + local % w
    base = int(pln_starts[img])
    luma = sample(rec32, img, planes, base, 0, yy, xx)
    if int(rec32[img, R.NC]) == 1:
        out[t, 0] = luma
        out[t, 1] = luma
        out[t, 2] = luma
        return
    cb = sample(rec32, img, planes, base, 1, yy, xx) - 128
    cr = sample(rec32, img, planes, base, 2, yy, xx) - 128
    out[t, 0] = clamp255(luma + ((91881 * cr + 32768) >> 16))
    out[t, 1] = clamp255(luma + ((-22554 * cb - 46802 * cr + 32768) >> 16))
    out[t, 2] = clamp255(luma + ((116130 * cb + 32768) >> 16))
