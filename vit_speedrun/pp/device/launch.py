"""Run the device augmentations over a batch: the host draws (the same counter-based
streams as the CPU pipeline: flip, RandAugment's ops, arguments and Cutout centres) into
small per-image parameter rows, the device resizes, flips and augments.

    ip, fp = params(seed, epoch, indices, res, ...)      # host, numba, O(batch)
    out = augment(ip, fp, decoded, resized, res, layers, target="cpu")   # uint8 [n, res, res, 3]

`decoded` holds device-decoded windows (the JPEG decoder's packed pixels; ip's IP_SRC,
IP_H, IP_W say where each is), `resized` the images the CPU decoded and resized itself.
"""
import numpy as np
from numba import njit, prange

from vit_speedrun import twin
from vit_speedrun.pp import randaug_ops as A
from vit_speedrun.pp.device import kernels as K
from vit_speedrun.pp.ffcv_ops import _RANDAUG, _layer_draw, draw_key, flip_draw

MAX_LAYERS = 4
IP_WORDS = K.IP_LAYERS + K.L_WORDS * MAX_LAYERS
FP_WORDS = K.F_WORDS * MAX_LAYERS


@njit(nogil=True, fastmath=False, error_model="python")
def set_layer(ip, fp, layer, op, arg, cy, cx, res, fixed):
    """One RandAugment layer's parameters, as randaug_ops.apply_op_inplace reads `arg`."""
    b = K.IP_LAYERS + K.L_WORDS * layer
    f = K.F_WORDS * layer
    ip[b + K.L_OP] = op
    ip[b + K.L_CY] = cy
    ip[b + K.L_CX] = cx
    ip[b + K.L_INT] = 0
    ip[b + K.L_SKIP] = 0
    fp[f + K.F_FACTOR] = np.float32(arg)
    one, zero = np.float32(1.0), np.float32(0.0)
    t = (one, zero, zero, zero, one, zero)
    if op == A.POSTERIZE or op == A.SOLARIZE or op == A.SOLARIZE_ADD or op == A.CUTOUT:
        ip[b + K.L_INT] = int(arg)
    elif op == A.COLOR or op == A.CONTRAST or op == A.BRIGHTNESS or op == A.SHARPNESS:
        ip[b + K.L_SKIP] = arg == 1.0
        if op == A.CONTRAST:
            ip[b + K.L_INT] = fixed
    elif op == A.ROTATE:
        t = A.rotate_transform(res, res, arg)
    elif op == A.SHEAR_X:
        t = (one, np.float32(arg), zero, zero, one, zero)
    elif op == A.SHEAR_Y:
        t = (one, zero, zero, np.float32(arg), one, zero)
    elif op == A.TRANSLATE_X:
        t = (one, zero, np.float32(arg), zero, one, zero)
    elif op == A.TRANSLATE_Y:
        t = (one, zero, zero, zero, one, np.float32(arg))
    for k in range(6):
        fp[f + K.F_T0 + k] = t[k]


@njit(nogil=True, fastmath=False, error_model="python")
def draw_into(ip, fp, seed, epoch, index, res, flip_p, num_layers, magnitude, fixed):
    """Sample `index`'s flip and RandAugment draws, as ffcv_ops' RandomFlip (p = flip_p,
    0 = off) and RandAugment draw them, into its parameter rows."""
    ip[K.IP_FLIP] = flip_p > 0 and flip_draw(seed, epoch, index, flip_p)
    key = draw_key(seed, epoch, index, _RANDAUG)
    for layer in range(num_layers):
        op, arg, cy, cx = _layer_draw(key, layer, magnitude, fixed, res, res)
        set_layer(ip, fp, layer, op, arg, cy, cx, res, fixed)


