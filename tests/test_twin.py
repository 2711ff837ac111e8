"""vit_speedrun/twin.py's CUDA build of the device kernels, compiled for real: every stage of
the JPEG decoder and of the augmentations through numba's CUDA target and NVIDIA's NVVM to
PTX for an H100/H200 (sm_90), on this CPU machine (NVVM ships as the nvidia-nvvm wheel of
requirements-dev.txt; no GPU or driver is needed to compile). The simulator tests run the
same source as Python; this one checks that CUDA types and compiles it, and that its
float32 arithmetic has no fused multiply-add but Sharpness's own."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

COMPILE = """
import types
import numba.cuda.dispatcher as D
from numba import cuda, types as T
D.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))  # no GPU
from vit_speedrun import twin
from vit_speedrun.jpeg.device import kernels as JK, launch as JL
from vit_speedrun.pp.device import kernels as PK, launch as PL
A, i64, i32, u8 = T.Array, T.int64, T.int32, T.uint8
signatures = {
    "tables": (i64, A(i32, 2, "C"), A(i32, 3, "C")),
    "segments": (i64, A(i32, 2, "C"), A(u8, 2, "C"), A(i64, 1, "C"), A(i64, 1, "C"), i64,
                 A(i32, 3, "C"), A(T.int16, 2, "C"), A(i32, 1, "C")),
    "idct": (i64, A(i32, 2, "C"), A(i64, 1, "C"), A(i64, 1, "C"), i64, A(T.int16, 2, "C"),
             A(i64, 2, "C"), A(u8, 1, "C")),
    "pixels": (i64, A(i32, 2, "C"), A(i64, 1, "C"), A(i64, 1, "C"), i64, A(u8, 1, "C"),
               A(u8, 2, "C")),
    "resize": (i64, A(i64, 2, "C"), A(u8, 2, "C"), i64, A(u8, 4, "C")),
    "place": (i64, A(i64, 2, "C"), A(u8, 4, "A"), i64, A(u8, 4, "C")),
    "stats": (i64, A(i64, 2, "C"), i64, A(u8, 4, "C"), i64, A(i32, 3, "C"), A(i32, 1, "C")),
    "op": (i64, A(i64, 2, "C"), A(T.float32, 2, "C"), i64, A(u8, 4, "C"), i64,
           A(i32, 3, "C"), A(i32, 1, "C"), A(u8, 4, "C")),
}
for module, stages in ((JK, JL.STAGES), (PK, PL.STAGES)):
    kernels = twin.cuda_stages(module, stages)
    for name in stages:
        ptx, _ = cuda.compile_ptx(kernels[name].py_func, signatures[name], cc=(9, 0))
        print(name, len(ptx), ptx.count("fma.rn.f32"), ptx.count("mul.rn.f32"))
"""


def _cuda_home(tmp_path):
    """A CUDA_HOME that numba's NVVM lookup understands, made of the nvidia-nvvm wheel."""
    try:
        import nvidia
    except ImportError:
        pytest.fail("the nvidia-nvvm wheel is not installed: make install (requirements-dev)")
    base = Path(list(nvidia.__path__)[0])
    lib = sorted(base.glob("cu*/lib/libnvvm.so*"))
    libdevice = sorted(base.glob("cu*/nvvm/libdevice"))
    assert lib and libdevice, f"no libnvvm/libdevice under {base}"
    home = tmp_path / "cuda"
    (home / "nvvm" / "lib64").mkdir(parents=True)
    (home / "nvvm" / "lib64" / "libnvvm.so").symlink_to(lib[0])
    (home / "nvvm" / "libdevice").symlink_to(libdevice[0])
    return home


def test_every_device_kernel_compiles_to_ptx_without_stray_fmas(tmp_path):
    env = dict(os.environ, CUDA_HOME=str(_cuda_home(tmp_path)), PYTHONPATH=str(ROOT),
               NUMBA_ENABLE_CUDASIM="0")
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]]
            for line in done.stdout.splitlines()}
    assert set(rows) == {"tables", "segments", "idct", "pixels", "resize", "place", "stats",
                         "op"}
    assert all(size > 10_000 for size, _, _ in rows.values())
    # float32: correctly rounded multiplies (resize, the blends), one FMA kind: Sharpness's
    assert rows["resize"][1] == 0 and rows["resize"][2] > 0
    assert rows["stats"][1] == 0 and rows["op"][1] > 0 and rows["op"][2] > 0
