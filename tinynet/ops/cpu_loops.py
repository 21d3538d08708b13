"""The CPU's compiled loops: ``kernels/cpu_loops.cpp`` through ctypes.

Same functions, arguments and results (to the bit) as ``cpu_kernels``, the
NumPy versions: im2col, col2im, maxpool_forward, maxpool_backward,
lrn_forward, lrn_backward, conv_output, conv_grad_rows, sgd_update, matvec, outer_sum,
outer_sum_sgd, and the
Winograd transforms (winograd_input, winograd_output, winograd_grad_output,
winograd_input_grad, winograd_weight, winograd_weight_grad; where a sum of
NaN operands gives a NaN, its sign may differ from NumPy's; an LRN with a beta
other than the paper's 0.75 takes its power from std::pow here and np.power
there, which may round one last bit apart).  The
NumPy versions are the ones to read first; this module exists for speed.  A
NumPy call is one pass over memory, so the paper's LRN takes about ten passes
over the activations and a 3x3 max-pool nine; a compiled loop visits each
output once, while its inputs are in the cache.  (Each loop's time against
NumPy's, at AlexNet's shapes and batch 32: ``benchmarks/cpu_loops.py``.)

Which loops the CPU uses is a setting (``tinynet.set_cpu_loops``, or the
environment variable ``TINYNET_CPU_LOOPS``):

* ``"compiled"`` (the default): these, built with the C++ compiler on first
  use.  Without a compiler, or if the build fails, tinynet warns once, saying
  why, and runs the NumPy loops;
* ``"numpy"``: always the NumPy loops.

``TINYNET_CPU_LOOPS_SANITIZE=address`` builds the library with AddressSanitizer,
for a process started with libasan preloaded (``tests/test_cpu_loops.py`` runs
every loop so, on buffers of exactly their size).

Every function splits the batch among the threads of ``cpu_kernels``'s pool
(``cpu_kernels.parallel_chunks``); ctypes releases the GIL while a loop runs.  Arrays of
other dtypes than float32 and float64 run the NumPy loops (the compiled ones
exist for those two).
"""

import ctypes
import os
import sys
import threading
import warnings

import numpy as np

from .. import cbuild
from . import cpu_kernels
from .cpu_kernels import _image_bytes

FLAGS = ["-std=c++17", "-O3", "-shared", "-fPIC", "-Wall", "-Wextra",
         "-ffp-contract=off",  # no fused multiply-adds: every operation rounds as NumPy's does
         "-fno-math-errno",  # sqrt need not set errno: lets the compiler use SIMD square roots
         # no floating-point traps (tinynet never enables them): a comparison may run on every
         # element of a row, so that a choice such as the ReLU's mask is SIMD code; the values
         # are unchanged (that would take -ffast-math's other flags)
         "-fno-trapping-math"]
CHOICES = ("compiled", "numpy")

_state = {"choice": None, "library": None, "failure": None, "warned": False}
_lock = threading.Lock()