@njit(nogil=True, fastmath=False, error_model="python")
def params(seed, epoch, indices, res, flip_p, num_layers, magnitude, fixed):
    """(ip int64 [n, IP_WORDS], fp float32 [n, FP_WORDS]) for samples `indices`, the
    image's source left for the caller (IP_MODE, IP_SRC, IP_H, IP_W)."""
    n = len(indices)
    ip = np.zeros((n, IP_WORDS), np.int64)
    fp = np.zeros((n, FP_WORDS), np.float32)
    for i in range(n):
        draw_into(ip[i], fp[i], seed, epoch, indices[i], res, flip_p, num_layers, magnitude,
                  fixed)
    return ip, fp


@njit(parallel=True, nogil=True)
def _resize_cpu(n, ip, decoded, res, out):
    for t in prange(n):
        K.resize_body(t, ip, decoded, res, out)


@njit(parallel=True, nogil=True)
def _place_cpu(n, ip, resized, res, out):
    for t in prange(n):
        K.place_body(t, ip, resized, res, out)


@njit(parallel=True, nogil=True)
def _stats_cpu(n, ip, layer, src, res, lut, deg):
    for t in prange(n):
        K.stats_body(t, ip, layer, src, res, lut, deg)


@njit(parallel=True, nogil=True)
def _op_cpu(n, ip, fp, layer, src, res, lut, deg, dst):
    for t in prange(n):
        K.op_body(t, ip, fp, layer, src, res, lut, deg, dst)


STAGES = {
    "resize": ("resize_body", "ip, decoded, res, out"),
    "place": ("place_body", "ip, resized, res, out"),
    "stats": ("stats_body", "ip, layer, src, res, lut, deg"),
    "op": ("op_body", "ip, fp, layer, src, res, lut, deg, dst"),
}


def run_stages(ip, fp, decoded, resized, res, num_layers, a, b, lut, deg, stream=None,
               threads=256):
    """Resize (or place), then each layer from a to b and back: the result is in a when
    num_layers is even, else in b. Arrays are where they run: numpy and the CPU twin when
    stream is None, else CUDA arrays and the kernels on that numba stream."""
    n = ip.shape[0]
    if num_layers > MAX_LAYERS:
        raise ValueError(f"device RandAugment: at most {MAX_LAYERS} layers, got {num_layers}")
    pixels = n * res * res
    if stream is None:
        _resize_cpu(pixels, ip, decoded, res, a)
        _place_cpu(pixels, ip, resized, res, a)
        for layer in range(num_layers):
            _stats_cpu(3 * n, ip, layer, a, res, lut, deg)
            _op_cpu(pixels, ip, fp, layer, a, res, lut, deg, b)
            a, b = b, a
        return
    k = twin.cuda_stages(K, STAGES)
    twin.launch_cuda(k, "resize", pixels, (ip, decoded, res, a), threads, stream)
    twin.launch_cuda(k, "place", pixels, (ip, resized, res, a), threads, stream)
    for layer in range(num_layers):
        twin.launch_cuda(k, "stats", 3 * n, (ip, layer, a, res, lut, deg), threads, stream)
        twin.launch_cuda(k, "op", pixels, (ip, fp, layer, a, res, lut, deg, b), threads,
                         stream)
        a, b = b, a


def augment(ip, fp, decoded, resized, res, num_layers, target="cpu", threads=256):
    """uint8 [n, res, res, 3] (numpy): each image resized (or placed), flipped and
    augmented, on `target` ("cpu": the CPU twin; "cuda": the kernels)."""
    n = ip.shape[0]
    bufs = [np.zeros((n, res, res, 3), np.uint8), np.zeros((n, res, res, 3), np.uint8),
            np.zeros((n, 3, 256), np.int32), np.zeros(n, np.int32)]
    if target == "cpu":
        run_stages(ip, fp, decoded, resized, res, num_layers, *bufs)
        return bufs[num_layers % 2]
    if target != "cuda":
        raise ValueError(f"target {target!r}: 'cpu' or 'cuda'")
    from numba import cuda
    stream = cuda.stream()
    d = [cuda.to_device(x, stream=stream) for x in (ip, fp, decoded, resized, *bufs)]
    run_stages(*d[:4], res, num_layers, *d[4:], stream=stream, threads=threads)
    out = d[4 + num_layers % 2].copy_to_host(stream=stream)
    stream.synchronize()
    return out
