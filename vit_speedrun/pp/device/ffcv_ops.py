"""The train pipeline with its images decoded and augmented on the device
(`augment.where=device`): two FFCV operations around ToDevice.

- DevicePlanner (host, numba, FFCV's decoder threads): per sample the same inception crop
  as InceptionCropDecoder, then no decoding: the window's plan (vit_speedrun/jpeg/plan.c:
  its MCU rows' entropy-coded bytes cut at the index points, tables, geometry) and the
  flip and RandAugment draws, into one fixed-size byte row. A sample the device cannot
  decode (no window index, progressive, restart markers, stored as pixels, a record over
  the budget) is decoded and resized here as the CPU path does, and joins after the resize.
- DeviceDecodeAugment (the device, after ToDevice): Huffman decoding, IDCT, upsampling and
  colour (vit_speedrun/jpeg/device), resize, flip and RandAugment (vit_speedrun/pp/device),
  then value_range and mixup as DeviceNormalizeMixup: float32 [N, 3, res, res].

Bit for bit the CPU path's batches (tests/pp/test_device_pipeline.py). On a CUDA device the
kernels run on the loader thread's current stream; on the CPU (tests, CI) their CPU twin.

A sample's row: ip (int64 [launch.IP_WORDS]), fp (float32 [launch.FP_WORDS]), the
batch layout of its image (START_WORDS), then from PAYLOAD the plan record (MODE_DECODED)
or the res x res x 3 pixels (MODE_RESIZED).
"""
from dataclasses import replace

import numpy as np
from numba import njit

from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation

from vit_speedrun.jpeg import window as jpeg_window
from vit_speedrun.jpeg.device import launch as JL
from vit_speedrun.jpeg.device import record as R
from vit_speedrun.pp import ffcv_ops
from vit_speedrun.pp.device import kernels as K
from vit_speedrun.pp.device import launch as L

IP_BYTES = 8 * L.IP_WORDS
FP_AT = IP_BYTES
START_AT = FP_AT + 4 * L.FP_WORDS
START_WORDS = 8        # per kind (groups, blocks, plane bytes, pixels): start, end
PAYLOAD = (START_AT + 8 * START_WORDS + 63) // 64 * 64