_i64, _dbl, _ptr = ctypes.c_longlong, ctypes.c_double, ctypes.c_void_p
_SIGNATURES = {
    "im2col": [_ptr, _ptr] + [_i64] * 15,
    "col2im": [_ptr, _ptr] + [_i64] * 14,
    "maxpool_forward": [_ptr] * 3 + [_i64] * 11,
    "maxpool_backward": [_ptr] * 3 + [_i64] * 5,
    "lrn_forward": [_ptr] * 2 + [_i64] * 4 + [_dbl] * 3 + [_i64] * 2,
    "lrn_backward": [_ptr] * 3 + [_i64] * 4 + [_dbl] * 3 + [_i64] * 2,
    "sgd_update": [_ptr] * 3 + [_dbl] * 3 + [_i64] * 2,
    "conv_output": [_ptr] * 3 + [_i64] * 6,
    "conv_grad_rows": [_ptr] * 3 + [_i64] * 5,
    "winograd_input": [_ptr] * 2 + [_i64] * 13,  # the Winograd loops end with the filter size K
    "winograd_output": [_ptr] * 3 + [_i64] * 12,
    "winograd_grad_output": [_ptr] * 3 + [_i64] * 11,
    "winograd_input_grad": [_ptr] * 2 + [_i64] * 13,
    "winograd_weight": [_ptr] * 2 + [_i64] * 4,
    "winograd_weight_grad": [_ptr] * 2 + [_i64] * 4,
    "matvec": [_ptr] * 3 + [_i64] * 5,
    "outer_sum": [_ptr] * 3 + [_i64] * 5,
    "outer_sum_sgd": [_ptr] * 4 + [_i64] * 4 + [_dbl] * 3,
}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def set_cpu_loops(choice):
    """Which loops the CPU runs: "compiled" (kernels/cpu_loops.cpp) or "numpy"
    (tinynet/ops/cpu_kernels.py).  Returns the previous choice.  Both give the
    same numbers; "compiled" is faster.  Asking for "compiled" builds the
    library now and raises if it cannot be built."""
    if choice not in CHOICES:
        raise ValueError(f"set_cpu_loops: expected one of {CHOICES}, got {choice!r}")
    old = get_cpu_loops()
    if choice == "compiled":
        _load(strict=True)
    _state["choice"] = choice
    return old


def get_cpu_loops():
    """"compiled" or "numpy": what the CPU runs now (the default is "compiled",
    or $TINYNET_CPU_LOOPS)."""
    if _state["choice"] is None:
        choice = os.environ.get("TINYNET_CPU_LOOPS", "compiled")
        if choice not in CHOICES:
            raise ValueError(f"TINYNET_CPU_LOOPS: expected one of {CHOICES}, got {choice!r}")
        _state["choice"] = choice
    return _state["choice"]


def cpu_module():
    """The module whose loops the CPU runs now: this one, or cpu_kernels
    (when "numpy" is chosen, or the library could not be built)."""
    if get_cpu_loops() == "compiled" and _load(strict=False) is not None:
        return sys.modules[__name__]
    return cpu_kernels


def _flags():
    """FLAGS, and with TINYNET_CPU_LOOPS_SANITIZE=address an AddressSanitizer build (for a
    process started with libasan preloaded; tests/test_cpu_loops.py runs every loop so)."""
    sanitize = os.environ.get("TINYNET_CPU_LOOPS_SANITIZE")
    if not sanitize:
        return FLAGS
    if sanitize != "address":
        raise RuntimeError(f"TINYNET_CPU_LOOPS_SANITIZE: expected 'address', got {sanitize!r}")
    return FLAGS + ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]


def _load(strict):
    """The loaded library, building it on first use.  On failure: raise if
    ``strict``, else warn once and return None."""
    with _lock:
        if _state["library"] is None and _state["failure"] is None:
            flags = _flags()  # a bad TINYNET_CPU_LOOPS_SANITIZE is refused, not a failed build
            try:
                source = cbuild.kernel_path("cpu_loops.cpp")
                path = cbuild.build_library("cpu-loops", "cpu_loops", source, [source], flags)
                lib = ctypes.CDLL(path)
                for name, argtypes in _SIGNATURES.items():
                    for suffix in _SUFFIX.values():
                        fn = getattr(lib, f"{name}_{suffix}")
                        fn.argtypes, fn.restype = argtypes, None
                _state["library"] = lib
            except (RuntimeError, OSError) as error:
                _state["failure"] = str(error)
        if _state["library"] is None:
            if strict:
                raise RuntimeError(f"set_cpu_loops('compiled'): the library cannot be built:\n{_state['failure']}")
            if not _state["warned"]:  # the first op that falls back says so, once
                _state["warned"] = True
                warnings.warn(f"tinynet: the CPU's compiled loops (kernels/cpu_loops.cpp) could not be "
                              f"built, so the CPU runs the NumPy loops, which give the same numbers "
                              f"more slowly. Set TINYNET_CPU_LOOPS=numpy to choose them and silence "
                              f"this. The reason:\n{_state['failure']}", RuntimeWarning, stacklevel=4)
        return _state["library"]


