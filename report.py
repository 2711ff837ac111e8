"""What a run reports about its speed, measured one way everywhere: the TPUv3-8 reference
figures and the one definition of MFU that `train_vit.py` and `benchmark.py` share.

MFU = (training FLOPs per image, vit.flops_per_image) x (images/s per device) / (peak).
The peak is a bf16 (or fp32) matrix product measured on the device itself in the same run,
not a datasheet figure: "H100" names SXM, PCIe and NVL parts whose datasheet peaks differ by
a third, and clocks and power caps move the real one. `logging.peak_tflops` (train_vit.py)
replaces the measurement with a number the user gives; the printout says which was used.
"""
import time

import torch

# TPUv3-8 reference (paper, section 3): 90 epochs of 1,268,355 images in 6 h 30; 300 < 24 h.
IMAGENET_TRAIN = 1_268_355       # the 99% of ImageNet-1k train the recipe trains on
TPU_90EP_S, TPU_300EP_S = 6.5 * 3600, 24 * 3600


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_tflops(device, dtype=torch.bfloat16, n=None, repeats=10):
    """Throughput of one large square matmul on `device`, in TFLOP/s (random inputs, after
    a warm-up): the denominator of MFU. n defaults to 8192 on GPU (about 0.2 s on an
    H100), 512 on CPU (where MFU of a tiny model is only a smoke figure)."""
    n = n or (8192 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def peak_source(device, dtype, given_tflops=0.0):
    """(peak TFLOP/s, where it came from) for MFU: the user's figure, or measured here."""
    if given_tflops > 0:
        return given_tflops, "given by logging.peak_tflops"
    name = str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
    n = 8192 if device.type == "cuda" else 512
    return (measure_peak_tflops(device, dtype, n),
            f"{name} {n}x{n} matmul measured on this device at start-up")


def mfu(img_s_per_device, flops_per_image, peak_tflops):
    """Model FLOPs utilisation: achieved training FLOP/s per device over the peak."""
    return img_s_per_device * flops_per_image / (peak_tflops * 1e12)


def compiled_frames():
    """Frames torch.compile has compiled in this process so far: a recompile adds one."""
    from torch._dynamo.utils import counters
    return counters["frames"]["total"]
