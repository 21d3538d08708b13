"""CUDA twins of tinynet/ops/cpu_kernels.py, same names and arguments.

The kernels are C++ templates in ``kernels/*.cu`` (one file per op family).
Each file is read once, compiled with ``cupy.RawModule(code=...)`` for the
current device, and cached per (file, device); ``get_function`` picks the
float or double instantiation.  GEMMs are not here: they go through
``cupy.matmul`` (cuBLAS).

The host side of every kernel (the shapes, the output buffers and the exact
argument list of the launch) is written once, in ``Kernels``, for both ways
of running the ``.cu`` files: on a GPU through CuPy (this module's
functions), and on the CPU through the emulated grid of
``tinynet.cuda.emulate``, which the tests run on machines without a GPU.

Every launch uses a grid-stride loop, so any grid size covers any array.
"""

import numpy as np

from ..backend import cupy_or_none
from ..cbuild import kernel_path
# The convolution's output pass is elementwise: the same CuPy calls as NumPy's (one kernel each)
from ..ops.cpu_kernels import conv_grad_rows, conv_output  # noqa: F401

_modules = {}
THREADS = 256  # threads per block of every launch


def ctype_of(dtype):
    """The C++ type a kernel template is instantiated with for ``dtype``."""
    names = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
    if np.dtype(dtype) not in names:
        raise TypeError(f"tinynet.cuda: the kernels take float32 or float64, got {np.dtype(dtype)}")
    return names[np.dtype(dtype)]