def _function(name, dtype):
    """The library's function for ``name`` and ``dtype`` (building the library if this module's
    functions are called directly, before any op asked for it)."""
    lib = _state["library"] or _load(strict=True)
    return getattr(lib, f"{name}_{_SUFFIX[np.dtype(dtype)]}")


def _compiled(*arrays):
    """True if the compiled loops take these arrays (float32 or float64, one dtype)."""
    dtype = arrays[0].dtype
    return dtype in _SUFFIX and all(a.dtype == dtype for a in arrays)


def _c(a):
    """a, C-contiguous (a copy only if it is not)."""
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------
# The functions of cpu_kernels
# ----------------------------------------------------------------------------


# columns larger than this are stored past the cache (see im2col in kernels/cpu_loops.cpp): the
# caches could not hold them for the GEMM that reads them next.  On a 2-core AMD EPYC (Zen 5),
# interleaved in one process, conv1's forward and backward took 0.96 of the time so at batch 8
# (35 MB of columns) and 32 and 0.92 at batch 128, in each of two runs; at batch 1 (4.4 MB, which
# the GEMM finds in the cache when they are stored as usual) 1.03 and 0.99, so it is left so
IM2COL_STREAM_BYTES = 16 << 20


def im2col(x, kh, kw, stride, padding, out=None):
    """x: (N, C, H, W) -> cols: (C*KH*KW, N*OH*OW); see cpu_kernels.im2col."""
    if not _compiled(x):
        return cpu_kernels.im2col(x, kh, kw, stride, padding, out)
    x = _c(x)
    N, C, H, W = x.shape
    (sh, sw), (ph, pw) = stride, padding
    OH = (H + 2 * ph - kh) // sh + 1
    OW = (W + 2 * pw - kw) // sw + 1
    target = out if out is not None and out.flags.c_contiguous and out.dtype == x.dtype else None
    cols = np.empty((C * kh * kw, N * OH * OW), x.dtype) if target is None else target
    fn = _function("im2col", x.dtype)
    stream = int(cols.nbytes > IM2COL_STREAM_BYTES)

    def run(n0, n1):
        fn(x.ctypes.data, cols.ctypes.data, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW, n0, n1, stream)

    def run_channels(c0, c1):  # one image: channels [c0, c1) fill rows [c0*KH*KW, c1*KH*KW)
        fn(x.ctypes.data + c0 * H * W * x.itemsize, cols.ctypes.data + c0 * kh * kw * cols.shape[1] * x.itemsize,
           N, c1 - c0, H, W, kh, kw, sh, sw, ph, pw, OH, OW, 0, 1, stream)

    # one run of images per thread: each row of cols is then written in long runs, and no two
    # threads write the same cache line (a piece per image would share a line at every row's
    # image boundary: 2,304 rows per image in conv3); the loop keeps its rereads in cache itself.
    # One image: one run of channels per thread.
    if N == 1:
        cpu_kernels.parallel_runs(run_channels, C)
    else:
        cpu_kernels.parallel_runs(run, N)
    if out is not None and target is None:
        out[...] = cols
        return out
    return cols


