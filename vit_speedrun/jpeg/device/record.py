"""The plan record of one window (vit_speedrun/jpeg/plan.c writes it; the device kernels read
it): its layout, and the call that makes one.

A record is int32 words: the fixed part (geometry, per-component sampling and upsampling,
IFAST multipliers, Huffman tables as stored), then SEGW words per group of MCUs (row, column
and count of MCUs, start and end bit into the record's bytes, the DC predictors at both),
then the window's MCU rows' entropy-coded bytes. `plan(data, y, x, h, w, out)` fills `out`
(uint8, a multiple of 4 bytes) and returns the bytes used, or PLAN_CPU: the window then
takes the CPU decode (no index, or anything the device does not decode as libjpeg does).
"""
import ctypes

import numpy as np

from vit_speedrun.jpeg import window as jpeg_window

# The fixed part's words (plan.c's enum; _check_layout below compares the tail with the C).
(STATUS, HEIGHT, WIDTH, NC, HMAX, VMAX, Y, X, H, W, R0, ROWS, C0, COLS, NSEG, NBYTES,
 BYTES_AT, XAL, NB, MCUW, MCUH, TOTAL) = range(22)
COMP, COMPOF, QT, HUFF, HUFFW, SEGS, SEGW = 24, 48, 64, 256, 272, 256 + 6 * 272, 12
C_HS, C_VS, C_UP, C_CW, C_CH, C_FIRST = range(6)   # words of a component, from COMP + 8 * c
UP_FULL, UP_H2V1, UP_H2V2, UP_H1V2, UP_INT = range(5)
PLAN_CPU = -5

_plan_c = None


def _bind():
    global _plan_c
    lib = ctypes.CDLL(str(jpeg_window.ensure_built()))
    _plan_c = lib.jpeg_window_plan
    _plan_c.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + 4 * [ctypes.c_int] + [
        ctypes.c_void_p, ctypes.c_size_t]
    _plan_c.restype = ctypes.c_long
    layout_c = lib.jpeg_window_plan_layout
    layout_c.argtypes = [ctypes.c_void_p, ctypes.c_int]
    layout = np.zeros(16, np.int32)
    n = layout_c(layout.ctypes.data, 16)
    want = [TOTAL, COMP, COMPOF, QT, HUFF, HUFFW, SEGS, SEGW,
            UP_FULL, UP_H2V1, UP_H2V2, UP_H1V2, UP_INT, PLAN_CPU]
    if layout[:n].tolist() != want:
        raise RuntimeError(f"{jpeg_window.LIBRARY}: plan layout {layout[:n].tolist()} is not "
                           f"record.py's {want}; rebuild it (make install)")


def plan_function():
    """The C function, for numba code: f(data_ptr, n_bytes, y, x, h, w, out_ptr, cap)."""
    if _plan_c is None:
        _bind()
    return _plan_c


def capacity(height, width, size):
    """Bytes that hold any window's record of a height x width JPEG of `size` bytes (with
    its index): the fixed part, a group per 8x8 block at most, the bytes."""
    return (4 * SEGS + 4 * SEGW * (height // 8 + 2) * (width // 8 + 2) + size + 67) // 4 * 4


def plan(data, y, x, h, w, out):
    """Fill `out` (C-contiguous uint8, length a multiple of 4) with the record of window
    (y, x, h, w) of data (bytes or uint8 array). Returns the bytes used, or PLAN_CPU."""
    if _plan_c is None:
        _bind()
    arr = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if out.dtype != np.uint8 or not out.flags.c_contiguous or out.size % 4:
        raise ValueError("record.plan: out must be C-contiguous uint8, a multiple of 4 bytes")
    return int(_plan_c(arr.ctypes.data, arr.size, y, x, h, w, out.ctypes.data, out.size))
