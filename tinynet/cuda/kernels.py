"""CUDA twins of tinynet/ops/cpu_kernels.py, same names and arguments.

The kernels are C++ templates in ``kernels/*.cu`` (one file per op family).
Each file is read once, compiled with ``cupy.RawModule(code=...)`` for the
current device, and cached per (file, device); ``get_function`` picks the
float or double instantiation.  GEMMs are not here: they go through
``cupy.matmul`` (cuBLAS).

Every launch uses a grid-stride loop, so any grid size covers any array.
"""

import os

import numpy as np

from ..backend import cupy_or_none

_modules = {}
_THREADS = 256


def kernel_path(filename):
    """Where ``kernels/<filename>`` is: inside the installed package
    (``tinynet/kernels``, copied there by setup.py) or in the checkout."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (os.path.join(here, "kernels"), os.path.join(os.path.dirname(here), "kernels")):
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"tinynet.cuda: kernel source {filename} not found next to the package")


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
    ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]
    return module.get_function(f"{name}<{ctype}>")


_KERNELS = {
    "im2col.cu": ("im2col_kernel", "col2im_kernel"),
    "maxpool.cu": ("maxpool_forward_kernel", "maxpool_backward_kernel"),
    "lrn.cu": ("lrn_forward_kernel", "lrn_backward_kernel"),
}


def _launch(fn, total, args):
    blocks = int(min(max((total + _THREADS - 1) // _THREADS, 1), 65535 * 8))
    fn((blocks,), (_THREADS,), args)


def _i(v):
    return np.int64(v)


def im2col(x, kh, kw, stride, padding, out=None):
    cp = cupy_or_none()
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if out is None:
        out = cp.empty((C * kh * kw, N * OH * OW), dtype=x.dtype)
    fn = _function("im2col.cu", "im2col_kernel", x.dtype)
    _launch(fn, out.size, (x, out, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                           np.int32(sh), np.int32(sw), np.int32(ph), np.int32(pw), _i(OH), _i(OW)))
    return out


def col2im(cols, x_shape, kh, kw, stride, padding, out=None):
    cp = cupy_or_none()
    cols = cp.ascontiguousarray(cols)
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    target = cp.empty((N, C, H, W), dtype=cols.dtype) if out is None or not out.flags.c_contiguous else out
    fn = _function("im2col.cu", "col2im_kernel", cols.dtype)
    _launch(fn, target.size, (cols, target, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                              np.int32(sh), np.int32(sw), np.int32(ph), np.int32(pw), _i(OH), _i(OW)))
    if out is not None and target is not out:
        out[...] = target
        return out
    return target


def maxpool_forward(x, kh, kw, sh, sw, oh, ow):
    cp = cupy_or_none()
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    y = cp.empty((N, C, oh, ow), dtype=x.dtype)
    fn = _function("maxpool.cu", "maxpool_forward_kernel", x.dtype)
    _launch(fn, y.size, (x, y, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                         np.int32(sh), np.int32(sw), _i(oh), _i(ow)))
    return y


def maxpool_backward(x, y, gy, kh, kw, sh, sw):
    cp = cupy_or_none()
    x, y, gy = (cp.ascontiguousarray(a) for a in (x, y, gy))
    N, C, H, W = x.shape
    gx = cp.empty_like(x)
    fn = _function("maxpool.cu", "maxpool_backward_kernel", x.dtype)
    _launch(fn, gx.size, (x, y, gy, gx, _i(N), _i(C), _i(H), _i(W), np.int32(kh), np.int32(kw),
                          np.int32(sh), np.int32(sw), _i(gy.shape[2]), _i(gy.shape[3])))
    return gx


def lrn_forward(x, size, alpha, beta, k):
    cp = cupy_or_none()
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    y, scale = cp.empty_like(x), cp.empty_like(x)
    t = x.dtype.type
    fn = _function("lrn.cu", "lrn_forward_kernel", x.dtype)
    _launch(fn, x.size, (x, y, scale, _i(N), _i(C), _i(H * W), np.int32(size // 2),
                         np.int32((size - 1) // 2), t(alpha), t(beta), t(k)))
    return y, scale


def lrn_backward(x, y, scale, gy, size, alpha, beta):
    cp = cupy_or_none()
    x, y, scale, gy = (cp.ascontiguousarray(a) for a in (x, y, scale, gy))
    N, C, H, W = x.shape
    gx = cp.empty_like(x)
    t = x.dtype.type
    fn = _function("lrn.cu", "lrn_backward_kernel", x.dtype)
    _launch(fn, x.size, (x, y, scale, gy, gx, _i(N), _i(C), _i(H * W), np.int32(size // 2),
                         np.int32((size - 1) // 2), t(alpha), t(beta)))
    return gx
