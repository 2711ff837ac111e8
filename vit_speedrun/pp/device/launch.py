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
def params(seed, epoch, indices, res, flip_p, num_layers, magnitude, fixed):
    """(ip int64 [n, IP_WORDS], fp float32 [n, FP_WORDS]) for samples `indices`: the flip
    and RandAugment draws of ffcv_ops (RandomFlip with p = flip_p, 0 = off; RandAugment's
    layers), the image's source left for the caller (IP_MODE, IP_SRC, IP_H, IP_W)."""
    n = len(indices)
    ip = np.zeros((n, IP_WORDS), np.int64)
    fp = np.zeros((n, FP_WORDS), np.float32)
    for i in range(n):
        ip[i, K.IP_FLIP] = flip_p > 0 and flip_draw(seed, epoch, indices[i], flip_p)
        key = draw_key(seed, epoch, indices[i], _RANDAUG)
        for layer in range(num_layers):
            op, arg, cy, cx = _layer_draw(key, layer, magnitude, fixed, res, res)
            set_layer(ip[i], fp[i], layer, op, arg, cy, cx, res, fixed)
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


def augment(ip, fp, decoded, resized, res, num_layers, target="cpu", threads=256):
    """uint8 [n, res, res, 3]: each image resized (or placed), flipped and augmented.
    Arrays are numpy for target "cpu"; for "cuda", numpy or CUDA device arrays (the result
    is then a device array)."""
    n = ip.shape[0]
    if num_layers > MAX_LAYERS:
        raise ValueError(f"device RandAugment: at most {MAX_LAYERS} layers, got {num_layers}")
    pixels = n * res * res
    if target == "cpu":
        a = np.zeros((n, res, res, 3), np.uint8)
        b = np.zeros_like(a)
        lut = np.zeros((n, 3, 256), np.int32)
        deg = np.zeros(n, np.int32)
        _resize_cpu(pixels, ip, decoded, res, a)
        _place_cpu(pixels, ip, resized, res, a)
        for layer in range(num_layers):
            _stats_cpu(3 * n, ip, layer, a, res, lut, deg)
            _op_cpu(pixels, ip, fp, layer, a, res, lut, deg, b)
            a, b = b, a
        return a
    if target != "cuda":
        raise ValueError(f"target {target!r}: 'cpu' or 'cuda'")
    from numba import cuda
    k = twin.cuda_stages(K, STAGES)
    ip, fp, decoded, resized = (cuda.to_device(x) if isinstance(x, np.ndarray) else x
                                for x in (ip, fp, decoded, resized))
    a = cuda.device_array((n, res, res, 3), np.uint8)
    b = cuda.device_array((n, res, res, 3), np.uint8)
    lut = cuda.device_array((n, 3, 256), np.int32)
    deg = cuda.device_array(n, np.int32)
    twin.launch_cuda(k, "resize", pixels, (ip, decoded, res, a), threads)
    twin.launch_cuda(k, "place", pixels, (ip, resized, res, a), threads)
    for layer in range(num_layers):
        twin.launch_cuda(k, "stats", 3 * n, (ip, layer, a, res, lut, deg), threads)
        twin.launch_cuda(k, "op", pixels, (ip, fp, layer, a, res, lut, deg, b), threads)
        a, b = b, a
    return a
