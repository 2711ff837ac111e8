"""The reference's train preprocessing as FFCV operations compiled by numba.

big_vision runs `inception_crop|flip_lr|randaug(2,10)|value_range(-1,1)` per image and
then mixes the batch (RECIPE.md, "Train preprocessing", "RandAugment",
"Mixup"). Here each step is an FFCV operation whose per-image loop is a `prange` over
the batch (FFCV turns it into threads when num_workers > 1), with no Python work per image.

Randomness. FFCV's own random ops draw from numba's per-thread, unseeded generator, so
their results depend on which thread handles which image. Every draw here is instead a
pure function of its coordinates: a counter-based generator (splitmix64 hashes of
(seed, epoch, sample index, stream, draw number)) for the per-image ops, and (seed,
epoch, batch ordinal) for mixup. The same seed and epoch give the same crops, flips,
RandAugment ops and mixup coefficients whatever the number of threads or ranks; another
epoch gives other draws.

The seed, epoch and batch counters live in a small int64 array owned by `AugmentClock`.
Numba freezes global and closure arrays into the compiled code as constants, so the
operations capture the array's *address* (an int) and view it with `numba.carray` at
run time; that is how `clock.set_epoch(...)` reaches code FFCV compiled once.

Usage (the trainer): build the Loader once with `train_pipelines(clock, ...)` plus
ToTensor/ToDevice/ToTorchImage; each epoch iterate `loaders.epoch_iterator(loader, clock,
epoch, first_batch)` (or call `clock.set_epoch(epoch)` before each `iter(loader)`). FFCV runs
the batches of an epoch in order in one background thread, so the mixup batch counters
advance exactly once per batch. An epoch's iterator must be finished (or closed and
joined, which epoch_iterator does) before the next epoch starts, or its thread may still
advance the counters.

Normalise + mixup can also run on the GPU after ToDevice (train_pipelines(...,
mix_on_device=True) + device_tail(...)): the same float32 numbers, a quarter of the
host-to-device bytes, and about 50 us less CPU per 224 px image.

Decode, crop and resize are the reference's to the bit: TF's crop sampler and bilinear
resize (pp/tf_image.py) and TF's decode of the crop window alone (jpeg/window.py), each checked
against TF's own outputs (tests/data). EvalDecoder (from tf_image) is the eval
preprocessing.

CLI: `python rand_augment.py --beton X --out grid.png` writes a grid of augmented
samples (`python benchmark.py loader --beton X` times the loader).
"""

import numba
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation

from vit_speedrun.jpeg import window as jpeg_window
from vit_speedrun.pp.randaug_ops import OP_NAMES, apply_op, apply_op_inplace, level_to_arg  # noqa: F401
from vit_speedrun.pp.tf_image import (EvalDecoder, crop_aspect, generate_random_crop,  # noqa: F401
                                      resize_bilinear)

__all__ = ["AugmentClock", "InceptionCropDecoder", "RandomFlip",
           "RandAugment", "NormalizeMixup", "DeviceNormalizeMixup", "device_tail",
           "LabelMixup", "Normalize", "train_pipelines", "apply_op", "sample_crop",
           "sample_crops", "flip_draw", "randaug_draws", "mixup_coefficient", "value_range",
           "OP_NAMES", "EvalDecoder", "is_ffcv_finalizer_noise"]

# Stream ids: each random decision gets its own stream so that no two ops share draws.
_CROP, _FLIP, _RANDAUG, _MIXUP = 1, 2, 3, 4

# ---------------------------------------------------------------------------------------
# Counter-based random numbers: pure functions of their coordinates.
# ---------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def _mix64(z):
    """splitmix64's finaliser: a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def draw_key(seed, epoch, index, stream):
    """The 64-bit key of one random stream: (seed, epoch, sample or batch index, stream)."""
    h = _mix64(np.uint64(seed) + _GOLDEN)
    h = _mix64(h ^ np.uint64(epoch))
    h = _mix64(h ^ np.uint64(index))
    return _mix64(h ^ np.uint64(stream))


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def uniform(key, k):
    """The k-th uniform float64 in [0, 1) of stream `key` (53 random bits)."""
    bits = _mix64(key + np.uint64(k + 1) * _GOLDEN) >> np.uint64(11)
    return np.float64(bits) * (1.0 / 9007199254740992.0)


# ---------------------------------------------------------------------------------------
# The clock: seed, epoch and batch counters, read by compiled code through an address.
# ---------------------------------------------------------------------------------------
@intrinsic
def _voidptr(typingctx, addr):
    """int64 -> void*, so that numba.carray can view memory we only know the address of."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(addr), codegen


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def _clock_view(addr):
    """The AugmentClock's live int64[5] array [seed, epoch, image_batch, label_batch,
    micro-batches per step]."""
    return numba.carray(_voidptr(addr), (5,), np.int64)


