"""CPU kernels in NumPy: the loops that differ between CPU and GPU.

Each function here has a CUDA twin in ``kernels/*.cu`` computing the same
thing with one GPU thread per output element, except the Winograd transforms
of the CPU's 3x3 convolutions (a GPU convolves by im2col).  On the CPU the rule is: loop
over the few kernel offsets (KH*KW, or the LRN window), never over pixels or
images, and let each step be one NumPy call over a whole strided slice.

Large elementwise passes (LRN, pooling) are memory-bound and NumPy runs
them on one core, so ``parallel_chunks`` cuts the batch into cache-sized
pieces and shares them between the calling thread and a small thread pool
(NumPy releases the GIL inside its loops).  The numbers do not depend on the
chunking.
"""

import os
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import get_array_module

# ----------------------------------------------------------------------------
# Threads for memory-bound passes
# ----------------------------------------------------------------------------

# The pool is made on first use.  Several threads may get there at once (the
# data loader's prefetch thread and the training loop, or two towers), so
# making it, and replacing it in set_num_threads, happen under a lock: never
# two pools.
_pool = {"threads": None, "executor": None, "chunk_bytes": 2 * 2**20}
_pool_lock = threading.Lock()


def set_num_threads(n):
    """Threads used by the CPU kernels' elementwise passes (default: the
    number of cores).  BLAS threads are set separately (OPENBLAS_NUM_THREADS).
    Call it between steps: a pass running in another thread at that moment
    may find its pool shut down."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    with _pool_lock:
        old = _pool["executor"]
        _pool["threads"], _pool["executor"] = n, None
    if old is not None:
        old.shutdown(wait=True)


def get_num_threads():
    with _pool_lock:
        if _pool["threads"] is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            _pool["threads"] = max(1, cores or 1)
        return _pool["threads"]


def set_chunk_bytes(nbytes):
    """Working set of one piece of a parallel pass, in bytes (default 2 MiB,
    about one core's share of the cache).  Returns the previous value.  At
    1 byte every image is its own piece: tests use that to run even tiny
    batches on several threads.  The passes that stream through memory do
    not use it: they give each thread one run (``parallel_runs``)."""
    if not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"set_chunk_bytes: nbytes must be a positive int, got {nbytes!r}")
    old, _pool["chunk_bytes"] = _pool["chunk_bytes"], nbytes
    return old


def _executor(threads):
    """The shared thread pool, created by whichever thread needs it first: threads - 1
    workers, as the calling thread is the pass's other one."""
    with _pool_lock:
        if _pool["executor"] is None:
            _pool["executor"] = ThreadPoolExecutor(threads - 1, thread_name_prefix="tinynet-cpu")
        return _pool["executor"]


def parallel_chunks(fn, n, bytes_per_item, target_bytes=None):
    """Call ``fn(i0, i1)`` over [0, n) cut into pieces of about
    ``target_bytes`` working set each (default: ``set_chunk_bytes``), on
    ``get_num_threads()`` threads: the calling thread and the pool's workers
    take the next piece from one queue until none is left, so that the
    caller works instead of waiting (a hand-off to a sleeping worker costs
    tens of microseconds: at batch 1 a piece is a few hundred).  ``fn`` must
    write only to its own slice.  n = 0 (an empty batch) calls nothing.

    Returns only when every piece has finished, also when one raised: the
    caller may reuse its buffers as soon as this returns or raises, and no
    piece still running could write into them.  It waits for the pieces, not
    for the workers: a worker that wakes after the caller has taken every
    piece finds none and touches nothing, and the caller need not wait for it
    to wake (that wait was 30-40 microseconds a call)."""
    target_bytes = _pool["chunk_bytes"] if target_bytes is None else target_bytes
    step = int(max(1, min(n, target_bytes // max(bytes_per_item, 1))))
    ranges = [(i, min(n, i + step)) for i in range(0, n, step)]
    pool_threads = get_num_threads()
    threads = min(pool_threads, len(ranges))
    if threads <= 1:
        for i0, i1 in ranges:
            fn(i0, i1)
        return
    queue = deque(ranges)  # popleft is atomic: each piece goes to exactly one thread
    errors = []
    unfinished = [len(ranges)]  # pieces not finished yet, counted down under `lock`
    lock, all_finished = threading.Lock(), threading.Event()

    def work():
        while True:
            try:
                i0, i1 = queue.popleft()
            except IndexError:
                return
            try:
                fn(i0, i1)
            except BaseException as error:  # noqa: B036  kept for the caller; the others go on
                errors.append(error)
            finally:
                with lock:
                    unfinished[0] -= 1
                    if unfinished[0] == 0:
                        all_finished.set()

    executor = _executor(pool_threads)
    for _ in range(threads - 1):
        executor.submit(work)
    work()
    all_finished.wait()  # every piece has finished, also after one has raised
    if errors:
        raise errors[0]


def parallel_runs(fn, n):
    """Call ``fn(i0, i1)`` over [0, n) cut into one run per thread, for passes
    that stream through memory and reuse nothing in the cache (im2col's
    writes, the convolution's output pass, the SGD update).  Long runs are
    faster there than cache-sized pieces, which cost a hand-off each and
    share a cache line between two threads wherever a piece's output ends
    mid-line."""
    parallel_chunks(fn, n, 1, target_bytes=-(-n // get_num_threads()))


# ----------------------------------------------------------------------------
# Batches of small matrix products: one BLAS thread per product
# ----------------------------------------------------------------------------

# OpenBLAS's setter and getter of its thread count, under the names its builds export: NumPy's
# wheels bundle it as scipy_openblas (with 64-bit integers), a system OpenBLAS has plain names
_OPENBLAS_NAMES = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                   ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                   ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                   ("openblas_set_num_threads", "openblas_get_num_threads"))
_blas = {"looked": False, "control": None, "found": None, "kernels": None, "timeout": None}
_blas_lock = threading.Lock()


def _find_openblas():
    """((set, get), what, kernels) for the OpenBLAS this process has loaded, kernels the name of
    the ones it chose when it loaded (e.g. "Haswell"; None where it does not say), or
    (None, why not, None)."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:  # a mapped file's path: a line's sixth and last field
            fields = [line.split() for line in maps]
        paths = sorted({f[-1] for f in fields if len(f) >= 6 and "openblas" in f[-1].lower()})
    except OSError:
        return None, "the loaded libraries cannot be listed (no /proc/self/maps)", None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _OPENBLAS_NAMES:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                kernels = None
                corename = getattr(lib, set_name.replace("set_num_threads", "get_corename"), None)
                if corename is not None:
                    corename.argtypes, corename.restype = [], ctypes.c_char_p
                    kernels = (corename() or b"?").decode(errors="replace")
                return (setter, getter), os.path.basename(path), kernels
    return None, "NumPy's BLAS is not an OpenBLAS whose thread count can be set", None


def _openblas_control():
    with _blas_lock:
        if not _blas["looked"]:
            _blas["control"], _blas["found"], _blas["kernels"] = _find_openblas()
            _blas["looked"] = True
        return _blas["control"]


def blas_kernels():
    """Which of OpenBLAS's kernels this process runs, in words, e.g. "OpenBLAS's SkylakeX
    kernels", and the setting that chose them where one did.  OpenBLAS picks them for the
    processor when it loads, unless OPENBLAS_CORETYPE names some: "Haswell" (256-bit) on an
    AVX-512 processor halved the sgemm rate on a 2-core AMD EPYC (about 190 GFLOP/s against
    370), and with it every GEMM of a step.  The training program and the benchmarks print it."""
    _openblas_control()
    if _blas["control"] is None:
        return f"BLAS kernels unknown: {_blas['found']}"
    kernels = f"OpenBLAS's {_blas['kernels']} kernels" if _blas["kernels"] else "OpenBLAS (kernels not reported)"
    chosen = [f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]
    return (kernels + (f", with {' and '.join(chosen)} set in the environment" if chosen else "")
            + "; " + blas_idle_threads())


def note_blas_timeout(seen):
    """How OpenBLAS came by its idle threads' timeout, told by tinynet's import (tinynet/__init__.py):
    "tinynet" (OpenBLAS loaded after tinynet set OPENBLAS_THREAD_TIMEOUT=4), "environment" (a value
    the environment held before) or "default" (OpenBLAS had loaded before tinynet, with no value:
    its idle threads spin about 0.1 s after every product).  In the last case, where OpenBLAS and
    tinynet both run more than one thread, it warns, once: those threads take a core from
    tinynet's passes between the GEMMs."""
    _blas["timeout"] = seen
    if seen != "default":  # nothing to warn of: OpenBLAS is not looked up at import
        return
    control = _openblas_control()
    if control is not None and control[1]() > 1 and get_num_threads() > 1:
        warnings.warn(
            "tinynet was imported after NumPy had loaded OpenBLAS, with no OPENBLAS_THREAD_TIMEOUT in the "
            "environment: OpenBLAS's idle threads now spin for about 0.1 s after every matrix product it "
            "shares out, taking a core from tinynet's own passes (AlexNet's training steps took 1.3-1.5 "
            "times as long on 2 cores).  So tinynet runs its own products on its own threads instead, "
            "one BLAS thread each, which keeps them asleep through its steps; a product elsewhere in the "
            "program still wakes them.  Import tinynet before numpy, or set OPENBLAS_THREAD_TIMEOUT=4 in "
            "the environment.", RuntimeWarning, stacklevel=3)


def blas_idle_threads():
    """What OpenBLAS's idle threads do between products, in words (see note_blas_timeout)."""
    seen = _blas.get("timeout")
    control = _openblas_control()
    if control is not None and control[1]() == 1:
        return "it runs one thread, so none idles"
    if seen == "tinynet":
        return "its idle threads sleep at once (OPENBLAS_THREAD_TIMEOUT=4, set by tinynet)"
    if seen == "environment":
        return f"its idle threads' timeout from the environment (OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']})"
    if seen == "default":
        return ("its idle threads spin about 0.1 s after each product (OpenBLAS loaded before tinynet), "
                "so tinynet runs its products on its own threads")
    return "its idle threads' timeout unknown"


def batched_matmul_route():
    """How batched_matmul runs a batch of products here, in words (benchmarks print it)."""
    if get_num_threads() < 2:
        return "np.matmul: tinynet has one thread"
    if _openblas_control() is None:
        return f"np.matmul, one product at a time: {_blas['found']}"
    return f"one product per thread, each on one BLAS thread ({_blas['found']})"


def batched_matmul(a, b, out=None):
    """out[i] = a[i] @ b[i] for a batch of independent products: the G groups of a grouped
    convolution, or Winograd's A^2 * G (ops/conv.py).  a (B, M, K), b (B, K, P).

    np.matmul does the products one after the other, each split between OpenBLAS's threads.
    A convolution's products are small (inner sizes of 48 to 384) and that split costs:
    AlexNet's Winograd products at batch 32 ran at 90-170 GFLOP/s so, against 130-200 when
    each of tinynet's threads took half of the batch and did its products on one BLAS thread
    (a whole training step: 0.91 of the time).  So here OpenBLAS is set to one thread, the
    batch is shared out as ``parallel_runs`` shares a pass, and OpenBLAS's thread count is
    put back after, also on an error.  Each product is the same call on the same operands,
    so the numbers are np.matmul's (OpenBLAS splits a product's rows and columns between
    threads, never its sums).  Where the thread count cannot be set (another BLAS;
    ``batched_matmul_route`` says why), or tinynet has one thread, or for CuPy arrays,
    this is np.matmul (xp.matmul).  A batch of one product is ``matmul``'s (np.matmul, unless
    OpenBLAS's idle threads spin)."""
    xp = get_array_module(a)
    if xp is np and a.ndim == b.ndim == 3 and a.shape[0] == b.shape[0] == 1:
        out = np.empty((1, a.shape[1], b.shape[2]), np.result_type(a.dtype, b.dtype)) if out is None else out
        matmul(a[0], b[0], out=out[0])  # one product (one group: conv1): np.matmul's, unless idle threads spin
        return out
    control = None
    if xp is np and a.ndim == b.ndim == 3 and a.shape[0] == b.shape[0] > 1 and get_num_threads() > 1 \
            and (out is None or out.shape[0] == a.shape[0]):
        control = _openblas_control()
    if control is None:
        return xp.matmul(a, b) if out is None else xp.matmul(a, b, out=out)
    if out is None:
        out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.result_type(a.dtype, b.dtype))
    _on_one_blas_thread_each(control, lambda i0, i1: np.matmul(a[i0:i1], b[i0:i1], out=out[i0:i1]), a.shape[0])
    return out


def blas_threads_spin():
    """Whether OpenBLAS's idle threads spin after a product here: it loaded before tinynet, with
    no OPENBLAS_THREAD_TIMEOUT in the environment (see note_blas_timeout)."""
    return _blas.get("timeout") == "default"


def matmul(a, b, out=None):
    """a @ b for one product of 2-D NumPy arrays, as the CPU's convolutions and fully connected
    layers run it: np.matmul, on OpenBLAS's threads, unless OpenBLAS's idle threads spin after a
    product (blas_threads_spin: NumPy was imported before tinynet).  Then every product a step
    hands to OpenBLAS's threads leaves one spinning on a core for about 0.1 s, where tinynet's
    passes and its batches of products want it, and a step took 1.2-1.5 times as long on 2
    cores.  So there the product runs on tinynet's threads instead, each on one BLAS thread (as
    batched_matmul runs a batch), each thread taking a run of the output's columns, or of its
    rows where they are more: OpenBLAS's own threads never run, and never spin.  On a 2-core
    AMD EPYC (Zen 5), in pairs of fresh processes, NumPy first then took 0.83-0.94 of the time
    of tinynet first for a batch-8 training step, 1.03-1.13 at batch 32 and 0.99-1.14 for a
    batch-1 inference pass, where it had taken 1.24-1.42, 1.19-1.23 and 1.23-1.54 times as
    long.  Every entry is still one whole
    dot product (OpenBLAS splits rows and columns, never sums); a share of a few columns may take
    another of OpenBLAS's kernels, which can round a last bit apart (see rows_matmul)."""
    xp = get_array_module(a)
    control = _openblas_control() if xp is np and blas_threads_spin() and get_num_threads() > 1 else None
    if control is None or a.ndim != 2 or b.ndim != 2:
        return xp.matmul(a, b) if out is None else xp.matmul(a, b, out=out)
    return _shared_product(control, a, b, out, by_columns=b.shape[1] >= a.shape[0])


def rows_matmul(a, b):
    """a @ b for 2-D NumPy arrays, the rows of a (and of the result) shared out between
    tinynet's threads as ``parallel_runs`` shares a pass, each thread's product on one BLAS
    thread, as batched_matmul runs a batch.  For the fully connected layers' weight gradient
    at a small batch (ops/linear.py): gy.T @ x, 4096 x N times N x 9216 for fc6, is a product
    OpenBLAS ran no faster on two threads than on one here (fc6 at batch 8: 27 ms on two,
    26 on one), and each of two threads taking half of the rows took 15.  Every entry is the
    same dot product as in np.matmul, never split: at AlexNet's shapes (shares of 500 to 2,048
    rows) the bits were np.matmul's in every comparison here, but a share of one or a few rows
    may take another of OpenBLAS's kernels, which can round a last bit apart.  Where the thread
    count cannot be set, or tinynet has one thread, this is np.matmul."""
    control = _openblas_control() if get_num_threads() > 1 else None
    if control is None:
        return np.matmul(a, b)
    return _shared_product(control, a, b, by_columns=False)


def _shared_product(control, a, b, out=None, by_columns=False):
    """a @ b (2-D) on tinynet's threads, one BLAS thread each, each thread taking a run of the
    output's columns (``by_columns``) or of its rows: every entry one whole dot product."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a.dtype, b.dtype))
    if by_columns:
        _on_one_blas_thread_each(control, lambda j0, j1: np.matmul(a, b[:, j0:j1], out=out[:, j0:j1]), b.shape[1])
    else:
        _on_one_blas_thread_each(control, lambda i0, i1: np.matmul(a[i0:i1], b, out=out[i0:i1]), a.shape[0])
    return out


def _on_one_blas_thread_each(control, run, n):
    """parallel_runs(run, n) with OpenBLAS set to one thread meanwhile, its count put back after,
    also on an error."""
    set_blas_threads, get_blas_threads = control
    with _blas_lock:  # one pass at a time changes the count (models may run in several threads)
        blas_threads = get_blas_threads()
        set_blas_threads(1)
        try:
            parallel_runs(run, n)
        finally:
            set_blas_threads(blas_threads)


def _image_bytes(x):
    """Bytes of one item along the batch axis of x (N, ...); also for N = 0."""
    return x.itemsize * int(np.prod(x.shape[1:]))


# ----------------------------------------------------------------------------
# im2col / col2im
# ----------------------------------------------------------------------------


def _padded(x, ph, pw):
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xpad[:, :, ph:ph + H, pw:pw + W] = x
    return xpad


def im2col(x, kh, kw, stride, padding, out=None):
    """x: (N, C, H, W) -> cols: (C*KH*KW, N*OH*OW); see ops.conv.im2col.

    ``windows`` is a view of the padded input, (C, KH, KW, N, OH, OW): for
    every kernel offset (ky, kx), the strided slice of pixels that offset
    reads (at (n, oy, ox): x_padded[n, c, oy*sh + ky, ox*sw + kx]).  No data
    is copied to make it; the columns are that view copied once, which NumPy
    does faster than the same slices copied one kernel offset at a time (up
    to twice as fast on AlexNet's conv1 and conv2, measured; about even on
    the small 13x13 layers).  The images are shared out among the threads."""
    N, C, H, W = x.shape
    (sh, sw), (ph, pw) = stride, padding
    OH = (H + 2 * ph - kh) // sh + 1
    OW = (W + 2 * pw - kw) // sw + 1
    if out is None:
        out = np.empty((C * kh * kw, N * OH * OW), dtype=x.dtype)
    cols = out.reshape(C, kh, kw, N, OH, OW)  # axes 0-2 are the rows
    windows = _windows(_padded(x, ph, pw), kh, kw, sh, sw, OH, OW)

    def run(n0, n1):
        np.copyto(cols[:, :, :, n0:n1], windows[:, :, :, n0:n1])

    parallel_chunks(run, N, C * kh * kw * OH * OW * x.itemsize)
    return out


def _windows(xpad, kh, kw, sh, sw, oh, ow):
    """The read-only view (C, KH, KW, N, OH, OW) of xpad (N, C, Hp, Wp) with
    [c, ky, kx, n, oy, ox] = xpad[n, c, oy*sh + ky, ox*sw + kx]: every
    window of every image, offsets first."""
    win = np.lib.stride_tricks.sliding_window_view(xpad, (kh, kw), axis=(2, 3))  # (N, C, Hp-KH+1, Wp-KW+1, KH, KW)
    win = win[:, :, :sh * (oh - 1) + 1:sh, :sw * (ow - 1) + 1:sw]              # (N, C, OH, OW, KH, KW)
    return win.transpose(1, 4, 5, 0, 2, 3)


def col2im(cols, x_shape, kh, kw, stride, padding, out=None):
    """cols: (C*KH*KW, N*OH*OW) -> (N, C, H, W), summing overlaps.

    ``out``, if given, receives the result (it must not alias ``cols``)."""
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = stride, padding
    OH = (H + 2 * ph - kh) // sh + 1
    OW = (W + 2 * pw - kw) // sw + 1
    cols = cols.reshape(C, kh, kw, N, OH, OW)
    padded = bool(ph or pw) or out is None
    gx = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype) if padded else out
    g_cn = gx.transpose(1, 0, 2, 3)  # (C, N, Hp, Wp) view

    def run(n0, n1):
        g_cn[:, n0:n1] = 0
        for ky in range(kh):
            for kx in range(kw):
                # one offset never maps two columns onto one pixel, so += is safe
                g_cn[:, n0:n1, ky:ky + sh * OH:sh, kx:kx + sw * OW:sw] += cols[:, ky, kx, n0:n1]

    parallel_chunks(run, N, C * (H + 2 * ph) * (W + 2 * pw) * cols.itemsize)
    if ph or pw:
        gx = gx[:, :, ph:ph + H, pw:pw + W]
        if out is not None:
            out[...] = gx
            return out
    return gx


# ----------------------------------------------------------------------------
# Max pooling
# ----------------------------------------------------------------------------


def _window_slice(k_off, stride, out_len):
    return slice(k_off, k_off + stride * out_len, stride)


def maxpool_forward(x, kh, kw, sh, sw, oh, ow, with_argmax=True):
    """x: (N, C, H, W) -> (y, argmax), both (N, C, OH, OW): the maximum of each
    window, and where it sits in its input plane (h * W + w, int32).  Without
    ``with_argmax`` (nothing will run backward: inference) argmax is None and
    only the maxima are computed.

    The maximum: one np.maximum per kernel offset, over the whole strided
    slice (a NaN anywhere in the window wins, as in NumPy).  Its place: the
    offsets once more, in row-major order; ``pending`` marks the windows whose
    maximum has not been found yet, so the first offset that holds it is the
    one recorded: on ties the first maximum, as np.argmax would pick it, and
    if the maximum is NaN, the first NaN.  The value too is the first maximum's:
    where it is zero, the first zero's sign (np.maximum, given -0.0 and +0.0,
    may return either; the compiled loop keeps the first).  (Arithmetic on the masks: a masked
    copy, np.copyto(..., where=), is twenty times slower.)  Backward needs only
    argmax."""
    N, C, H, W = x.shape
    y = np.empty((N, C, oh, ow), dtype=x.dtype)
    argmax = np.empty((N, C, oh, ow), dtype=np.int32) if with_argmax else None
    # the plane index of each window's top-left pixel
    start = (np.arange(oh)[:, None] * (sh * W) + np.arange(ow) * sw).astype(np.int32)

    def run(i0, i1):
        xs, ys, arg = x[i0:i1], y[i0:i1], None if argmax is None else argmax[i0:i1]
        ys[...] = xs[:, :, _window_slice(0, sh, oh), _window_slice(0, sw, ow)]
        for ky in range(kh):
            for kx in range(kw):
                if ky or kx:
                    np.maximum(ys, xs[:, :, _window_slice(ky, sh, oh), _window_slice(kx, sw, ow)], out=ys)
        zero = ys == 0
        if zero.any():  # -0.0 and +0.0 are equal: such a maximum takes the sign of the window's first zero
            for ky in reversed(range(kh)):
                for kx in reversed(range(kw)):
                    v = xs[:, :, _window_slice(ky, sh, oh), _window_slice(kx, sw, ow)]
                    np.copyto(ys, v, where=zero & (v == 0))
        if arg is None:
            return
        arg[...] = start
        pending = np.ones(ys.shape, dtype=bool)
        hit = np.empty(ys.shape, dtype=bool)
        step = np.empty(ys.shape, dtype=np.int32)
        nan_max = np.isnan(ys)                          # NaN == NaN is False: look for NaN apart
        if not nan_max.any():
            nan_max = None
        for ky in range(kh):
            for kx in range(kw):
                v = xs[:, :, _window_slice(ky, sh, oh), _window_slice(kx, sw, ow)]
                np.equal(v, ys, out=hit)
                if nan_max is not None:
                    hit |= nan_max & np.isnan(v)
                hit &= pending                          # first maximum only
                pending ^= hit
                np.multiply(hit, np.int32(ky * W + kx), out=step)
                arg += step

    parallel_chunks(run, N, _image_bytes(x))
    return y, argmax


def maxpool_backward(argmax, gy, x_shape, kh, kw, sh, sw):
    """Send each output's gradient to its argmax; where windows overlap, one
    pixel can be the maximum of several and their gradients add.

    argmax, gy: (N, C, OH, OW) -> gx: x_shape = (N, C, H, W).  The terms reach
    a pixel in the outputs' row-major order (np.add.at adds one index at a
    time, in order; its fast path came with NumPy 1.25, and on older versions
    this is several times slower).  kh, kw, sh, sw describe the window: unused
    here, but the GPU's twin, which gathers for each pixel from the windows
    covering it, needs them."""
    N, C, H, W = x_shape
    gx = np.zeros(x_shape, dtype=gy.dtype)
    # every output's pixel as an index into the flat gx: its plane's start plus argmax
    planes = np.arange(N * C, dtype=np.int64)[:, None] * (H * W)
    where = argmax.reshape(N * C, argmax.shape[2] * argmax.shape[3]) + planes
    # one call on one thread: shared out by images among threads it was slower (pool1 at batch 32:
    # 35 against 18 ms)
    np.add.at(gx.reshape(-1), where.reshape(-1), gy.reshape(-1))
    return gx


# ----------------------------------------------------------------------------
# Local response normalisation across channels
# ----------------------------------------------------------------------------


def channel_window_sum(a, before, after, out):
    """out[:, c] = sum of a[:, c-before : c+after+1] (clipped at the edges).

    A few shifted adds, one per offset in the window; never a loop over
    channels.  a, out: (n, C, H, W)."""
    C = a.shape[1]
    np.copyto(out, a)
    for d in range(1, before + 1):  # channels below c
        if d < C:
            out[:, d:] += a[:, :-d]
    for d in range(1, after + 1):  # channels above c
        if d < C:
            out[:, :-d] += a[:, d:]
    return out


def lrn_scale(x, size, alpha, k, out, scratch):
    """out = s = k + alpha * sum_window x^2, the LRN's denominator before its power.

    x: (n, C, H, W).  Window of ``size`` channels centred on c (size//2 below,
    (size-1)//2 above), clipped at the edges.  ``scratch``: an array like x
    for x^2.  Forward and backward both compute it, by these same calls."""
    np.multiply(x, x, out=scratch)                                        # x^2
    channel_window_sum(scratch, size // 2, (size - 1) // 2, out=out)      # window sums
    out *= alpha
    out += k                                                              # s = k + alpha * sum
    return out


def lrn_forward(x, size, alpha, beta, k):
    """Paper LRN: y = x * s^-beta with s = k + alpha * sum_window x^2.

    x: (N, C, H, W) -> y.  Nothing but x is kept for backward: backward
    computes s and y again (lrn_backward), by the same calls, so with the same
    bits.  Kept, they would be two more arrays the size of the activations,
    written here and read back there: more memory traffic than the arithmetic.
    """
    N = x.shape[0]
    y = np.empty_like(x)

    def run(i0, i1):
        xs, ys = x[i0:i1], y[i0:i1]
        s = lrn_scale(xs, size, alpha, k, np.empty_like(xs), scratch=ys)  # ys as scratch
        power_neg_beta(s, beta, out=ys)                  # s^-beta
        ys *= xs                                         # y = x * s^-beta

    parallel_chunks(run, N, 3 * _image_bytes(x))
    return y


def power_neg_beta(s, beta, out):
    """out = s ** (-beta).  For the paper's beta = 0.75 this is
    1 / (sqrt(s) * sqrt(sqrt(s))): square roots are far cheaper than pow."""
    if beta == 0.75:
        np.sqrt(s, out=out)             # s^1/2
        root4 = np.sqrt(out)            # s^1/4
        out *= root4                    # s^3/4
        np.reciprocal(out, out=out)     # s^-3/4
    else:
        np.power(s, -beta, out=out)
    return out


def lrn_backward(x, gy, size, alpha, beta, k):
    """Gradient of LRN: with s and y as forward computed them (computed again here),

        gx_i = gy_i * s_i^-beta - 2*alpha*beta * x_i * sum_{j: i in window(j)} gy_j * y_j / s_j

    ``window(j)`` reversed is a window with ``before`` and ``after`` swapped.
    x, gy: (N, C, H, W) -> gx: (N, C, H, W).
    """
    N = x.shape[0]
    gx = np.empty_like(x)
    before, after = size // 2, (size - 1) // 2

    def run(i0, i1):
        xs, gys, gxs = x[i0:i1], gy[i0:i1], gx[i0:i1]
        u = np.empty_like(xs)
        s = lrn_scale(xs, size, alpha, k, np.empty_like(xs), scratch=u)
        power_neg_beta(s, beta, out=gxs)                   # r = s^-beta, kept in gx
        np.multiply(gxs, xs, out=u)                        # y = r * x, as forward made it
        u *= gys
        u /= s                                             # gy_j * y_j / s_j
        t = channel_window_sum(u, after, before, out=s)    # sum over j whose window holds i (s reused)
        t *= xs
        t *= -2.0 * alpha * beta
        gxs *= gys                                         # gy_i * s_i^-beta
        gxs += t

    parallel_chunks(run, N, 5 * _image_bytes(x))
    return gx


# ----------------------------------------------------------------------------
# The convolution's output pass (ops/conv.py)
# ----------------------------------------------------------------------------


def conv_output(prod, bias, relu, out):
    """out[i, o, p] = prod[o, i, p] + bias[o], then max(., 0) if ``relu``.

    prod: (O, n, P), a chunk's GEMM result (filter-major); bias: (O,), or None
    for a plain copy; out: (n, O, P), the layer's output (image-major).  The
    ReLU is np.maximum(., 0), as ``ops.activation.ReLU`` computes it.  NumPy
    or CuPy arrays (the GPU runs these same lines); returns out."""
    xp = get_array_module(prod)

    def run(i0, i1):
        src, dst = prod[:, i0:i1].transpose(1, 0, 2), out[i0:i1]
        if bias is None:
            dst[...] = src
        else:
            xp.add(src, bias[None, :, None], out=dst)
        if relu:
            xp.maximum(dst, 0, out=dst)

    _over_images(xp, run, out)
    return out


def conv_grad_rows(gy, y, out):
    """out[o, i, p] = gy[i, o, p], times (y[i, o, p] > 0) when ``y`` is given.

    gy: (n, O, P), the gradient of the layer's output; y: that output (n, O, P)
    when a ReLU was applied in ``conv_output`` (its mask, as
    ``ops.activation.ReLU.backward`` computes it), else None; out: (O, n, P),
    the gradient rows the backward GEMMs read.  Returns out."""
    xp = get_array_module(gy)

    def run(i0, i1):
        src, dst = gy[i0:i1].transpose(1, 0, 2), out[:, i0:i1]
        if y is None:
            dst[...] = src
        else:
            xp.multiply(src, y[i0:i1].transpose(1, 0, 2) > 0, out=dst)

    _over_images(xp, run, gy)
    return out


def _over_images(xp, run, images):
    """run(i0, i1) over the images of ``images`` (n, ...): in pieces on the thread pool
    for NumPy arrays; in one call on a GPU, where each NumPy-like call is one kernel."""
    if xp is np:
        parallel_chunks(run, images.shape[0], 2 * _image_bytes(images))
    else:
        run(0, images.shape[0])


# ----------------------------------------------------------------------------
# Winograd's F(2x2, 3x3) and F(4x4, 5x5): the CPU's 3x3 and 5x5, stride-1 convolutions
# ----------------------------------------------------------------------------
#
# Lavin and Gray (2016): a 2x2 block of a 3x3 convolution's outputs needs 36
# multiplications directly, but only 16 after three small linear maps
#
#     y = A^T [ (G g G^T) * (B^T d B) ] A      (* elementwise, every 4x4)
#
# with d the 4x4 input tile under the block, g the 3x3 filter, and
#
#     B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
#           [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
#           [0 -1  1  0]         [1/2 -1/2  1/2]
#           [0  1  0 -1]         [ 0    0    1 ]
#
# Summed over input channels, each of the 16 entries of the elementwise product
# is one matrix product, so a layer is 16 GEMMs of (O, C) @ (C, tiles) instead
# of one of (O, 9C) @ (9C, pixels): 2.25 times fewer multiply-adds, less the
# tiles that stick out past an odd output (13x13 is 7x7 tiles of 2x2).  These
# maps only add, subtract and halve (exact in binary), so they are accurate in
# float32; the results differ from im2col's in the last bits, as any other
# order of summation would.
#
# A 5x5 filter (AlexNet's conv2) takes 4x4 blocks from 8x8 tiles: 64 products
# per 16 outputs instead of 400, 6.25 times fewer.  The maps come from the
# Toom-Cook construction on the points 0, 1, -1, 2, -2, 1/2, -1/2 and infinity
# (Lavin and Gray's; benchmarks/winograd_tiles.py builds them and checks them
# in exact arithmetic): A^T's columns are the points' powers,
#
#     B^T = [4  0 -21   0  21   0 -4  0]   G = [  1/4     0      0     0     0  ]
#           [0  4   4 -17 -17   4  4  0]       [-1/18  -1/18  -1/18 -1/18 -1/18 ]
#           [0  4  -4 -17  17   4 -4  0]       [ 1/18  -1/18   1/18 -1/18  1/18 ]
#           [0  2   1 -10  -5   8  4  0]       [1/360  1/180   1/90  1/45  2/45 ]
#           [0  2  -1 -10   5   8 -4  0]       [-1/360 1/180  -1/90  1/45 -2/45 ]
#           [0  4   8  -5 -10   1  2  0]       [16/45   8/45   4/45  2/45  1/45 ]
#           [0  4  -8  -5  10   1 -2  0]       [-16/45  8/45  -4/45  2/45 -1/45 ]
#           [0 -4   0  21   0 -21  0  4]       [  0      0      0     0    1/4  ]
#
#     A^T = [1  1  1  1  1    1    1    0]
#           [0  1 -1  2 -2  1/2 -1/2    0]
#           [0  1  1  4  4  1/4  1/4    0]
#           [0  1 -1  8 -8  1/8 -1/8    1]
#
# AlexNet's 27x27 output is 7x7 such blocks (the last row and column of blocks
# stick out by one), 3,136 products per channel pair and image where 2x2
# blocks from 6x6 tiles (14x14 of them) took 7,056.  G's eighteenths and
# forty-fifths are not exact in binary, and the larger tile adds larger
# terms: in float32 its results are further from the exact ones than
# im2col's (AlexNet's conv2 in benchmarks/winograd_tiles.py: 5.3e-6 of the
# largest output, against 5e-7 for direct float32 sums and 4.1-4.8e-6 with
# 2x2 blocks; conv3-5's F(2x2, 3x3): 6e-7).
#
# The products' layout, with A the tile's side (4 or 8), m its output block's
# (2 or 4), xi = A*i + j the entry of an AxA tile and t = (image, tile row,
# tile column):
#
#     V (A*A, C, t)   input tiles       B^T d B   (winograd_input)
#     U (A*A, O, C/G) filters           G g G^T   (winograd_weight)
#     M (A*A, O, t)   = U @ V, per entry and group; y = A^T M A (winograd_output)
#
# Backward is the same maps transposed: Z = A gy A^T (winograd_grad_output);
# U's gradient is Z @ V^T and the filter's G^T (Z @ V^T) G
# (winograd_weight_grad); V's is U^T @ Z and the input's B (U^T @ Z) B^T, each
# AxA tile added back onto the pixels it came from (winograd_input_grad).
# Every map is a sum of terms c*v, taken by _combine in the order the matrix
# writes them; the compiled twins (cpu_loops) follow that order to the bit.
# The GPU convolves by im2col (no twins there).

WINOGRAD_MAPS = {  # K -> (B^T, G, A^T), rows as written above
    3: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    5: (((4, 0, -21, 0, 21, 0, -4, 0), (0, 4, 4, -17, -17, 4, 4, 0), (0, 4, -4, -17, 17, 4, -4, 0),
         (0, 2, 1, -10, -5, 8, 4, 0), (0, 2, -1, -10, 5, 8, -4, 0), (0, 4, 8, -5, -10, 1, 2, 0),
         (0, 4, -8, -5, 10, 1, -2, 0), (0, -4, 0, 21, 0, -21, 0, 4)),
        ((1 / 4, 0, 0, 0, 0), (-1 / 18, -1 / 18, -1 / 18, -1 / 18, -1 / 18), (1 / 18, -1 / 18, 1 / 18, -1 / 18, 1 / 18),
         (1 / 360, 1 / 180, 1 / 90, 1 / 45, 2 / 45), (-1 / 360, 1 / 180, -1 / 90, 1 / 45, -2 / 45),
         (16 / 45, 8 / 45, 4 / 45, 2 / 45, 1 / 45), (-16 / 45, 8 / 45, -4 / 45, 2 / 45, -1 / 45), (0, 0, 0, 0, 1 / 4)),
        ((1, 1, 1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0), (0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0),
         (0, 1, -1, 8, -8, 1 / 8, -1 / 8, 1))),
}


def winograd_side(k):
    """A, the side of the input tile of a KxK filter's maps (4 for 3x3, 8 for 5x5)."""
    return len(WINOGRAD_MAPS[k][0])


def winograd_block(k):
    """m, the side of the output block of a KxK filter's maps (2 for 3x3, 4 for 5x5)."""
    return len(WINOGRAD_MAPS[k][2])


def winograd_kernel(entries):
    """The filter size K of a tile matrix with ``entries`` rows per channel (A^2)."""
    for k in WINOGRAD_MAPS:
        if winograd_side(k) ** 2 == entries:
            return k
    raise ValueError(f"winograd: a tile matrix has 16 (3x3) or 64 (5x5) entries per channel, got {entries}")


def _combine(coefs, terms):
    """sum_k coefs[k] * terms[k] over the nonzero coefficients, in the order of k: the first
    term starts the sum; a coefficient 1 or -1 adds or subtracts its term as it is, any
    other multiplies it first (by the coefficient in the terms' dtype)."""
    total = None
    for c, t in zip(coefs, terms):
        if c == 0:
            continue
        if c == 1:
            total = t if total is None else total + t
        elif c == -1:
            total = -t if total is None else total - t
        else:
            term = t * t.dtype.type(c)
            total = term if total is None else total + term
    return total


def _column(matrix, j):
    return [row[j] for row in matrix]


def winograd_tiles(oh, ow, k):
    """Tile rows and columns covering an (oh, ow) output with the mxm blocks of a KxK filter's maps."""
    m = winograd_block(k)
    return (oh + m - 1) // m, (ow + m - 1) // m


def winograd_weight(w):
    """U = G g G^T for every filter: w (O, C/G, K, K) -> (A*A, O, C/G).  The K*K taps
    are first made K*K contiguous rows over all (filter, channel) pairs, so that every
    step below is one pass over a row that stays in the cache."""
    O, Cg, K = w.shape[:3]
    _, G, _ = WINOGRAD_MAPS[K]
    A = winograd_side(K)
    taps = np.ascontiguousarray(w.reshape(O * Cg, K * K).T)  # taps[K*r + s]: tap (r, s) of every pair
    rows = [[_combine(G[i], [taps[K * r + s] for r in range(K)]) for s in range(K)] for i in range(A)]  # G g
    out = np.empty((A * A, O, Cg), w.dtype)
    for i, t in enumerate(rows):  # (G g) G^T, the same sums along the columns
        for j in range(A):
            out[A * i + j] = _combine(G[j], t).reshape(O, Cg)
    return out


def winograd_weight_grad(gu):
    """The filters' gradient from U's: G^T gU G, (A*A, O, C/G) -> (O, C/G, K, K)."""
    K = winograd_kernel(gu.shape[0])
    _, G, _ = WINOGRAD_MAPS[K]
    A = winograd_side(K)
    O, Cg = gu.shape[1:]
    u = gu.reshape(A, A, O * Cg)  # u[i][j]: entry (i, j) of every pair
    rows = [[_combine(_column(G, r), [u[i][j] for i in range(A)]) for j in range(A)] for r in range(K)]  # G^T gU
    taps = np.empty((K * K, O * Cg), gu.dtype)
    for r, t in enumerate(rows):  # (G^T gU) G, the same sums along the columns
        for s in range(K):
            taps[K * r + s] = _combine(_column(G, s), t)
    return np.ascontiguousarray(taps.T).reshape(O, Cg, K, K)


def winograd_input(x, padding, tiles, out):
    """V = B^T d B for every AxA input tile d: x (n, C, H, W) -> out (A*A, C, n*TH*TW).

    Tile (ty, tx) covers input rows m*ty - ph ... m*ty - ph + A - 1 (and the columns
    likewise); what lies outside the image is zero.  Returns out."""
    (ph, pw), (th, tw) = padding, tiles
    C, H, W = x.shape[1:]
    K = winograd_kernel(out.shape[0])
    BT, _, _ = WINOGRAD_MAPS[K]
    A, m = winograd_side(K), winograd_block(K)

    def run(i0, i1):
        xpad = np.zeros((i1 - i0, C, m * th + A - m, m * tw + A - m), x.dtype)  # >= H + 2*ph
        xpad[:, :, ph:ph + H, pw:pw + W] = x[i0:i1]
        d = [[xpad[:, :, r:r + m * th:m, s:s + m * tw:m] for s in range(A)] for r in range(A)]
        rows = [[_combine(BT[i], [d[r][s] for r in range(A)]) for i in range(A)] for s in range(A)]  # B^T d
        dst = out[:, :, i0 * th * tw:i1 * th * tw].reshape(A * A, C, i1 - i0, th, tw)
        for i in range(A):  # (B^T d) B along the columns
            t = [rows[s][i] for s in range(A)]
            for j in range(A):
                dst[A * i + j] = _combine(BT[j], t).transpose(1, 0, 2, 3)

    _over_images(np, run, x)
    return out


def winograd_output(m, bias, relu, tiles, out):
    """y = A^T M A for every tile, plus the bias, then max(., 0) if ``relu``:
    m (A*A, O, n*TH*TW) -> out (n, O, OH, OW), the tiles past OH, OW dropped.
    The bias and ReLU as conv_output adds them.  Returns out."""
    th, tw = tiles
    O, oh, ow = out.shape[1:]
    K = winograd_kernel(m.shape[0])
    _, _, AT = WINOGRAD_MAPS[K]
    A, b = winograd_side(K), winograd_block(K)

    def run(i0, i1):
        k = i1 - i0
        mm = m[:, :, i0 * th * tw:i1 * th * tw].reshape(A, A, O, k, th, tw)
        full = np.empty((k, O, b * th, b * tw), m.dtype)
        rows = [[_combine(AT[a], [mm[i][j] for i in range(A)]) for j in range(A)] for a in range(b)]  # A^T M
        for a, t in enumerate(rows):  # (A^T M) A along the columns
            for c in range(b):
                full[:, :, a::b, c::b] = _combine(AT[c], t).transpose(1, 0, 2, 3)
        dst = out[i0:i1]
        if bias is None:
            dst[...] = full[:, :, :oh, :ow]
        else:
            np.add(full[:, :, :oh, :ow], bias[None, :, None, None], out=dst)
        if relu:
            np.maximum(dst, 0, out=dst)

    _over_images(np, run, out)
    return out


def winograd_grad_output(gy, y, tiles, out):
    """Z = A g A^T for every mxm block g of the output gradient (zero past OH,
    OW), times the ReLU's mask (y > 0) when ``y`` is given (as conv_grad_rows):
    gy (n, O, OH, OW) -> out (A*A, O, n*TH*TW).  Entry (1, 1) of each tile,
    out[A + 1], is the block's sum (A^T's column 1, the point 1, is all ones):
    the bias gradient sums it.  Returns out."""
    th, tw = tiles
    O, oh, ow = gy.shape[1:]
    K = winograd_kernel(out.shape[0])
    _, _, AT = WINOGRAD_MAPS[K]
    A, m = winograd_side(K), winograd_block(K)

    def run(i0, i1):
        k = i1 - i0
        g = np.zeros((k, O, m * th, m * tw), gy.dtype)
        if y is None:
            g[:, :, :oh, :ow] = gy[i0:i1]
        else:
            np.multiply(gy[i0:i1], y[i0:i1] > 0, out=g[:, :, :oh, :ow])
        b = [[g[:, :, i::m, j::m] for j in range(m)] for i in range(m)]  # b[i][j]: (k, O, TH, TW)
        rows = [[_combine(_column(AT, i), [b[a][j] for a in range(m)]) for i in range(A)] for j in range(m)]  # A g
        dst = out[:, :, i0 * th * tw:i1 * th * tw].reshape(A * A, O, k, th, tw)
        for i in range(A):  # (A g) A^T along the columns
            t = [rows[c][i] for c in range(m)]
            for j in range(A):
                dst[A * i + j] = _combine(_column(AT, j), t).transpose(1, 0, 2, 3)

    _over_images(np, run, gy)
    return out


def winograd_input_grad(gv, padding, tiles, out):
    """The input's gradient from V's: B gV B^T for every tile, each AxA added
    back onto the pixels the tile was read from (in the order of its entries,
    (0, 0), (0, 1), ... (A-1, A-1); the padding's share dropped):
    gv (A*A, C, n*TH*TW) -> out (n, C, H, W).  Returns out."""
    (ph, pw), (th, tw) = padding, tiles
    C, H, W = out.shape[1:]
    K = winograd_kernel(gv.shape[0])
    BT, _, _ = WINOGRAD_MAPS[K]
    A, m = winograd_side(K), winograd_block(K)

    def run(i0, i1):
        k = i1 - i0
        v = gv[:, :, i0 * th * tw:i1 * th * tw].reshape(A, A, C, k, th, tw)
        rows = [[_combine(_column(BT, r), [v[i][j] for i in range(A)]) for r in range(A)] for j in range(A)]  # B gV
        gpad = np.zeros((k, C, m * th + A - m, m * tw + A - m), gv.dtype)
        for r in range(A):  # (B gV) B^T along the columns, added at the tile's place
            t = [rows[j][r] for j in range(A)]
            for s in range(A):
                gpad[:, :, r:r + m * th:m, s:s + m * tw:m] += _combine(_column(BT, s), t).transpose(1, 0, 2, 3)
        out[i0:i1] = gpad[:, :, ph:ph + H, pw:pw + W]

    _over_images(np, run, out)
    return out


# ----------------------------------------------------------------------------
# The SGD update of one parameter
# ----------------------------------------------------------------------------


def sgd_update(w, g, v, lr, m, wd):
    """In place, the paper's rule: v = m*v - wd*lr*w - lr*g; w += v.

    w, g, v: flat C-contiguous arrays of one length (a big layer: fc6 has 38M
    weights).  The four passes run on pieces of 1 MB, so that each piece
    stays in the cache from the first pass to the last, and the pieces are
    shared out among the threads; the arithmetic is the same as one whole
    pass (optim._update)."""
    from ..optim import _update

    def update(i0, i1):
        _update(w[i0:i1], g[i0:i1], v[i0:i1], lr, m, wd)

    parallel_chunks(update, w.size, w.itemsize * 3, target_bytes=1 << 20)


# ----------------------------------------------------------------------------
# A matrix times a vector: a fully connected layer at batch 1
# ----------------------------------------------------------------------------

MATVEC_SUMS = 128  # bytes of partial sums per row: 32 float32, 16 float64 (a compiled loop's lanes)


def outer_sum(gy, x):
    """gy.T @ x for gy (N, O) and x (N, I), as the sum of N outer products it is: a fully
    connected layer's weight gradient at a small batch, gw[o, i] = sum_n gy[n, o] * x[n, i].

    The sum runs in the compiled loop's order (kernels/cpu_loops.cpp): the first product
    itself, then each next one added, n = 0, 1, ..., N-1; every product and sum rounded once,
    as NumPy rounds it.  The result differs from np.matmul's (OpenBLAS's order) by rounding
    only.  Blocks of rows, about 1 MB of gw each, are shared out between the threads; each
    block stays in the cache through its N products."""
    _check_outer_sum(gy, x)
    dtype = np.result_type(gy, x)
    N, O = gy.shape
    I = x.shape[1]
    gw = np.empty((O, I), dtype)

    def rows(o0, o1):
        block, product = gw[o0:o1], np.empty((o1 - o0, I), dtype)
        if N == 0:
            block[...] = 0  # the sum of no products
            return
        np.multiply(gy[0, o0:o1, None], x[0], out=block)
        for n in range(1, N):
            np.multiply(gy[n, o0:o1, None], x[n], out=product)
            block += product

    parallel_chunks(rows, O, I * dtype.itemsize, target_bytes=1 << 20)
    return gw


def outer_sum_sgd(gy, x, w, v, lr, m, wd):
    """The paper's update of a fully connected layer's weights w (O, I) and momentum v, in
    place, with the weight gradient gy.T @ x (``outer_sum``) that comes out of backward:
    v = m*v - wd*lr*w - lr*g; w += v.  Here the two steps as they are (outer_sum, then
    sgd_update over the flat arrays); the compiled loop does both in one pass and never
    stores g, with the same bits.  w and v: C-contiguous."""
    _check_outer_sum(gy, x)
    _check_step_arrays(gy, x, w, v)
    g = outer_sum(gy, x)
    sgd_update(w.reshape(-1), g.reshape(-1), v.reshape(-1), lr, m, wd)


def _check_step_arrays(gy, x, w, v):
    O, I = gy.shape[1], x.shape[1]
    if w.shape != (O, I) or v.shape != w.shape:
        raise ValueError(f"outer_sum_sgd: expected w and v of shape (O, I) with O = gy.shape[1] = {O} and "
                         f"I = x.shape[1] = {I}, got w {w.shape} and v {v.shape}")
    if not (w.flags.c_contiguous and v.flags.c_contiguous):
        raise ValueError("outer_sum_sgd: w and v must be C-contiguous (they are updated in place)")


def _check_outer_sum(gy, x):
    if gy.ndim != 2 or x.ndim != 2 or gy.shape[0] != x.shape[0]:
        raise ValueError(f"outer_sum: expected gy (N, O) and x (N, I) with the same N, got {gy.shape} and {x.shape}")


def matvec(w, x):
    """y = w @ x for w (O, I) and x (I,): a fully connected layer's forward at batch 1, where
    every weight is read once and the time is that of reading them.  For a few vectors x (N,
    I), y (N, O) holds the N products, each as for one vector (the compiled loop reads each
    block of w's rows from memory once for all N).

    Each row's sum runs in a fixed order, the compiled loop's (kernels/cpu_loops.cpp), so
    that the two give the same bits.  S = MATVEC_SUMS / itemsize partial sums, sum s taking
    the products s, s + S, s + 2S, ... of the first I - I % S in order (``np.add.reduce``
    over an axis that is not the fastest in memory adds its terms one by one, in order:
    NumPy's documented behaviour, and the test against the compiled loop checks it); the S
    sums then added in halves, s + (s + S/2), down to one; then the last I % S products one
    by one.  With I < S, the products one by one from the first.  Every product and sum is
    rounded once, as NumPy rounds it: the result differs from np.matmul's (OpenBLAS's order)
    by rounding only.  Blocks of rows, about 1 MB of products each, are shared out between
    the threads."""
    if x.ndim == 2:
        y = np.empty((len(x), w.shape[0]), np.result_type(w, x))
        for n, vector in enumerate(x):
            y[n] = matvec(w, vector)
        return y
    dtype = np.result_type(w, x)
    O, I = w.shape
    S = MATVEC_SUMS // dtype.itemsize
    n = I // S * S
    y = np.empty(O, dtype)

    def rows(o0, o1):
        block = w[o0:o1]
        if n > 0:
            products = block[:, :n].reshape(o1 - o0, n // S, S) * x[:n].reshape(n // S, S)
            # (rows, S), each over its products in order; from -0.0, which adding leaves every
            # value as it is, so that each sum starts from its first product, as the loop's do (the
            # default start, +0.0, would turn a sum of -0.0 products into +0.0)
            sums = np.add.reduce(products, axis=1, initial=-0.0)
            while sums.shape[1] > 1:
                half = sums.shape[1] // 2
                sums = sums[:, :half] + sums[:, half:]
            part, start = sums[:, 0], n
        elif I > 0:
            part, start = block[:, 0] * x[0], 1
        else:
            part, start = np.zeros(o1 - o0, dtype), 0
        for i in range(start, I):
            part = part + block[:, i] * x[i]
        y[o0:o1] = part

    parallel_chunks(rows, O, I * dtype.itemsize, target_bytes=1 << 20)
    return y


# ----------------------------------------------------------------------------
# Memory: reuse freed pages instead of asking the kernel for fresh ones
# ----------------------------------------------------------------------------


def reuse_freed_memory():
    """Tell glibc's malloc to keep freed memory for reuse (Linux only).

    By default glibc hands every block over 32 MB straight back to the
    kernel when it is freed, and takes fresh pages for the next one: each
    new page costs a page fault and the kernel zeroing it.  A training step
    at batch 128 frees and reallocates gigabytes of activations, and those
    faults cost about a third of the step on a 2-core machine.  With
    mmap-backed blocks switched off (M_MMAP_MAX = 0) and a high trim
    threshold, freed memory stays in the process and is reused.  The
    process's peak memory is unchanged; it just is not returned until exit.

    Process-wide, so the training program and benchmarks call it and the
    library never does by itself.  Returns True if glibc accepted it.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl...): nothing to do
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
