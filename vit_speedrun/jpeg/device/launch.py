"""Decode a batch of planned windows with kernels.py: on the CPU (numba `prange` over the
threads) or on a CUDA GPU (the same bodies compiled as device functions), then the images
the device flagged, or that were never planned for it, on the CPU (jpeg_window).

    windows = decode(payloads, boxes, target="cpu")     # or "cuda"; list of HxWx3 uint8

Stages, each one launch over the whole batch: Huffman tables (6 per image), groups of MCUs
(the index points cut each MCU row into groups of 32 pixels), 8x8 blocks, output pixels.
The host's share is the plan (record.py) and four prefix sums over the batch.
"""
import numpy as np
from numba import njit, prange

from vit_speedrun import twin
from vit_speedrun.jpeg import window as jpeg_window
from vit_speedrun.jpeg.device import kernels as K
from vit_speedrun.jpeg.device import record as R


@njit(nogil=True)
def record_counts(rec):
    """What one planned record (int32 words) launches: (groups, blocks, plane bytes,
    output pixels)."""
    rows, cols = np.int64(rec[R.ROWS]), np.int64(rec[R.COLS])
    planes = np.int64(0)
    for c in range(rec[R.NC]):
        planes += (rows * rec[R.COMP + 8 * c + R.C_VS] * 8) * (
            cols * rec[R.COMP + 8 * c + R.C_HS] * 8)
    return (np.int64(rec[R.NSEG]), rows * cols * rec[R.NB], planes,
            np.int64(rec[R.H]) * rec[R.W])


@njit(nogil=True)
def starts_of(rec32):
    """Prefix sums over the batch of what each planned image launches: groups, blocks,
    plane bytes, output pixels (rows of an int64 [4, n + 1])."""
    n = rec32.shape[0]
    out = np.zeros((4, n + 1), np.int64)
    for i in range(n):
        zero = np.int64(0)
        counts = (record_counts(rec32[i]) if rec32[i, R.STATUS] == 1
                  else (zero, zero, zero, zero))
        for k in range(4):
            out[k, i + 1] = out[k, i] + counts[k]
    return out


@njit(parallel=True, nogil=True)
def _tables_cpu(n, rec32, tables):
    for t in prange(n):
        K.table_body(t, rec32, tables)


@njit(parallel=True, nogil=True)
def _segments_cpu(n, rec32, rec8, seg_starts, blk_starts, n_img, tables, coef, flags):
    for t in prange(n):
        K.segment_body(t, rec32, rec8, seg_starts, blk_starts, n_img, tables, coef, flags)


@njit(parallel=True, nogil=True)
def _idct_cpu(n, rec32, blk_starts, pln_starts, n_img, coef, work, planes):
    for t in prange(n):
        K.idct_body(t, rec32, blk_starts, pln_starts, n_img, coef, work, planes)


@njit(parallel=True, nogil=True)
def _pixels_cpu(n, rec32, pix_starts, pln_starts, n_img, planes, out):
    for t in prange(n):
        K.pixel_body(t, rec32, pix_starts, pln_starts, n_img, planes, out)


STAGES = {   # kernel name -> (body, its arguments after the thread index)
    "tables": ("table_body", "rec32, tables"),
    "segments": ("segment_body", "rec32, rec8, seg_starts, blk_starts, n_img, tables, coef, "
                                 "flags"),
    "idct": ("idct_body", "rec32, blk_starts, pln_starts, n_img, coef, work, planes"),
    "pixels": ("pixel_body", "rec32, pix_starts, pln_starts, n_img, planes, out"),
}


def plan_batch(payloads, boxes):
    """(records uint8 [n, cap], planned bool [n]): each window's plan (record.py), or not
    planned (the CPU decodes it)."""
    caps = []
    for data, _ in zip(payloads, boxes):
        height, width = jpeg_window.header(data) if len(data) else (0, 0)
        caps.append(R.capacity(height, width, len(data)))
    cap = (max(caps, default=4) + 3) // 4 * 4
    recs = np.zeros((len(payloads), cap), np.uint8)
    planned = np.zeros(len(payloads), bool)
    for i, (data, (y, x, h, w)) in enumerate(zip(payloads, boxes)):
        planned[i] = R.plan(data, y, x, h, w, recs[i]) > 0
    return recs, planned