class AugmentClock:
    """Seed, epoch and per-op batch counters shared by the augmentation operations.

    The operations read the array through its address at run time (see the module
    docstring), so `set_epoch` takes effect in pipelines FFCV compiled earlier.
    """
    SEED, EPOCH, IMAGE_BATCH, LABEL_BATCH, ACCUM = range(5)

    def __init__(self, seed=0, accum=1):
        """accum: loader batches per optimizer step (training.grad_accum); the k
        micro-batches of a step share its mixup coefficient, as k ranks share theirs."""
        if not 0 <= int(seed) < 2 ** 63:
            raise ValueError(f"AugmentClock: seed must be a non-negative int64, got {seed}")
        if int(accum) < 1:
            raise ValueError(f"AugmentClock: accum must be >= 1, got {accum}")
        self.state = np.zeros(5, dtype=np.int64)
        self.state[self.SEED] = int(seed)
        self.state[self.ACCUM] = int(accum)

    @property
    def address(self):
        return int(self.state.ctypes.data)

    @property
    def seed(self):
        return int(self.state[self.SEED])

    @property
    def epoch(self):
        return int(self.state[self.EPOCH])

    @property
    def batches(self):
        """(image batches, label batches) mixed so far this epoch."""
        return int(self.state[self.IMAGE_BATCH]), int(self.state[self.LABEL_BATCH])

    def set_epoch(self, epoch, first_batch=0):
        """Call before each iter(loader); first_batch > 0 when resuming mid-epoch (the
        loader must then start at that batch of the epoch's order)."""
        if epoch < 0 or first_batch < 0:
            raise ValueError(f"AugmentClock.set_epoch: epoch {epoch} and first_batch "
                             f"{first_batch} must be >= 0")
        self.state[self.EPOCH] = epoch
        self.state[self.IMAGE_BATCH] = first_batch
        self.state[self.LABEL_BATCH] = first_batch

    def __repr__(self):
        return (f"AugmentClock(seed={self.seed}, epoch={self.epoch}, "
                f"batches={self.batches})")


def _declare_os_cache_pages_readonly():
    """FFCV 1.0.2's OSCacheManager marks its pages readonly by setting `mutable = False` on
    numba's interned array(uint8, 1d, C) type itself, changing the hash of an object that
    numba's dispatchers already use as a dict key: a later compile then loops forever in
    the corrupted dict (or raises KeyError). Same reader, with a readonly type of its own."""
    from ffcv.memory_managers.os_cache import OSCacheManager
    pages = types.Array(types.uint8, 1, 'C', readonly=True)
    state = types.Tuple([pages, types.uint64[::1], types.uint64[::1]])

    def compile_reader(self):
        def read(address, mem_state):
            size = mem_state[2][np.searchsorted(mem_state[1], address)]
            return mem_state[0][address:address + size]
        return Compiler.compile(read, pages(types.uint64, state))

    OSCacheManager.state_type = property(lambda self: state)
    OSCacheManager.compile_reader = compile_reader


_declare_os_cache_pages_readonly()