def col2im(cols, x_shape, kh, kw, stride, padding, out=None):
    """cols: (C*KH*KW, N*OH*OW) -> (N, C, H, W), summing overlaps; see cpu_kernels.col2im."""
    if not _compiled(cols):
        return cpu_kernels.col2im(cols, x_shape, kh, kw, stride, padding, out)
    cols = _c(cols)
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = stride, padding
    OH = (H + 2 * ph - kh) // sh + 1
    OW = (W + 2 * pw - kw) // sw + 1
    target = out if out is not None and out.flags.c_contiguous and out.dtype == cols.dtype else None
    gx = np.empty(x_shape, cols.dtype) if target is None else target
    fn = _function("col2im", cols.dtype)

    def run(n0, n1):
        fn(cols.ctypes.data, gx.ctypes.data, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW, n0, n1)

    def run_channels(c0, c1):  # one image: rows [c0*KH*KW, c1*KH*KW) fill channels [c0, c1)
        fn(cols.ctypes.data + c0 * kh * kw * cols.shape[1] * cols.itemsize,
           gx.ctypes.data + c0 * H * W * gx.itemsize, N, c1 - c0, H, W, kh, kw, sh, sw, ph, pw, OH, OW, 0, 1)

    # one run of images per thread, as im2col: the loop reads each row of cols from start to
    # end, so a thread's part of a row is one long run (cache-sized pieces of a few images cut
    # it into short ones: conv2-5's col2im took 1.1-1.4 times as long); what it rereads, the
    # image planes of one channel, it keeps in cache itself.  One image: a run of channels each.
    if N == 1:
        cpu_kernels.parallel_runs(run_channels, C)
    else:
        cpu_kernels.parallel_runs(run, N)
    if out is not None and target is None:
        out[...] = gx
        return out
    return gx


def maxpool_forward(x, kh, kw, sh, sw, oh, ow, with_argmax=True):
    """x: (N, C, H, W), already padded -> (y, argmax), argmax None without ``with_argmax``;
    see cpu_kernels.maxpool_forward."""
    if not _compiled(x):
        return cpu_kernels.maxpool_forward(x, kh, kw, sh, sw, oh, ow, with_argmax)
    x = _c(x)
    N, C, H, W = x.shape
    y = np.empty((N, C, oh, ow), x.dtype)
    argmax = np.empty((N, C, oh, ow), np.int32) if with_argmax else None
    fn = _function("maxpool_forward", x.dtype)

    def places(out):  # where output `out`'s argmax goes; a null pointer: the loop records no places
        return 0 if argmax is None else argmax.ctypes.data + out * argmax.itemsize

    def run(n0, n1):
        fn(x.ctypes.data, y.ctypes.data, places(0), C, H, W, kh, kw, sh, sw, oh, ow, n0, n1)

    def run_channels(c0, c1):  # one image: channels [c0, c1)
        out = int(c0 * oh * ow)
        fn(x.ctypes.data + c0 * H * W * x.itemsize, y.ctypes.data + out * y.itemsize,
           places(out), c1 - c0, H, W, kh, kw, sh, sw, oh, ow, 0, 1)

    if N == 1:  # one image: one run of channels per thread
        cpu_kernels.parallel_runs(run_channels, C)
    else:
        cpu_kernels.parallel_chunks(run, N, _image_bytes(x))
    return y, argmax


def maxpool_backward(argmax, gy, x_shape, kh, kw, sh, sw):
    """-> gx: x_shape; see cpu_kernels.maxpool_backward."""
    if not _compiled(gy):
        return cpu_kernels.maxpool_backward(argmax, gy, x_shape, kh, kw, sh, sw)
    if argmax.shape != gy.shape or argmax.dtype != np.int32 or tuple(x_shape[:2]) != gy.shape[:2]:
        raise ValueError(f"maxpool_backward: argmax must be int32 of the gradient's shape {gy.shape}, and "
                         f"x_shape's images and channels the gradient's; got argmax {argmax.dtype} "
                         f"{argmax.shape}, x_shape {tuple(x_shape)}")
    argmax, gy = _c(argmax), _c(gy)
    N, C, H, W = x_shape
    oh, ow = gy.shape[2:]
    gx = np.empty(x_shape, gy.dtype)
    fn = _function("maxpool_backward", gy.dtype)

    def run(n0, n1):
        fn(argmax.ctypes.data, gy.ctypes.data, gx.ctypes.data, C, H * W, oh * ow, n0, n1)

    cpu_kernels.parallel_chunks(run, N, C * H * W * gx.itemsize)
    return gx


