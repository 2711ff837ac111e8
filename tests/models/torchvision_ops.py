"""Lets PyPI's torchvision import beside the CPU torch of `make install`, for timm's tests.

PyPI's x86-64 torchvision is built against CUDA torch: beside a CPU torch its C library
(the detection ops: nms, roi_align, ...) does not load, which torchvision tolerates for
every op but two, whose fake kernels it registers unconditionally ('operator
torchvision::nms does not exist'). Defining those two schemas, without kernels, lets the
import finish; timm's VisionTransformer never calls them. Where the C library loads (a
torch with its own torchvision), nothing is done. requirements-timm.txt says why timm and
torchvision live in .venv/timm, outside the venv's site-packages.
"""
import glob
import importlib.util
from pathlib import Path

_LIBS = []   # a torch.library.Library unregisters its schemas when garbage-collected


def allow_torchvision_import():
    import torch
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return
    for so in glob.glob(str(Path(spec.origin).parent / "_C*.so")):
        try:
            torch.ops.load_library(so)
            return
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)