# ---------------------------------------------------------------------------------------
# Inception crop.
# ---------------------------------------------------------------------------------------
@njit(nogil=True, fastmath=False, error_model="python")
def sample_crop(seed, epoch, index, height, width, area_lo, area_hi, aspect_lo, aspect_hi,
                attempts):
    """(y, x, h, w) of the reference's inception crop for one sample: TF's
    sample_distorted_bounding_box (RECIPE.md, "Train preprocessing" 1) fed by this
    sample's crop stream. Per attempt an aspect w/h ~ U(aspect_lo, aspect_hi), then a
    uniform HEIGHT (so area density ~ 1/sqrt(area)), offsets uniform in [0, H - h - 1]
    (tf_image.generate_random_crop); whole image if no attempt fits. Not cached on disk:
    numba's cache would miss changes to vit_speedrun/pp/tf_image.py.
    """
    key = draw_key(seed, epoch, index, _CROP)
    for t in range(attempts):
        aspect = crop_aspect(uniform(key, 4 * t), aspect_lo, aspect_hi)
        ok, y, x, h, w = generate_random_crop(height, width, area_lo, area_hi, aspect,
                                              uniform(key, 4 * t + 1),
                                              uniform(key, 4 * t + 2),
                                              uniform(key, 4 * t + 3))
        if ok:
            return y, x, h, w
    return np.int64(0), np.int64(0), np.int64(height), np.int64(width)


@njit(nogil=True, fastmath=False, error_model="python")
def sample_crops(seed, epoch, indices, height, width, area_lo=0.05, area_hi=1.0,
                 aspect_lo=0.75, aspect_hi=1.33, attempts=100):
    """int64[len(indices), 4] of (y, x, h, w): many crops at once, for tests."""
    out = np.empty((len(indices), 4), dtype=np.int64)
    for i in range(len(indices)):
        y, x, h, w = sample_crop(seed, epoch, indices[i], height, width, area_lo, area_hi,
                                 aspect_lo, aspect_hi, attempts)
        out[i, 0] = y
        out[i, 1] = x
        out[i, 2] = h
        out[i, 3] = w
    return out