def sample_budget(beton, res, quantile=0.99):
    """Bytes per sample row: the payload of the `quantile` largest plan a window of the
    set could need (each file's size plus its groups, at most one per 32 pixels of an MCU
    row: write_ffcv's index span), and at least a resized image. Samples whose plan does
    not fit take the CPU branch."""
    from ffcv.reader import Reader
    reader = Reader(str(beton))
    meta = reader.metadata["f0"] if "f0" in reader.metadata.dtype.names else None
    if meta is None:
        raise ValueError(f"{beton}: the first field is not an image (device decoding reads "
                         f"the 'image' field written by write_ffcv.py)")
    sizes = np.zeros(len(meta), np.int64)
    table = reader.alloc_table
    ptr_size = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    for i, p in enumerate(meta["data_ptr"].tolist()):
        sizes[i] = ptr_size.get(p, 0)
    h, w = meta["height"].astype(np.int64), meta["width"].astype(np.int64)
    plan = 4 * R.SEGS + 4 * R.SEGW * (h // 8 + 2) * (w // 32 + 2) + sizes + 64
    need = max(int(np.quantile(plan, quantile)), 3 * res * res)
    return PAYLOAD + (need + 63) // 64 * 64


@njit(nogil=True)
def _layout(destination, n, totals):
    """Each sample's start and end in the batch's groups, blocks, plane bytes and pixels
    (for the device's launches), and the batch totals (for the host's)."""
    acc = np.zeros(4, np.int64)
    for i in range(n):
        row = destination[i]
        ip = row[:IP_BYTES].view(np.int64)
        starts = row[START_AT:START_AT + 8 * START_WORDS].view(np.int64)
        zero = np.int64(0)
        counts = (JL.record_counts(row[PAYLOAD:].view(np.int32))
                  if ip[K.IP_MODE] == K.MODE_DECODED else (zero, zero, zero, zero))
        for k in range(4):
            starts[2 * k] = acc[k]
            acc[k] += counts[k]
            starts[2 * k + 1] = acc[k]
        ip[K.IP_SRC] = starts[6]
    for k in range(4):
        totals[k] = acc[k]


class DevicePlanner(ffcv_ops.InceptionCropDecoder):
    """The decoder of `augment.where=device`: crop, plan, draws (see the module docstring).
    Output: uint8 rows of `budget` bytes (sample_budget)."""

    def __init__(self, clock, budget, output_size=224, area=(0.05, 1.0), aspect=(0.75, 1.33),
                 attempts=100, flip=True, randaug=(2, 10), fixed=False):
        super().__init__(clock, output_size, area, aspect, attempts)
        if budget < PAYLOAD + 3 * self.output_size[0] * self.output_size[1]:
            raise ValueError(f"DevicePlanner: budget {budget} bytes cannot hold a "
                             f"{self.output_size[0]} px image")
        self.budget = int(budget)
        self.flip_p = 0.5 if flip else 0.0
        self.layers, self.magnitude = (0, 0.0) if randaug is None else (
            int(randaug[0]), float(randaug[1]))
        if self.layers > L.MAX_LAYERS:
            raise ValueError(f"augment.where=device: at most {L.MAX_LAYERS} RandAugment "
                             f"layers, got {self.layers}")
        self.fixed = bool(fixed)
        self.totals = np.zeros(4, np.int64)   # the last batch's, read by DeviceDecodeAugment

    def declare_state_and_memory(self, previous_state):
        state, (_, temp) = super().declare_state_and_memory(previous_state)
        shape = (self.budget,)
        return replace(state, shape=shape), (AllocationQuery(shape, np.dtype(np.uint8)), temp)

    def generate_code(self):
        from numba import carray
        mem_read = self.memory_read
        my_range = ffcv_ops.Compiler.get_iterator()
        decode_window = self.window_decoder()
        resize = self.resizer()
        plan_c = R.plan_function()
        jpg = ffcv_ops.IMAGE_MODES['jpg']
        addr, totals_addr = self.clock.address, int(self.totals.ctypes.data)
        area_lo, area_hi = self.area
        aspect_lo, aspect_hi = self.aspect
        attempts, res, budget = self.attempts, self.output_size[0], self.budget
        flip_p, layers, magnitude, fixed = self.flip_p, self.layers, self.magnitude, self.fixed
        voidptr = ffcv_ops._voidptr

        def plan(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            clock = ffcv_ops._clock_view(addr)
            seed = clock[0]
            epoch = clock[1]
            n = len(batch_indices)
            for dst_ix in my_range(n):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field['data_ptr'], storage_state)
                height = np.uint32(field['height'])
                width = np.uint32(field['width'])
                y, x, h, w = ffcv_ops.sample_crop(seed, epoch, source_ix, height, width,
                                                  area_lo, area_hi, aspect_lo, aspect_hi,
                                                  attempts)
                row = destination[dst_ix]
                ip = row[:IP_BYTES].view(np.int64)
                fp = row[FP_AT:START_AT].view(np.float32)
                L.draw_into(ip, fp, seed, epoch, source_ix, res, flip_p, layers, magnitude,
                            fixed)
                ip[K.IP_H] = h
                ip[K.IP_W] = w
                used = -1
                if field['mode'] == jpg:
                    used = plan_c(image_data.ctypes.data, image_data.size, y, x, h, w,
                                  row[PAYLOAD:].ctypes.data, budget - PAYLOAD)
                if used > 0:
                    ip[K.IP_MODE] = K.MODE_DECODED
                else:
                    ip[K.IP_MODE] = K.MODE_RESIZED
                    pixels, y0, x0 = decode_window(image_data, field['mode'], height, width,
                                                   temp_storage[dst_ix], y, x, h, w)
                    resize(pixels, y0, x0, h, w,
                           row[PAYLOAD:PAYLOAD + 3 * res * res].reshape(res, res, 3))
            _layout(destination, n, carray(voidptr(totals_addr), (4,), np.int64))
            return destination[:n]

        plan.is_parallel = True
        return plan


class DeviceDecodeAugment(Operation):
    """After ToTensor and ToDevice: the planned rows -> float32 [N, 3, res, res], decoded,
    resized, flipped, augmented, normalised and mixed (see the module docstring)."""

    def __init__(self, clock, planner, alpha=0.2):
        super().__init__()
        self.clock = clock
        self.planner = planner
        self.mix = ffcv_ops.DeviceNormalizeMixup(clock, alpha)

    def generate_code(self):
        planner, mix = self.planner, self.mix.generate_code()
        res, layers = planner.output_size[0], planner.layers

        def decode_augment(rows, buffers):
            n = rows.shape[0]
            totals = [int(v) for v in planner.totals]
            images = decode_and_augment(rows[:n], totals, res, layers)
            return mix(images.permute(0, 3, 1, 2), buffers)

        return decode_augment

    def declare_state_and_memory(self, previous_state):
        import torch
        if previous_state.jit_mode or previous_state.shape != (self.planner.budget,):
            raise TypeError("DeviceDecodeAugment needs DevicePlanner's rows on the device: "
                            "put it after DevicePlanner, ToTensor() and ToDevice(...)")
        res = self.planner.output_size[0]
        query = AllocationQuery((3, res, res), torch.float32, previous_state.device)
        return replace(previous_state, shape=(3, res, res), dtype=torch.float32), (query, query)


def decode_and_augment(rows, totals, res, layers, jpeg_done=None):
    """uint8 [n, res, res, 3] (a torch tensor on the rows' device) from DevicePlanner's rows
    (uint8 [n, budget] torch tensor) and the batch's totals. Raises if the device finds a
    sample whose bytes disagree with its index (a damaged or altered file: convert it again,
    or train with augment.where=cpu). jpeg_done, if given, is called once the JPEG stage has
    finished (reading its flags waits for the device), so that a benchmark can time the two
    stages apart without a synchronisation of its own."""
    import torch
    n = rows.shape[0]
    dev = rows.device
    ip = rows[:, :IP_BYTES].contiguous().view(torch.int64)
    fp = rows[:, FP_AT:START_AT].contiguous().view(torch.float32)
    st = rows[:, START_AT:START_AT + 8 * START_WORDS].contiguous().view(torch.int64)
    recs = rows[:, PAYLOAD:]
    starts = [torch.cat([st[:, 2 * k], st[-1:, 2 * k + 1]]) for k in range(4)]
    resized = rows[:, PAYLOAD:PAYLOAD + 3 * res * res].reshape(n, res, res, 3)
    i32 = dict(dtype=torch.int32, device=dev)
    tables = torch.empty((n, 6, JL.K.TABLE), **i32)
    coef = torch.empty((max(totals[1], 1), 64), dtype=torch.int16, device=dev)
    work = torch.empty((max(totals[1], 1), 128), dtype=torch.int64, device=dev)
    planes = torch.empty(max(totals[2], 1), dtype=torch.uint8, device=dev)
    decoded = torch.empty((max(totals[3], 1), 3), dtype=torch.uint8, device=dev)
    flags = torch.zeros(n, **i32)
    out = torch.empty((n, res, res, 3), dtype=torch.uint8, device=dev)
    scratch = torch.empty_like(out)
    lut = torch.empty((n, 3, 256), **i32)
    deg = torch.empty(n, **i32)
    if dev.type == "cuda":
        from numba import cuda
        stream = cuda.external_stream(torch.cuda.current_stream(dev).cuda_stream)
        wrap = lambda t: cuda.as_cuda_array(t, sync=False)   # noqa: E731
    else:
        stream = None
        wrap = lambda t: t.numpy()                           # noqa: E731
    if not recs.is_contiguous():
        recs = recs.contiguous()
    rec8 = wrap(recs)
    rec32 = wrap(recs.view(torch.int32))
    JL.run_stages(rec32, rec8, *(wrap(s) for s in starts), n, totals, wrap(tables),
                  wrap(coef), wrap(work), wrap(planes), wrap(decoded), wrap(flags), stream)
    failed = int(flags.sum())
    if jpeg_done is not None:
        jpeg_done()
    if failed:
        bad = torch.nonzero(flags).flatten().tolist()
        raise ValueError(f"augment.where=device: {len(bad)} sample(s) of this batch (batch "
                         f"positions {bad[:10]}) have entropy-coded bytes that disagree with "
                         f"their window index: a damaged or altered file. Convert the set "
                         f"again with write_ffcv.py, or train with augment.where=cpu.")
    L.run_stages(wrap(ip), wrap(fp), wrap(decoded), wrap(resized), res, layers, wrap(out),
                 wrap(scratch), wrap(lut), wrap(deg), stream)
    return out if layers % 2 == 0 else scratch


def device_train_pipelines(clock, device, beton, *, res=224, randaug=(2, 10), fixed=False,
                           flip=True, mixup_alpha=0.2, num_classes=1000,
                           crop_area=(0.05, 1.0)):
    """ffcv_ops.train_pipelines for augment.where=device: the image pipeline ends on the
    device (float32 [N, 3, res, res], normalised and mixed), labels as train_pipelines'."""
    import torch
    from ffcv.transforms import ToDevice, ToTensor
    jpeg_window.ensure_built()
    planner = DevicePlanner(clock, sample_budget(beton, res), res, area=crop_area, flip=flip,
                            randaug=randaug, fixed=fixed)
    image = [planner, ToTensor(), ToDevice(torch.device(device), non_blocking=True),
             DeviceDecodeAugment(clock, planner, mixup_alpha)]
    label = [ffcv_ops.IntDecoder(), ffcv_ops.LabelMixup(clock, num_classes, mixup_alpha)]
    return {'image': image, 'label': label}