def lrn_forward(x, size, alpha, beta, k):
    """-> y; see cpu_kernels.lrn_forward."""
    if not _compiled(x):
        return cpu_kernels.lrn_forward(x, size, alpha, beta, k)
    x = _c(x)
    N, C = x.shape[:2]
    y = np.empty_like(x)
    fn = _function("lrn_forward", x.dtype)
    hw = int(np.prod(x.shape[2:]))

    def run(n0, n1):
        fn(x.ctypes.data, y.ctypes.data, C, hw, size // 2, (size - 1) // 2, alpha, beta, k, n0, n1)

    cpu_kernels.parallel_chunks(run, N, 2 * _image_bytes(x))
    return y


def lrn_backward(x, gy, size, alpha, beta, k):
    """-> gx; see cpu_kernels.lrn_backward."""
    if not _compiled(x, gy):
        return cpu_kernels.lrn_backward(x, gy, size, alpha, beta, k)
    x, gy = _c(x), _c(gy)
    N, C = x.shape[:2]
    gx = np.empty_like(x)
    fn = _function("lrn_backward", x.dtype)
    hw = int(np.prod(x.shape[2:]))

    def run(n0, n1):
        fn(x.ctypes.data, gy.ctypes.data, gx.ctypes.data, C, hw, size // 2, (size - 1) // 2,
           alpha, beta, k, n0, n1)

    cpu_kernels.parallel_chunks(run, N, 5 * _image_bytes(x))
    return gx


def conv_output(prod, bias, relu, out):
    """prod (O, n, P) -> out (n, O, P), plus the bias, then the ReLU if asked; see
    cpu_kernels.conv_output."""
    arrays = (prod, out) if bias is None else (prod, out, bias)
    if not _compiled(*arrays) or not (prod.flags.c_contiguous and out.flags.c_contiguous):
        return cpu_kernels.conv_output(prod, bias, relu, out)
    bias = None if bias is None else _c(bias)
    O, n, P = prod.shape
    fn = _function("conv_output", prod.dtype)

    def run(i0, i1):
        fn(prod.ctypes.data, None if bias is None else bias.ctypes.data, out.ctypes.data, O, n, P,
           int(bool(relu)), i0, i1)

    cpu_kernels.parallel_runs(run, n)  # a transpose: streams, reuses nothing
    return out


def conv_grad_rows(gy, y, out):
    """gy (n, O, P) -> out (O, n, P), times the ReLU's mask (y > 0) if y is given; see
    cpu_kernels.conv_grad_rows."""
    arrays = (gy, out) if y is None else (gy, out, y)
    if not _compiled(*arrays) or not all(a.flags.c_contiguous for a in arrays):
        return cpu_kernels.conv_grad_rows(gy, y, out)
    n, O, P = gy.shape
    fn = _function("conv_grad_rows", gy.dtype)

    def run(i0, i1):
        fn(gy.ctypes.data, None if y is None else y.ctypes.data, out.ctypes.data, O, n, P, i0, i1)

    cpu_kernels.parallel_runs(run, n)  # a transpose: streams, reuses nothing
    return out


def _planes(run, n, rows):
    """run(i0, i1, r0, r1) over n images of ``rows`` planes each (channels or filters): one run
    of planes per thread, each with every image.  A thread then owns whole rows of the tile
    matrix (A^2, rows, n*TH*TW) and streams through them; split by images instead, both
    threads would write or read pieces of every row, and the four image-side transforms took
    17-32% longer at AlexNet's conv3-conv5 (batch 2 to 128, measured interleaved in one
    process)."""
    cpu_kernels.parallel_runs(lambda r0, r1: run(0, n, r0, r1), rows)


def winograd_weight(w):
    """w (O, C/G, K, K) -> U (A^2, O, C/G); see cpu_kernels.winograd_weight."""
    if not _compiled(w):
        return cpu_kernels.winograd_weight(w)
    w = _c(w)
    O, Cg, K = w.shape[:3]
    u = np.empty((cpu_kernels.winograd_side(K) ** 2, O, Cg), w.dtype)
    fn = _function("winograd_weight", w.dtype)
    cpu_kernels.parallel_runs(lambda p0, p1: fn(w.ctypes.data, u.ctypes.data, O * Cg, p0, p1, K), O * Cg)
    return u


def winograd_weight_grad(gu):
    """gU (A^2, O, C/G) -> (O, C/G, K, K); see cpu_kernels.winograd_weight_grad."""
    if not _compiled(gu):
        return cpu_kernels.winograd_weight_grad(gu)
    gu = _c(gu)
    K = cpu_kernels.winograd_kernel(gu.shape[0])
    O, Cg = gu.shape[1:]
    gw = np.empty((O, Cg, K, K), gu.dtype)
    fn = _function("winograd_weight_grad", gu.dtype)
    cpu_kernels.parallel_runs(lambda p0, p1: fn(gu.ctypes.data, gw.ctypes.data, O * Cg, p0, p1, K), O * Cg)
    return gw


def _image_tiles(name, src, dst, images, tiles_of, padding, tiles):
    """The compiled loop ``name`` between images (n, C, H, W) and their tiles (A^2, C,
    n*TH*TW), ``tiles_of`` (src or dst): src -> dst, over the images' (image, channel) planes."""
    src = _c(src)
    n, C, H, W = images.shape
    K = cpu_kernels.winograd_kernel(tiles_of.shape[0])
    fn = _function(name, src.dtype)
    _planes(lambda i0, i1, c0, c1: fn(src.ctypes.data, dst.ctypes.data, n, C, H, W, *padding, *tiles,
                                      i0, i1, c0, c1, K), n, C)
    return dst


def winograd_input(x, padding, tiles, out):
    """x (n, C, H, W) -> out (A^2, C, n*TH*TW); see cpu_kernels.winograd_input."""
    if not _compiled(x, out) or not out.flags.c_contiguous:
        return cpu_kernels.winograd_input(x, padding, tiles, out)
    return _image_tiles("winograd_input", x, out, x, out, padding, tiles)


def winograd_output(m, bias, relu, tiles, out):
    """m (A^2, O, n*TH*TW) -> out (n, O, OH, OW); see cpu_kernels.winograd_output."""
    arrays = (m, out) if bias is None else (m, out, bias)
    if not _compiled(*arrays) or not (m.flags.c_contiguous and out.flags.c_contiguous):
        return cpu_kernels.winograd_output(m, bias, relu, tiles, out)
    bias = None if bias is None else _c(bias)
    n, O, OH, OW = out.shape
    fn = _function("winograd_output", m.dtype)
    _planes(lambda i0, i1, o0, o1: fn(m.ctypes.data, None if bias is None else bias.ctypes.data, out.ctypes.data,
                                      n, O, OH, OW, *tiles, int(bool(relu)), i0, i1, o0, o1,
                                      cpu_kernels.winograd_kernel(m.shape[0])), n, O)
    return out


def winograd_grad_output(gy, y, tiles, out):
    """gy (n, O, OH, OW) -> out (A^2, O, n*TH*TW); see cpu_kernels.winograd_grad_output."""
    arrays = (gy, out) if y is None else (gy, out, y)
    if not _compiled(*arrays) or not out.flags.c_contiguous:
        return cpu_kernels.winograd_grad_output(gy, y, tiles, out)
    gy, y = _c(gy), None if y is None else _c(y)
    n, O, OH, OW = gy.shape
    fn = _function("winograd_grad_output", gy.dtype)
    _planes(lambda i0, i1, o0, o1: fn(gy.ctypes.data, None if y is None else y.ctypes.data, out.ctypes.data,
                                      n, O, OH, OW, *tiles, i0, i1, o0, o1,
                                      cpu_kernels.winograd_kernel(out.shape[0])), n, O)
    return out


def winograd_input_grad(gv, padding, tiles, out):
    """gv (A^2, C, n*TH*TW) -> out (n, C, H, W); see cpu_kernels.winograd_input_grad."""
    if not _compiled(gv, out) or not out.flags.c_contiguous:
        return cpu_kernels.winograd_input_grad(gv, padding, tiles, out)
    return _image_tiles("winograd_input_grad", gv, out, out, gv, padding, tiles)


def sgd_update(w, g, v, lr, m, wd):
    """In place: v = m*v - wd*lr*w - lr*g; w += v, in one pass; see cpu_kernels.sgd_update."""
    if not _compiled(w, g, v) or not all(a.flags.c_contiguous for a in (w, g, v)):
        return cpu_kernels.sgd_update(w, g, v, lr, m, wd)
    fn = _function("sgd_update", w.dtype)

    def run(i0, i1):
        fn(w.ctypes.data, g.ctypes.data, v.ctypes.data, lr, m, wd, i0, i1)

    cpu_kernels.parallel_runs(run, w.size)


def matvec(w, x):
    """w (O, I) @ x (I,) -> (O,), or for N vectors x (N, I) -> (N, O), each row's sum in
    cpu_kernels.matvec's order; the rows of w shared out between the threads, one run each."""
    if not _compiled(w, x):
        return cpu_kernels.matvec(w, x)
    w, x = _c(w), _c(x)
    O, I = w.shape
    xs = x.reshape(len(x) if x.ndim == 2 else 1, I)
    y = np.empty((xs.shape[0], O), w.dtype)
    fn = _function("matvec", w.dtype)
    cpu_kernels.parallel_runs(lambda o0, o1: fn(w.ctypes.data, xs.ctypes.data, y.ctypes.data, xs.shape[0], I, O,
                                                o0, o1), O)
    return y.reshape(x.shape[:-1] + (O,))


# gw larger than this is stored past the cache (see outer_sum in kernels/cpu_loops.cpp)
OUTER_SUM_STREAM_BYTES = 8 << 20


def outer_sum(gy, x):
    """gy (N, O), x (N, I) -> gy.T @ x (O, I), each entry's sum in cpu_kernels.outer_sum's
    order; the rows of gw shared out between the threads, one run each.  gw is an array of
    its own (autograd keeps it as the weight's .grad without a copy); wherever it starts, the
    loop stores whole cache lines only past the cache (see outer_sum in kernels/cpu_loops.cpp)."""
    if not _compiled(gy, x):
        return cpu_kernels.outer_sum(gy, x)
    cpu_kernels._check_outer_sum(gy, x)  # the loop reads N rows of both
    gt, x = _c(gy.T), _c(x)  # gy.T (O, N): each row's N coefficients side by side
    (O, N), I = gt.shape, x.shape[1]
    gw = np.empty((O, I), gt.dtype)
    stream = gw.nbytes > OUTER_SUM_STREAM_BYTES and I * gw.itemsize % 64 == 0
    fn = _function("outer_sum", gt.dtype)
    cpu_kernels.parallel_runs(lambda o0, o1: fn(gt.ctypes.data, x.ctypes.data, gw.ctypes.data, N, I, o0, o1,
                                                int(stream)), O)
    return gw


def outer_sum_sgd(gy, x, w, v, lr, m, wd):
    """In place: the paper's update of w (O, I) and its momentum v with g = gy.T @ x, each g
    summed as outer_sum sums it and used at once, never stored (see outer_sum_sgd in
    kernels/cpu_loops.cpp); the same bits as cpu_kernels.outer_sum_sgd, which stores g and
    then updates.  The rows shared out between the threads, one run each."""
    if not _compiled(gy, x, w, v):
        return cpu_kernels.outer_sum_sgd(gy, x, w, v, lr, m, wd)
    cpu_kernels._check_outer_sum(gy, x)
    cpu_kernels._check_step_arrays(gy, x, w, v)
    gt, x = _c(gy.T), _c(x)  # gy.T (O, N): each row's N coefficients side by side
    (O, N), I = gt.shape, x.shape[1]
    fn = _function("outer_sum_sgd", w.dtype)
    cpu_kernels.parallel_runs(lambda o0, o1: fn(gt.ctypes.data, x.ctypes.data, w.ctypes.data, v.ctypes.data,
                                                N, I, o0, o1, lr, m, wd), O)