class InceptionCropDecoder(ResizedCropRGBImageDecoder):
    """Decode an RGBImageField, take the reference's inception crop, resize to output_size.

    The crop is TF's sample_distorted_bounding_box with draws that depend only on (seed,
    epoch, sample index) (`sample_crop`); the resize is TF's bilinear one, half-pixel
    centres, clipped and truncated to uint8 (`tf_image.resize_bilinear`), as big_vision's
    decode_jpeg_and_inception_crop(224). If no attempt fits, the whole image is resized.
    """

    def __init__(self, clock, output_size=224, area=(0.05, 1.0), aspect=(0.75, 1.33),
                 attempts=100):
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        super().__init__(tuple(output_size))
        if not (0 < area[0] <= area[1] <= 1 and 0 < aspect[0] <= aspect[1] and attempts > 0):
            raise ValueError(f"InceptionCropDecoder: bad area={area}, aspect={aspect} or "
                             f"attempts={attempts}")
        self.clock = clock
        self.area = (float(area[0]), float(area[1]))
        self.aspect = (float(aspect[0]), float(aspect[1]))
        self.attempts = int(attempts)

    @property
    def get_crop_generator(self):
        return sample_crop

    def window_decoder(self):
        """The decode step, compiled per Loader: f(image_data, mode, height, width, buffer,
        y, x, h, w) -> (pixels, y0, x0), C-contiguous uint8 pixels holding the window at
        (y0, x0). A JPEG (write_mode=original keeps the files' own bytes) is decoded as TF's
        decode_and_crop_jpeg does: the window alone, libjpeg IFAST (vit_speedrun/jpeg/window.py; a
        decode-then-slice differs in the window's edge columns on subsampled chroma, and
        costs the rows below the window). Raw pixels are only sliced."""
        jpg = IMAGE_MODES['jpg']
        decode_c = jpeg_window.decode_window_c

        def decode_window(image_data, mode, height, width, buffer, y, x, h, w):
            if mode != jpg:
                return image_data.reshape(height, width, 3), y, x
            out = buffer.reshape(-1)[:3 * h * w]
            if decode_c(image_data.ctypes.data, image_data.size, y, x, h, w,
                        out.ctypes.data, 3 * w) != 0:
                raise ValueError("InceptionCropDecoder: a JPEG of the .beton does not "
                                 "decode (jpeg_window); check the file with write_ffcv.py")
            return out.reshape(h, w, 3), 0, 0

        return Compiler.compile(decode_window)

    def resizer(self):
        """The resize step: f(pixels, y0, x0, h, w, dst), TF's bilinear resize of the
        window into dst (benchmark.py's decode-only stage replaces it)."""
        return resize_bilinear

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        decode_window = self.window_decoder()
        resize = self.resizer()
        addr = self.clock.address
        area_lo, area_hi = self.area
        aspect_lo, aspect_hi = self.aspect
        attempts = self.attempts

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            clock = _clock_view(addr)
            seed = clock[0]
            epoch = clock[1]
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field['data_ptr'], storage_state)
                height = np.uint32(field['height'])
                width = np.uint32(field['width'])
                y, x, h, w = sample_crop(seed, epoch, source_ix, height, width, area_lo,
                                         area_hi, aspect_lo, aspect_hi, attempts)
                pixels, y0, x0 = decode_window(image_data, field['mode'], height, width,
                                               temp_storage[dst_ix], y, x, h, w)
                resize(pixels, y0, x0, h, w, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


# ---------------------------------------------------------------------------------------
# Horizontal flip.
# ---------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def flip_draw(seed, epoch, index, p):
    """True when sample `index` is flipped this epoch."""
    return uniform(draw_key(seed, epoch, index, _FLIP), 0) < p


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def _flip_inplace(img):
    """Reverse the pixel order of every row of a C-contiguous HxWx3 image, in place.
    Unsigned indices spare numba's negative-index checks (2x faster)."""
    width = img.shape[1]
    row = np.uint64(3 * width)
    one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
    flat = img.reshape(-1)
    for y in range(img.shape[0]):
        i = np.uint64(y) * row
        j = i + row - three
        for _ in range(width // 2):
            t0, t1, t2 = flat[i], flat[i + one], flat[i + two]
            flat[i], flat[i + one], flat[i + two] = flat[j], flat[j + one], flat[j + two]
            flat[j], flat[j + one], flat[j + two] = t0, t1, t2
            i += three
            j -= three


class RandomFlip(Operation):
    """Flip left-right with probability p (reference: flip_lr), in place."""

    def __init__(self, clock, p=0.5):
        super().__init__()
        self.clock = clock
        self.p = float(p)

    def generate_code(self):
        my_range = Compiler.get_iterator()
        addr = self.clock.address
        p = self.p

        def flip(images, _unused, batch_indices):
            clock = _clock_view(addr)
            seed = clock[0]
            epoch = clock[1]
            for i in my_range(images.shape[0]):
                if flip_draw(seed, epoch, batch_indices[i], p):
                    _flip_inplace(images[i])
            return images

        flip.is_parallel = True
        flip.with_indices = True
        return flip

    def declare_state_and_memory(self, previous_state):
        return previous_state, None


# ---------------------------------------------------------------------------------------
# RandAugment.
# ---------------------------------------------------------------------------------------
_NUM_OPS = len(OP_NAMES)
_CUTOUT = OP_NAMES.index("Cutout")


@njit(nogil=True, fastmath=False, error_model="python")
def _layer_draw(key, layer, magnitude, fixed, height, width):
    """(op index, argument, cutout centre y, x) of one RandAugment layer.

    Not cached on disk on purpose: it calls into augment_ops, and numba's cache would not
    notice when that other file changes (it only checks this file's timestamp).
    """
    op = min(np.int64(uniform(key, 4 * layer) * _NUM_OPS), _NUM_OPS - 1)
    negate = uniform(key, 4 * layer + 1) < 0.5
    cy = np.int64(uniform(key, 4 * layer + 2) * height)
    cx = np.int64(uniform(key, 4 * layer + 3) * width)
    return op, level_to_arg(op, magnitude, negate, fixed), cy, cx


@njit(nogil=True, fastmath=False, error_model="python")
def _randaug_one(img, scratch, seed, epoch, index, num_layers, magnitude, fixed):
    """Apply `num_layers` uniformly chosen ops (with replacement, always applied) in place."""
    key = draw_key(seed, epoch, index, _RANDAUG)
    for layer in range(num_layers):
        op, arg, cy, cx = _layer_draw(key, layer, magnitude, fixed, img.shape[0],
                                      img.shape[1])
        apply_op_inplace(img, scratch, op, arg, cy, cx, fixed)


def randaug_draws(seed, epoch, index, height, width, num_layers=2, magnitude=10,
                  fixed=False):
    """What RandAugment does to sample `index`: a list of (op name, args for apply_op,
    (cy, cx)) per layer; (cy, cx) is the Cutout centre, drawn for every layer."""
    key = np.uint64(draw_key(seed, epoch, index, _RANDAUG))
    out = []
    for layer in range(num_layers):
        op, arg, cy, cx = _layer_draw(key, layer, magnitude, fixed, height, width)
        out.append((OP_NAMES[op], float(arg), (int(cy), int(cx))))
    return out


class RandAugment(Operation):
    """big_vision's RandAugment(num_layers, magnitude) on a uint8 NHWC batch, in place.

    Each layer picks one of the 16 ops uniformly (with replacement) and always applies it;
    signs are random with p = 0.5. `fixed=True` is the documented off-by-default option
    (true mean for Contrast, real Solarize threshold); see augment_ops.level_to_arg.
    """

    def __init__(self, clock, num_layers=2, magnitude=10, fixed=False):
        super().__init__()
        if not (num_layers >= 0 and 0 <= magnitude <= 10):
            raise ValueError(f"RandAugment: num_layers={num_layers} must be >= 0 and "
                             f"magnitude={magnitude} in [0, 10]")
        self.clock = clock
        self.num_layers = int(num_layers)
        self.magnitude = float(magnitude)
        self.fixed = bool(fixed)

    def generate_code(self):
        my_range = Compiler.get_iterator()
        addr = self.clock.address
        num_layers, magnitude, fixed = self.num_layers, self.magnitude, self.fixed

        def randaug(images, scratch, batch_indices):
            clock = _clock_view(addr)
            seed = clock[0]
            epoch = clock[1]
            for i in my_range(images.shape[0]):
                _randaug_one(images[i], scratch[i], seed, epoch, batch_indices[i],
                             num_layers, magnitude, fixed)
            return images

        randaug.is_parallel = True
        randaug.with_indices = True
        return randaug

    def declare_state_and_memory(self, previous_state):
        if previous_state.shape is None or len(previous_state.shape) != 3 \
                or previous_state.dtype != np.uint8:
            raise TypeError("RandAugment needs uint8 HxWx3 images: put it after the "
                            "decoder/flip and before NormalizeMixup")
        return previous_state, AllocationQuery(previous_state.shape, np.uint8)


# ---------------------------------------------------------------------------------------
# value_range(-1, 1) and mixup.
# ---------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def _vr(v):
    """value_range(-1, 1) of one uint8 as TF computes it in float32: v / 255 * 2 - 1.
    (Computed, not looked up: the loops below vectorise, a table lookup does not.)"""
    return np.float32(v) / np.float32(255.0) * np.float32(2.0) + np.float32(-1.0)


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def value_range():
    """float32[256]: the normalised value of every uint8."""
    lut = np.empty(256, dtype=np.float32)
    for v in range(256):
        lut[v] = _vr(v)
    return lut


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def mixup_coefficient(seed, epoch, batch, alpha):
    """The reference's a for one batch: Beta(alpha, alpha) folded to max(a, 1 - a), as
    float32; 1 when alpha <= 0 (no mixing). A pure function of (seed, epoch, batch)."""
    if alpha <= 0:
        return np.float32(1.0)
    key = draw_key(seed, epoch, batch, _MIXUP)
    np.random.seed(np.uint32(key >> np.uint64(32)))
    a = np.float32(np.random.beta(alpha, alpha))
    return max(a, np.float32(1.0) - a)


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def _normalize_mix_one(img, partner, dst, a):
    """dst = a * n(img) + (1 - a) * n(partner) in float32, n = value_range. Flat loops
    over C-contiguous arrays (FFCV's buffers are) so that LLVM vectorises them."""
    s, p, o = img.reshape(-1), partner.reshape(-1), dst.reshape(-1)
    b = np.float32(1.0) - a
    for i in range(s.size):
        o[i] = a * _vr(s[i]) + b * _vr(p[i])


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def _normalize_one(img, dst):
    s, o = img.reshape(-1), dst.reshape(-1)
    for i in range(s.size):
        o[i] = _vr(s[i])


class _ToFloat32(Operation):
    """An operation whose output is the input's shape in float32 (value_range(-1, 1))."""

    def declare_state_and_memory(self, previous_state):
        from dataclasses import replace
        return (replace(previous_state, dtype=np.dtype(np.float32)),
                AllocationQuery(previous_state.shape, np.dtype(np.float32)))


class NormalizeMixup(_ToFloat32):
    """uint8 NHWC -> float32 NHWC in [-1, 1], then x = a x + (1 - a) roll(x, 1).

    a ~ Beta(alpha, alpha) folded to >= 0.5, one per batch, from (seed, epoch, batch
    ordinal): the same on every rank. Image i is mixed with image i - 1 (image 0 with the
    last). Mixing in float after normalisation avoids uint8 truncation. alpha = 0: no mixing.
    """

    def __init__(self, clock, alpha=0.2):
        super().__init__()
        self.clock = clock
        self.alpha = float(alpha)

    def generate_code(self):
        my_range = Compiler.get_iterator()
        addr = self.clock.address
        alpha = self.alpha

        def normalize_mixup(images, dst):
            clock = _clock_view(addr)
            batch = clock[2]
            clock[2] = batch + 1
            a = mixup_coefficient(clock[0], clock[1], batch // clock[4], alpha)
            n = images.shape[0]
            for i in my_range(n):
                if a == np.float32(1.0):
                    _normalize_one(images[i], dst[i])
                else:
                    _normalize_mix_one(images[i], images[(i + n - 1) % n], dst[i], a)
            return dst[:n]

        normalize_mixup.is_parallel = True
        return normalize_mixup


class Normalize(_ToFloat32):
    """uint8 NHWC -> float32 NHWC in [-1, 1] (value_range(-1, 1)), for evaluation."""

    def generate_code(self):
        my_range = Compiler.get_iterator()

        def normalize(images, dst):
            n = images.shape[0]
            for i in my_range(n):
                _normalize_one(images[i], dst[i])
            return dst[:n]

        normalize.is_parallel = True
        return normalize



class DeviceNormalizeMixup(Operation):
    """NormalizeMixup on the training device: uint8 [N, 3, H, W] tensors (after ToTensor,
    ToDevice, ToTorchImage) -> float32 [N, 3, H, W] contiguous, same a, pairing and float32
    arithmetic as NormalizeMixup (one rounding per operation: x / 255, * 2, - 1, a * x,
    (1 - a) * roll(x), sum; separate kernels, so no fused multiply-add).

    Why: on the CPU, normalise + mixup costs about 50 us per 224 px image, bound by
    writing 600 kB of float32; on the GPU it is free, and the host->device copy shrinks
    4x (uint8). Use with train_pipelines(..., mix_on_device=True) and device_tail().
    """

    def __init__(self, clock, alpha=0.2):
        super().__init__()
        self.clock = clock
        self.alpha = float(alpha)

    def generate_code(self):
        import torch
        state, alpha = self.clock.state, self.alpha
        divisors = {}

        def normalize_mixup(images, buffers):
            n = images.shape[0]
            out, rolled = buffers[0][:n], buffers[1][:n]
            batch = int(state[2])
            state[2] = batch + 1
            a = float(mixup_coefficient(int(state[0]), int(state[1]), batch // int(state[4]),
                                        alpha))
            if out.device not in divisors:
                # a tensor, not a Python scalar: CUDA divides by a host scalar as a
                # multiplication by its reciprocal, which is not x / 255 to the last bit
                divisors[out.device] = torch.tensor(255.0, dtype=torch.float32,
                                                    device=out.device)
            out.copy_(images)
            out.div_(divisors[out.device]).mul_(2.0).add_(-1.0)
            if a != 1.0:
                b = 1.0 - a                      # exact in float32 for a in [0.5, 1]
                torch.mul(out[:n - 1], b, out=rolled[1:])
                torch.mul(out[n - 1:], b, out=rolled[:1])
                out.mul_(a).add_(rolled)
            return out

        return normalize_mixup

    def declare_state_and_memory(self, previous_state):
        import torch
        from dataclasses import replace
        if previous_state.jit_mode or len(previous_state.shape) != 3 \
                or previous_state.shape[0] != 3:
            raise TypeError("DeviceNormalizeMixup needs [N, 3, H, W] tensors: put it after "
                            "ToTensor(), ToDevice(...) and ToTorchImage()")
        query = AllocationQuery(previous_state.shape, torch.float32, previous_state.device)
        return replace(previous_state, dtype=torch.float32), (query, query)


def device_tail(clock, device, alpha=0.2, non_blocking=True):
    """What to append to train_pipelines(..., mix_on_device=True)['image']: uint8 to the
    device, NCHW, then normalise + mixup there (float32 [N, 3, H, W])."""
    import torch
    from ffcv.transforms import ToDevice, ToTensor, ToTorchImage
    return [ToTensor(), ToDevice(torch.device(device), non_blocking=non_blocking),
            ToTorchImage(), DeviceNormalizeMixup(clock, alpha)]


class LabelMixup(Operation):
    """int label [N, 1] -> float32 [N, num_classes] two-hot: a on label i, 1 - a on label
    i - 1, with the same a and pairing as NormalizeMixup (a + (1 - a) when they agree)."""

    def __init__(self, clock, num_classes, alpha=0.2):
        super().__init__()
        self.clock = clock
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)

    def generate_code(self):
        addr = self.clock.address
        alpha = self.alpha
        num_classes = self.num_classes

        def label_mixup(labels, dst):
            clock = _clock_view(addr)
            batch = clock[3]
            clock[3] = batch + 1
            a = mixup_coefficient(clock[0], clock[1], batch // clock[4], alpha)
            _two_hot(labels, dst, a, num_classes)
            return dst[:labels.shape[0]]

        return label_mixup

    def declare_state_and_memory(self, previous_state):
        from dataclasses import replace
        return (replace(previous_state, shape=(self.num_classes,),
                        dtype=np.dtype(np.float32)),
                AllocationQuery((self.num_classes,), np.dtype(np.float32)))


@njit(cache=True, nogil=True, fastmath=False, error_model="python")
def _two_hot(labels, dst, a, num_classes):
    n = labels.shape[0]
    b = np.float32(1.0) - a
    for i in range(n):
        mine = labels[i, 0]
        other = labels[(i + n - 1) % n, 0]
        if not (0 <= mine < num_classes):
            raise ValueError("LabelMixup: a label is outside [0, num_classes)")
        for c in range(num_classes):
            dst[i, c] = 0
        if mine == other:
            dst[i, mine] = a + b
        else:
            dst[i, mine] = a
            dst[i, other] = b


def train_pipelines(clock, *, res=224, randaug=(2, 10), fixed=False, flip=True,
                    mixup_alpha=0.2, num_classes=1000, crop_area=(0.05, 1.0),
                    mix_on_device=False):
    """The 'image' and 'label' pipelines of the reference's training preprocessing, up to
    (excluding) ToTensor/ToDevice. randaug=None disables RandAugment; mixup_alpha=0
    disables mixing (labels are then one-hot float32); crop_area is the inception crop's
    area range (the recipe's (0.05, 1.0) unless a tiny demo needs larger crops).

    Images come out float32 NHWC in [-1, 1], mixed; with mix_on_device=True they stay
    uint8 NHWC and the caller appends device_tail(clock, device, mixup_alpha), which
    normalises and mixes on the device (same numbers, cheaper; see DeviceNormalizeMixup).
    Labels always come out float32 [N, num_classes], mixed on the CPU.
    """
    image = [InceptionCropDecoder(clock, res, area=crop_area)]
    if flip:
        image.append(RandomFlip(clock))
    if randaug is not None:
        image.append(RandAugment(clock, randaug[0], randaug[1], fixed=fixed))
    if not mix_on_device:
        image.append(NormalizeMixup(clock, mixup_alpha))
    label = [IntDecoder(), LabelMixup(clock, num_classes, mixup_alpha)]
    return {'image': image, 'label': label}




# ---------------------------------------------------------------------------------------
# FFCV housekeeping.
# ---------------------------------------------------------------------------------------
def is_ffcv_finalizer_noise(unraisable):
    """True for the KeyError numba's dispatcher finaliser raises when FFCV's per-Loader
    dispatchers of its C decoder are garbage-collected (harmless; seen with FFCV's own
    decoders too). For a sys.unraisablehook filter."""
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (unraisable.exc_type is KeyError and tb is not None
            and tb.tb_frame.f_code.co_name == "finalizer"
            and "numba" in tb.tb_frame.f_code.co_filename)