def blocks_for(total):
    """Blocks of THREADS threads for ``total`` elements (a grid-stride loop covers the rest)."""
    return int(min(max((total + THREADS - 1) // THREADS, 1), 65535 * 8))


def _function(filename, name, dtype):
    cp = cupy_or_none()
    device = cp.cuda.Device().id
    key = (filename, device)
    module = _modules.get(key)
    if module is None:
        with open(kernel_path(filename)) as f:
            code = f.read()
        names = [f"{base}<{t}>" for base in _KERNELS[filename] for t in ("float", "double")]
        module = cp.RawModule(code=code, options=("-std=c++14",), name_expressions=names)
        _modules[key] = module
    return module.get_function(f"{name}<{ctype_of(dtype)}>")


_KERNELS = {
    "im2col.cu": ("im2col_kernel", "col2im_kernel"),
    "maxpool.cu": ("maxpool_forward_kernel", "maxpool_backward_kernel"),
    "lrn.cu": ("lrn_forward_kernel", "lrn_backward_kernel"),
}


def _i(v):
    return np.int64(v)


class Kernels:
    """The host side of kernels/*.cu: for each op, the output buffers and the launch's
    arguments, exactly as the kernel declares them (``long long`` -> np.int64, ``int`` ->
    np.int32, ``T`` -> the array's dtype).

    xp: a function returning the array module (cupy, or numpy for the emulated grid).
    run(filename, name, dtype, total, args): launch kernel ``name<T>`` of ``kernels/filename``
        with ``total`` threads' worth of work.
    """

    def __init__(self, xp, run):
        self.xp, self.run = xp, run

    def _target(self, out, shape, dtype, name):
        """Where a kernel writes an output of `shape` and `dtype`: the caller's `out` when the
        kernel can write it as it is (C-contiguous, that dtype), else a new array that is then
        copied into `out`.  A kernel takes a raw pointer: it would write a strided view through
        its base, and read or write another dtype's bytes as its own, without an error."""
        if out is not None and tuple(out.shape) != tuple(shape):
            raise ValueError(f"{name}: out must have shape {tuple(shape)}, got {tuple(out.shape)}")
        if out is not None and out.flags.c_contiguous and out.dtype == dtype:
            return out
        return self.xp().empty(shape, dtype=dtype)

    @staticmethod
    def _into(out, target):
        """The result: `target`, copied into the caller's `out` if it is not that."""
        if out is not None and target is not out:
            out[...] = target
            return out
        return target

    def im2col(self, x, kh, kw, stride, padding, out=None):
        xp = self.xp()
        x = xp.ascontiguousarray(x)
        N, C, H, W = x.shape
        (sh, sw), (ph, pw) = stride, padding
        OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        target = self._target(out, (C * kh * kw, N * OH * OW), x.dtype, "im2col")
        self.run("im2col.cu", "im2col_kernel", x.dtype, target.size,
                 (x, target, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                  np.int32(sh), np.int32(sw), np.int32(ph), np.int32(pw), _i(OH), _i(OW)))
        return self._into(out, target)

    def col2im(self, cols, x_shape, kh, kw, stride, padding, out=None):
        xp = self.xp()
        cols = xp.ascontiguousarray(cols)
        N, C, H, W = x_shape
        (sh, sw), (ph, pw) = stride, padding
        OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        target = self._target(out, (N, C, H, W), cols.dtype, "col2im")
        self.run("im2col.cu", "col2im_kernel", cols.dtype, target.size,
                 (cols, target, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                  np.int32(sh), np.int32(sw), np.int32(ph), np.int32(pw), _i(OH), _i(OW)))
        return self._into(out, target)

    def maxpool_forward(self, x, kh, kw, sh, sw, oh, ow, with_argmax=True):
        """(y, argmax); the kernel always records argmax, and without ``with_argmax`` it is
        dropped here (None), as the CPU's loops leave it out."""
        xp = self.xp()
        x = xp.ascontiguousarray(x)
        N, C, H, W = x.shape
        y = xp.empty((N, C, oh, ow), dtype=x.dtype)
        argmax = xp.empty((N, C, oh, ow), dtype=np.int32)
        self.run("maxpool.cu", "maxpool_forward_kernel", x.dtype, y.size,
                 (x, y, argmax, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                  np.int32(sh), np.int32(sw), _i(oh), _i(ow)))
        return y, argmax if with_argmax else None

    def maxpool_backward(self, argmax, gy, x_shape, kh, kw, sh, sw):
        xp = self.xp()
        argmax, gy = xp.ascontiguousarray(argmax, dtype=np.int32), xp.ascontiguousarray(gy)
        N, C, H, W = x_shape
        gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
        self.run("maxpool.cu", "maxpool_backward_kernel", gy.dtype, gx.size,
                 (argmax, gy, gx, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                  np.int32(sh), np.int32(sw), _i(gy.shape[2]), _i(gy.shape[3])))
        return gx

    def lrn_forward(self, x, size, alpha, beta, k):
        xp = self.xp()
        x = xp.ascontiguousarray(x)
        N, C, H, W = x.shape
        y = xp.empty_like(x)
        t = x.dtype.type
        self.run("lrn.cu", "lrn_forward_kernel", x.dtype, x.size,
                 (x, y, _i(N), _i(C), _i(H * W), np.int32(size // 2),
                  np.int32((size - 1) // 2), t(alpha), t(beta), t(k)))
        return y

    def lrn_backward(self, x, gy, size, alpha, beta, k):
        xp = self.xp()
        x, gy = xp.ascontiguousarray(x), xp.ascontiguousarray(gy, dtype=x.dtype)  # one kernel, one dtype
        N, C, H, W = x.shape
        gx = xp.empty_like(x)
        t = x.dtype.type
        self.run("lrn.cu", "lrn_backward_kernel", x.dtype, x.size,
                 (x, gy, gx, _i(N), _i(C), _i(H * W), np.int32(size // 2),
                  np.int32((size - 1) // 2), t(alpha), t(beta), t(k)))
        return gx


def _run_on_gpu(filename, name, dtype, total, args):
    """One launch on the current GPU, as CuPy's RawKernel takes it."""
    _function(filename, name, dtype)((blocks_for(total),), (THREADS,), args)


# This module's functions: the kernels on the current GPU (CuPy arrays in, CuPy arrays out).
_gpu = Kernels(cupy_or_none, _run_on_gpu)
im2col, col2im = _gpu.im2col, _gpu.col2im
maxpool_forward, maxpool_backward = _gpu.maxpool_forward, _gpu.maxpool_backward
lrn_forward, lrn_backward = _gpu.lrn_forward, _gpu.lrn_backward