def run_stages(rec32, rec8, seg_starts, blk_starts, pln_starts, pix_starts, n, totals,
               tables, coef, work, planes, out, flags, stream=None, threads=256):
    """The four stages over arrays that are already where they run: numpy arrays and the
    CPU twin when stream is None, else CUDA arrays and the kernels on that numba stream.
    totals: the batch's groups, blocks, plane bytes and pixels (host ints)."""
    sizes = (6 * n, int(totals[0]), int(totals[1]), int(totals[3]))
    if stream is None:
        _tables_cpu(sizes[0], rec32, tables)
        _segments_cpu(sizes[1], rec32, rec8, seg_starts, blk_starts, n, tables, coef, flags)
        _idct_cpu(sizes[2], rec32, blk_starts, pln_starts, n, coef, work, planes)
        _pixels_cpu(sizes[3], rec32, pix_starts, pln_starts, n, planes, out)
        return
    k = twin.cuda_stages(K, STAGES)
    arrays = dict(rec32=rec32, rec8=rec8, seg_starts=seg_starts, blk_starts=blk_starts,
                  pln_starts=pln_starts, pix_starts=pix_starts, tables=tables, coef=coef,
                  work=work, planes=planes, out=out, flags=flags, n_img=n)
    for stage, size in zip(STAGES, sizes):
        args = [arrays[a] for a in STAGES[stage][1].split(", ")]
        twin.launch_cuda(k, stage, size, args, threads, stream)


def run(recs, target="cpu", threads=256):
    """Decode the planned records (uint8 [n, cap], numpy) on `target`: (pixels uint8
    [total, 3], pixel starts int64 [n + 1], flags int32 [n]: 1 where the device disagreed
    with the index)."""
    n = recs.shape[0]
    rec32 = recs.view(np.int32)
    flags = np.zeros(n, np.int32)
    st = starts_of(rec32)
    totals = st[:, -1]
    arrays = [np.zeros((n, 6, K.TABLE), np.int32),
              np.zeros((max(int(totals[1]), 1), 64), np.int16),
              np.zeros((max(int(totals[1]), 1), 128), np.int64),
              np.zeros(max(int(totals[2]), 1), np.uint8),
              np.zeros((max(int(totals[3]), 1), 3), np.uint8), flags]
    if target == "cpu":
        run_stages(rec32, recs, st[0], st[1], st[2], st[3], n, totals, *arrays)
        return arrays[4], st[3], flags
    if target != "cuda":
        raise ValueError(f"target {target!r}: 'cpu' or 'cuda'")
    from numba import cuda
    stream = cuda.stream()
    d = [cuda.to_device(a, stream=stream) for a in (rec32, recs, *st, *arrays)]
    run_stages(d[0], d[1], d[2], d[3], d[4], d[5], n, totals, *d[6:], stream=stream,
               threads=threads)
    out, flags = d[10].copy_to_host(stream=stream), d[11].copy_to_host(stream=stream)
    stream.synchronize()
    return out, st[3], flags


def decode(payloads, boxes, target="cpu"):
    """Each window (y, x, h, w) of each payload (JPEG bytes with or without a window index)
    as jpeg_window.decode_window gives it: HxWx3 uint8 arrays. The device decodes what it
    can; the rest, and anything it flagged, is decoded on the CPU."""
    recs, planned = plan_batch(payloads, boxes)
    recs[~planned] = 0
    out, pix_starts, flags = run(recs, target)
    windows = []
    for i, (data, (y, x, h, w)) in enumerate(zip(payloads, boxes)):
        if planned[i] and not flags[i]:
            windows.append(out[pix_starts[i]:pix_starts[i + 1]].reshape(h, w, 3))
        else:
            windows.append(jpeg_window.decode_window(data, y, x, h, w))
    return windows
