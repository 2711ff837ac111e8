"""One source, two targets: the device kernels' per-thread bodies run as numba code on the
CPU (what CI tests) and as CUDA device functions on a GPU (what training runs).

A kernels module marks each function with `@body` (numba njit, cached, no fastmath) and
writes each stage as `stage_body(t, ...)`, what thread t does. `cpu_stage` wraps a body in
a `prange` over the threads; `cuda_stages` recompiles every body of the module from its
Python source for CUDA, with one kernel per stage that runs thread cuda.grid(1) < n.

float32 arithmetic goes through mul32, add32, sub32, div32 and fma32: plain float32
operations on the CPU (numba does not contract them without fastmath), and the
correctly rounded libdevice calls on CUDA, which the compiler never fuses into FMAs (it
would fuse a plain a * b + c, and TF's x86 kernels do not). fma32 is a fused multiply-add
on both (the reference's depthwise convolution uses one). Under NUMBA_ENABLE_CUDASIM=1 the
simulator runs the Python source as it is, numpy float32 scalars included.
"""
import types

import numpy as np
from llvmlite import ir
from numba import config, njit, types as nbtypes
from numba.extending import intrinsic

_BODIES = {}   # module name -> its bodies, in definition order


def body(fn):
    """njit for the CPU, registered for its module's CUDA build. Not cached on disk: numba's
    cache checks only the file of the function it caches, and bodies call into other files
    (twin's float ops, the record layout), whose changes it would miss."""
    _BODIES.setdefault(fn.__module__, []).append(fn.__name__)
    return njit(nogil=True, fastmath=False, error_model="numpy")(fn)


@intrinsic
def fma_f32(typingctx, a, b, c):
    """llvm.fma.f32: a * b + c rounded once (vectorised by LLVM; randaug_ops' Sharpness
    uses it too)."""
    if not (a == nbtypes.float32 and b == nbtypes.float32 and c == nbtypes.float32):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32],
                                              ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)
    return nbtypes.float32(nbtypes.float32, nbtypes.float32, nbtypes.float32), codegen


def _fma_python(a, b, c):
    """a * b + c rounded once, for float32 inputs (exact in float64, then one rounding)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(nogil=True, fastmath=False)
def mul32(a, b):
    return np.float32(a) * np.float32(b)


@njit(nogil=True, fastmath=False)
def add32(a, b):
    return np.float32(a) + np.float32(b)


@njit(nogil=True, fastmath=False)
def sub32(a, b):
    return np.float32(a) - np.float32(b)


@njit(nogil=True, fastmath=False)
def div32(a, b):
    return np.float32(a) / np.float32(b)


@njit(nogil=True, fastmath=False)
def fma32(a, b, c):
    return fma_f32(np.float32(a), np.float32(b), np.float32(c))


FLOAT_OPS = ("mul32", "add32", "sub32", "div32", "fma32")


def _cuda_float_ops(cuda):
    if config.ENABLE_CUDASIM:   # the simulator: the Python source, numpy float32 scalars
        ops = {name: globals()[name].py_func for name in FLOAT_OPS[:4]}
        ops["fma32"] = _fma_python
        return ops
    from numba.cuda import libdevice
    scope = {"libdevice": libdevice}   # a plain global for each function, not a closure
    exec("def mul32(a, b):\n    return libdevice.fmul_rn(a, b)\n"
         "def add32(a, b):\n    return libdevice.fadd_rn(a, b)\n"
         "def sub32(a, b):\n    return libdevice.fsub_rn(a, b)\n"
         "def div32(a, b):\n    return libdevice.fdiv_rn(a, b)\n"
         "def fma32(a, b, c):\n    return libdevice.fmaf(a, b, c)\n", scope)
    return {name: cuda.jit(device=True)(scope[name]) for name in FLOAT_OPS}


_CUDA = {}


def cuda_stages(module, stages):
    """{stage: CUDA kernel} for `module`'s bodies; stages maps a stage name to (body name,
    "comma, separated, argument, names"), the kernel being kernel[grid, block](n, *args)."""
    if module.__name__ in _CUDA:
        return _CUDA[module.__name__]
    from numba import cuda
    scope = dict(vars(module))
    scope["cuda"] = cuda
    scope.update(_cuda_float_ops(cuda))
    for name in _BODIES[module.__name__]:
        fn = getattr(module, name).py_func
        scope[name] = cuda.jit(device=True)(
            types.FunctionType(fn.__code__, scope, name, fn.__defaults__))
    kernels = {}
    for stage, (body_name, args) in stages.items():
        exec(f"def kernel(n, {args}):\n    t = cuda.grid(1)\n    if t < n:\n"
             f"        {body_name}(t, {args})\n", scope)
        kernels[stage] = cuda.jit(scope.pop("kernel"))
    _CUDA[module.__name__] = kernels
    return kernels


def launch_cuda(kernels, stage, n, args, threads=256, stream=0):
    """Run `stage` over n threads (nothing when n is 0), on `stream` (a numba stream; 0:
    the default one)."""
    if n:
        kernels[stage][(n + threads - 1) // threads, threads, stream](n, *args)

