"""The CUDA kernels of kernels/*.cu, run on the CPU, against their NumPy twins.

tinynet.cuda.emulate compiles the .cu files with the host C++ compiler and runs a grid as a
loop over blocks and threads.  Each kernel here is compared with its twin in
tinynet/ops/cpu_kernels.py over hypothesis-drawn geometry, and every launch is checked for:

* grid-stride loops: grids smaller than the work (1 block, a third of the blocks needed),
  larger than it (idle threads), odd block sizes;
* thread order: each case runs twice, in the drawn order (forward, reversed or shuffled) and
  with the GPU module's own launch shape in reverse order; the outputs must be bit-identical;
* guard zones: every buffer is the middle of a longer allocation.  Input guards hold NaN, so
  an out-of-bounds read that reaches the output turns it NaN where NaN is not expected; output
  guards hold a canary; after the launch every guard (and every input) must be bit-identical:
  an out-of-bounds or stray write fails;
* unwritten elements: outputs start as the canary 1e30 (int32 outputs: the most negative int),
  so an element no thread writes fails;
* float32 and float64, and NaN inputs (NaN must propagate exactly as in NumPy).

A read outside a buffer that never reaches the output (max-pool backward only compares argmax
with its pixel's index) is invisible to guards; ``test_no_out_of_bounds_access_under_address_sanitizer`` catches
those: it runs the kernels on exact-size buffers in a process with AddressSanitizer, which
traps any access past a buffer's end or before its start.
"""

import os

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from conftest import run_under_asan
from tinynet.cuda import emulate
from tinynet.ops import cpu_kernels

CXX = emulate.compiler()
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++, c++, clang++ or $CXX): "
                                "the CUDA kernels cannot be run on the CPU here")

GUARD = 16          # guard elements before and after every buffer
CANARY = 1.0e30     # outputs and their guards start as this; no kernel output comes near it
DTYPES = [np.float32, np.float64]
EXAMPLES = 250      # per kernel pair: a launch costs well under a millisecond


@pytest.fixture(scope="module", autouse=True)
def built_library():
    emulate.library()  # build (or find in the cache) once, outside the per-example timing


# ----------------------------------------------------------------------------
# Guarded buffers and launches
# ----------------------------------------------------------------------------

def bits(a):
    """The raw bits of an array: compares NaN and -0.0 exactly."""
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def guard_value(dtype, is_input):
    """Guards of inputs: NaN (an index far outside any plane for int32); of outputs: the canary
    (the most negative int32: no kernel writes an index below 0)."""
    if np.dtype(dtype).kind == "f":
        return np.nan if is_input else CANARY
    return 2**30 if is_input else np.iinfo(np.int32).min


class Buffer:
    """``array`` is the middle of ``whole``, with GUARD elements on each side.
    Inputs: guards NaN (int32: 2**30).  Outputs: array and guards all CANARY (int32: its most
    negative value); see guard_value."""

    def __init__(self, shape, dtype, data=None):
        n = int(np.prod(shape))
        self.whole = np.full(GUARD + n + GUARD, guard_value(dtype, data is not None), dtype)
        self.array = self.whole[GUARD:GUARD + n].reshape(shape)
        if data is not None:
            self.array[...] = data
        self.is_input = data is not None
        self.before = self.whole.copy()

    def check(self, name):
        same = bits(self.whole) == bits(self.before)
        assert same[:GUARD].all(), f"{name}: a write before the buffer's start"
        assert same[GUARD + self.array.size:].all(), f"{name}: a write past the buffer's end"
        if self.is_input:
            assert same.all(), f"{name}: a kernel wrote into an input"


def run(kernel, dtype, inputs, outputs, scalars, grid, block, order="forward", seed=0):
    """Launch ``kernel`` on guarded copies of ``inputs`` (arrays: int32 ones stay int32, the rest
    become ``dtype``) and fresh guarded ``outputs`` (shapes of ``dtype``, or (shape, np.int32));
    check every guard; return the outputs' arrays."""
    ins = [Buffer(a.shape, a.dtype if a.dtype == np.int32 else dtype, a) for a in inputs]
    outs = [Buffer(*out) if out[-1] is np.int32 else Buffer(out, dtype) for out in outputs]
    ctype = "float" if dtype == np.float32 else "double"
    emulate.launch(f"{kernel}<{ctype}>", [b.array for b in ins + outs] + list(scalars),
                   grid, block, order, seed)
    for i, b in enumerate(ins + outs):
        b.check(f"{kernel} buffer {i}")
    return [b.array.copy() for b in outs]


@st.composite
def launch_shape(draw, total):
    """(grid, block, order, seed): grids smaller than the work, exactly enough, or more."""
    block = draw(st.sampled_from([1, 3, 32, 96]))
    need = -(-total // block)
    grid = draw(st.sampled_from(sorted({1, max(1, need // 3), need, need + 2})))
    return grid, block, draw(st.sampled_from(["forward", "reversed", "shuffled"])), draw(st.integers(0, 999))


def run_both_ways(data, kernel, dtype, inputs, outputs, scalars, total):
    """The drawn launch, then the GPU module's launch (256-thread blocks) in reverse order:
    each thread computes its elements alone, so the two must agree bit for bit."""
    grid, block, order, seed = data.draw(launch_shape(total), label="launch")
    first = run(kernel, dtype, inputs, outputs, scalars, grid, block, order, seed)
    second = run(kernel, dtype, inputs, outputs, scalars, -(-total // emulate.THREADS), emulate.THREADS,
                 "reversed")
    for a, b in zip(first, second):
        assert np.array_equal(bits(a), bits(b)), "result depends on the launch"
    return first


def values(shape, dtype, seed, nans=0, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, shape) if ties else rng.standard_normal(shape)
    x = x.astype(dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, min(nans, flat.size), replace=False)] = np.nan
    return x


def assert_close(actual, expected, dtype, rtol32=1e-5, rtol64=1e-12):
    """Sums taken in another order differ by a few units in the last place of the largest
    term; scale the absolute tolerance by the result's size.  NaN must sit in the same places."""
    rtol = rtol32 if dtype == np.float32 else rtol64
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def i64(*v):
    return [np.int64(a) for a in v]


def i32(*v):
    return [np.int32(a) for a in v]


# ----------------------------------------------------------------------------
# The kernels against their NumPy twins
# ----------------------------------------------------------------------------

@st.composite
def conv_geometry(draw):
    g = dict(N=draw(st.integers(1, 3)), C=draw(st.integers(1, 4)), H=draw(st.integers(1, 11)),
             W=draw(st.integers(1, 11)), kh=draw(st.integers(1, 5)), kw=draw(st.integers(1, 5)),
             sh=draw(st.integers(1, 3)), sw=draw(st.integers(1, 3)), ph=draw(st.integers(0, 2)),
             pw=draw(st.integers(0, 2)))
    assume(g["H"] + 2 * g["ph"] >= g["kh"] and g["W"] + 2 * g["pw"] >= g["kw"])
    g["OH"] = (g["H"] + 2 * g["ph"] - g["kh"]) // g["sh"] + 1
    g["OW"] = (g["W"] + 2 * g["pw"] - g["kw"]) // g["sw"] + 1
    return g


def conv_scalars(g):
    return (i64(g["N"], g["C"], g["H"], g["W"]) + i32(g["kh"], g["kw"], g["sh"], g["sw"], g["ph"], g["pw"])
            + i64(g["OH"], g["OW"]))


@settings(max_examples=EXAMPLES)
@given(g=conv_geometry(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999),
       nans=st.sampled_from([0, 0, 2]), data=st.data())
def test_im2col_and_col2im_match_numpy(g, dtype, seed, nans, data):
    x = values((g["N"], g["C"], g["H"], g["W"]), dtype, seed, nans)
    rows, ncols = g["C"] * g["kh"] * g["kw"], g["N"] * g["OH"] * g["OW"]
    (cols,) = run_both_ways(data, "im2col_kernel", dtype, [x], [(rows, ncols)], conv_scalars(g), rows * ncols)
    expected = cpu_kernels.im2col(x, g["kh"], g["kw"], (g["sh"], g["sw"]), (g["ph"], g["pw"]))
    np.testing.assert_array_equal(cols, expected)  # a copy: exact, NaN in the same places

    grad_cols = values((rows, ncols), dtype, seed + 1, nans)
    (gx,) = run_both_ways(data, "col2im_kernel", dtype, [grad_cols], [x.shape], conv_scalars(g), x.size)
    expected = cpu_kernels.col2im(grad_cols, x.shape, g["kh"], g["kw"], (g["sh"], g["sw"]), (g["ph"], g["pw"]))
    assert_close(gx, expected, dtype)


@st.composite
def pool_geometry(draw):
    g = dict(N=draw(st.integers(1, 2)), C=draw(st.integers(1, 3)), kh=draw(st.integers(1, 4)),
             kw=draw(st.integers(1, 4)), sh=draw(st.integers(1, 3)), sw=draw(st.integers(1, 3)))
    g["p"] = draw(st.integers(0, min(1, g["kh"] - 1, g["kw"] - 1)))  # p < kernel: no all-padding window
    g["H"] = draw(st.integers(max(1, g["kh"] - 2 * g["p"]), 11))
    g["W"] = draw(st.integers(max(1, g["kw"] - 2 * g["p"]), 11))
    return g


@settings(max_examples=EXAMPLES)
@given(g=pool_geometry(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999),
       nans=st.sampled_from([0, 0, 1, 3]), ties=st.booleans(), data=st.data())
def test_maxpool_forward_and_backward_match_numpy(g, dtype, seed, nans, ties, data):
    x = values((g["N"], g["C"], g["H"], g["W"]), dtype, seed, nans, ties)
    x[(x == 0) & (np.random.default_rng(seed).random(x.shape) < 0.5)] = -0.0  # -0.0 ties +0.0
    p = g["p"]
    if p:  # as MaxPool2d pads: with -inf, which never wins
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    N, C, H, W = x.shape
    OH, OW = (H - g["kh"]) // g["sh"] + 1, (W - g["kw"]) // g["sw"] + 1
    scalars = i64(N, C, H, W) + i32(g["kh"], g["kw"], g["sh"], g["sw"]) + i64(OH, OW)
    y, argmax = run_both_ways(data, "maxpool_forward_kernel", dtype, [x], [(N, C, OH, OW), ((N, C, OH, OW), np.int32)],
                              scalars, N * C * OH * OW)
    expected, expected_argmax = cpu_kernels.maxpool_forward(x, g["kh"], g["kw"], g["sh"], g["sw"], OH, OW)
    np.testing.assert_array_equal(y, expected)  # NaN wins its window in both
    number = ~np.isnan(y)  # and a zero maximum is the window's first zero, with its sign
    assert np.array_equal(np.signbit(y[number]), np.signbit(expected[number]))
    np.testing.assert_array_equal(argmax, expected_argmax)  # the first maximum, or the first NaN

    gy = values(y.shape, dtype, seed + 1)
    (gx,) = run_both_ways(data, "maxpool_backward_kernel", dtype, [argmax, gy], [x.shape], scalars, x.size)
    # each pixel gathers its windows' terms in their row-major order: the order in which the
    # CPU's scatter adds them, so the same bits
    expected = cpu_kernels.maxpool_backward(argmax, gy, x.shape, g["kh"], g["kw"], g["sh"], g["sw"])
    assert np.array_equal(bits(gx), bits(expected))


@st.composite
def lrn_case(draw):
    return dict(N=draw(st.integers(1, 2)), C=draw(st.integers(1, 9)), H=draw(st.integers(1, 5)),
                W=draw(st.integers(1, 5)), size=draw(st.integers(1, 7)),
                alpha=draw(st.sampled_from([1e-4, 0.5, 1.0, 2.0])),
                beta=draw(st.sampled_from([0.75, 0.5, 1.0, 0.6])), k=draw(st.sampled_from([2.0, 1.0, 0.5])))


@settings(max_examples=EXAMPLES)
@given(c=lrn_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999),
       nans=st.sampled_from([0, 0, 1]), data=st.data())
def test_lrn_forward_and_backward_match_numpy(c, dtype, seed, nans, data):
    x = values((c["N"], c["C"], c["H"], c["W"]), dtype, seed, nans)
    t = np.dtype(dtype).type
    window = i32(c["size"] // 2, (c["size"] - 1) // 2)
    shape = i64(c["N"], c["C"], c["H"] * c["W"])
    (y,) = run_both_ways(data, "lrn_forward_kernel", dtype, [x], [x.shape],
                         shape + window + [t(c["alpha"]), t(c["beta"]), t(c["k"])], x.size)
    y_np = cpu_kernels.lrn_forward(x, c["size"], c["alpha"], c["beta"], c["k"])
    assert_close(y, y_np, dtype)  # pow on the GPU, square roots on the CPU for beta = 0.75

    gy = values(x.shape, dtype, seed + 1)
    (gx,) = run_both_ways(data, "lrn_backward_kernel", dtype, [x, gy], [x.shape],
                          shape + window + [t(c["alpha"]), t(c["beta"]), t(c["k"])], x.size)
    expected = cpu_kernels.lrn_backward(x, gy, c["size"], c["alpha"], c["beta"], c["k"])
    # two terms of similar size are subtracted: float32 keeps ~1e-5 of the larger one
    assert_close(gx, expected, dtype, rtol32=4e-5)


# ----------------------------------------------------------------------------
# The launcher itself
# ----------------------------------------------------------------------------

def test_one_thread_of_a_grid_stride_loop_writes_every_stride_th_element():
    # im2col with a 1x1 kernel copies x: 20 elements, grid of 2 blocks x 3 threads = 6 threads
    x = np.arange(20, dtype=np.float64).reshape(1, 1, 4, 5)
    scalars = i64(1, 1, 4, 5) + i32(1, 1, 1, 1, 0, 0) + i64(4, 5)
    for thread in range(6):  # thread t = block t // 3, threadIdx t % 3
        (cols,) = run("im2col_kernel", np.float64, [x], [(1, 20)], scalars, 2, 3, order=[thread])
        written = np.flatnonzero(cols[0] != CANARY)
        assert written.tolist() == list(range(thread, 20, 6))
        assert np.array_equal(cols[0, written], written)


def test_thread_numbers_follow_cuda_numbering_in_three_dimensions():
    grid, block = (2, 3, 2), (4, 2, 3)
    seen = set()
    for t in range(12 * 24):
        (bx, by, bz), (tx, ty, tz) = emulate.thread_position(grid, block, t)
        assert bx < 2 and by < 3 and bz < 2 and tx < 4 and ty < 2 and tz < 3
        block_number = (bz * 3 + by) * 2 + bx          # x fastest, then y, then z
        assert t == block_number * 24 + (tz * 2 + ty) * 4 + tx
        seen.add((bx, by, bz, tx, ty, tz))
    assert len(seen) == 12 * 24
    with pytest.raises(ValueError, match="not in a grid"):
        emulate.thread_position(grid, block, 12 * 24)


def test_thread_orders():
    assert emulate.thread_order("forward", 5) is None
    assert emulate.thread_order("reversed", 4).tolist() == [3, 2, 1, 0]
    shuffled = emulate.thread_order("shuffled", 50, seed=1)
    assert sorted(shuffled.tolist()) == list(range(50)) and shuffled.tolist() != list(range(50))
    assert np.array_equal(shuffled, emulate.thread_order("shuffled", 50, seed=1))
    with pytest.raises(ValueError, match=r"thread numbers must lie in \[0, 6\)"):
        emulate.thread_order([0, 6], 6)
    with pytest.raises(ValueError, match="order must be"):
        emulate.thread_order("backwards", 6)


def test_launch_refuses_what_the_kernel_does_not_take():
    x, out = np.zeros((1, 1, 2, 2)), np.zeros((1, 4))
    good = [x, out] + i64(1, 1, 2, 2) + i32(1, 1, 1, 1, 0, 0) + i64(2, 2)
    emulate.launch("im2col_kernel<double>", good, 1, 4)
    with pytest.raises(ValueError, match="no kernel named"):
        emulate.launch("im2col_kernel<half>", good, 1, 4)
    with pytest.raises(ValueError, match="takes 14 arguments, got 13"):
        emulate.launch("im2col_kernel<double>", good[:-1], 1, 4)
    with pytest.raises(TypeError, match="argument 2 must be int64, got int32"):
        emulate.launch("im2col_kernel<double>", [x, out] + i32(1) + good[3:], 1, 4)
    with pytest.raises(TypeError, match="argument 0 must be a C-contiguous NumPy array"):
        emulate.launch("im2col_kernel<double>", [x.transpose(0, 1, 3, 2)] + good[1:], 1, 4)
    with pytest.raises(ValueError, match="grid must be 1 to 3 positive ints"):
        emulate.launch("im2col_kernel<double>", good, 0, 4)


def test_buffers_of_another_dtype_or_layout_are_written_as_numpy_writes_them():
    """A kernel takes raw pointers: an `out` of another dtype, or strided, or a gradient of
    another dtype, goes through a buffer the kernel can write (the launch code's job), so the
    results are the NumPy twins' and not the bytes reinterpreted."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    ref = cpu_kernels.im2col(x, 2, 2, (1, 1), (0, 0))
    out64 = np.zeros(ref.shape, np.float64)
    np.testing.assert_array_equal(emulate.im2col(x, 2, 2, (1, 1), (0, 0), out=out64), ref)
    strided = np.zeros((ref.shape[0], 2 * ref.shape[1]), np.float32)[:, ::2]
    emulate.im2col(x, 2, 2, (1, 1), (0, 0), out=strided)
    np.testing.assert_array_equal(strided, ref)
    gx64 = np.zeros(x.shape, np.float64)
    emulate.col2im(ref, x.shape, 2, 2, (1, 1), (0, 0), out=gx64)
    np.testing.assert_array_equal(gx64, cpu_kernels.col2im(ref, x.shape, 2, 2, (1, 1), (0, 0)))
    with pytest.raises(ValueError, match=r"im2col: out must have shape \(8, 9\)"):
        emulate.im2col(x, 2, 2, (1, 1), (0, 0), out=np.zeros((8, 8), np.float32))
    x4 = rng.standard_normal((1, 5, 2, 2)).astype(np.float32)
    gy = rng.standard_normal(x4.shape)  # float64
    np.testing.assert_allclose(emulate.lrn_backward(x4, gy, 5, 1e-4, 0.75, 2.0),
                               cpu_kernels.lrn_backward(x4, gy.astype(np.float32), 5, 1e-4, 0.75, 2.0),
                               rtol=1e-6)


def test_library_is_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    import shutil

    from tinynet.cuda import kernels

    copy = tmp_path / "kernels"
    shutil.copytree(os.path.dirname(kernels.kernel_path("im2col.cu")), copy)
    monkeypatch.setattr(emulate, "kernel_path", lambda name: str(copy / name))
    flags = ["-O2"]
    first = emulate.build_folder(CXX, flags)
    assert emulate.build_folder(CXX, flags) == first and emulate.build_folder(CXX, ["-O0"]) != first
    with open(copy / "maxpool.cu", "a") as f:
        f.write("// one more line\n")
    assert emulate.build_folder(CXX, flags) != first


def test_emulated_module_has_the_gpu_module_functions_and_agrees_with_numpy():
    import inspect

    from tinynet.cuda import kernels

    for name in ("im2col", "col2im", "maxpool_forward", "maxpool_backward", "lrn_forward", "lrn_backward"):
        assert inspect.signature(getattr(emulate, name)) == inspect.signature(getattr(kernels, name)), name
        # one host code for both: the argument lists tested here are the ones a GPU gets
        assert getattr(emulate, name).__func__ is getattr(kernels, name).__func__, name
    # AlexNet's pool1 and LRN geometry, launched as the GPU module launches them
    x = values((2, 96, 55, 55), np.float32, 0)
    y, argmax = emulate.maxpool_forward(x, 3, 3, 2, 2, 27, 27)
    y_np, argmax_np = cpu_kernels.maxpool_forward(x, 3, 3, 2, 2, 27, 27)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(argmax, argmax_np)
    # asked for the maxima alone (no backward will run), the host code drops the argmax
    values_only, no_argmax = emulate.maxpool_forward(x, 3, 3, 2, 2, 27, 27, with_argmax=False)
    assert no_argmax is None and np.array_equal(bits(values_only), bits(y_np))
    gy = values(y.shape, np.float32, 1)
    assert np.array_equal(bits(emulate.maxpool_backward(argmax, gy, x.shape, 3, 3, 2, 2)),
                          bits(cpu_kernels.maxpool_backward(argmax, gy, x.shape, 3, 3, 2, 2)))
    xl, gl = x[:, :48, :13, :13], values((2, 48, 13, 13), np.float32, 2)
    assert_close(emulate.lrn_forward(xl, 5, 1e-4, 0.75, 2.0), cpu_kernels.lrn_forward(xl, 5, 1e-4, 0.75, 2.0),
                 np.float32)
    assert_close(emulate.lrn_backward(xl, gl, 5, 1e-4, 0.75, 2.0),
                 cpu_kernels.lrn_backward(xl, gl, 5, 1e-4, 0.75, 2.0), np.float32, rtol32=4e-5)


# ----------------------------------------------------------------------------
# Every access in bounds, under AddressSanitizer
# ----------------------------------------------------------------------------

def run_exact_size_cases(cases=40):
    """Every kernel on random geometry, on buffers of exactly their size (no guards), under
    three launches.  Run in a process with AddressSanitizer preloaded, every heap buffer has
    poisoned memory right before and after it: one element out of bounds aborts with a report."""
    rng = np.random.default_rng(0)
    launches = [(1, 1, "forward"), (2, 3, "shuffled"), (None, 32, "reversed")]
    count = 0
    for case in range(cases):
        dtype = DTYPES[case % 2]
        ctype = "float" if dtype == np.float32 else "double"
        N, C, H, W = (int(v) for v in rng.integers(1, [3, 5, 10, 10], endpoint=True))
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, [min(H, 5), min(W, 5), 3, 3], endpoint=True))
        ph, pw = int(rng.integers(0, 2, endpoint=True)), int(rng.integers(0, 2, endpoint=True))
        OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        PH, PW = (H - kh) // sh + 1, (W - kw) // sw + 1  # pooling: no padding in the kernel
        size = int(rng.integers(1, 7, endpoint=True))
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        t = np.dtype(dtype).type
        conv = i64(N, C, H, W) + i32(kh, kw, sh, sw, ph, pw) + i64(OH, OW)
        pool = i64(N, C, H, W) + i32(kh, kw, sh, sw) + i64(PH, PW)
        lrn = i64(N, C, H * W) + i32(size // 2, (size - 1) // 2)
        cols = np.empty((C * kh * kw, N * OH * OW), dtype)
        y, argmax = cpu_kernels.maxpool_forward(x, kh, kw, sh, sw, PH, PW)
        calls = [("im2col_kernel", [x, cols] + conv, cols.size),
                 ("col2im_kernel", [cols, np.empty_like(x)] + conv, x.size),
                 ("maxpool_forward_kernel", [x, np.empty_like(y), np.empty_like(argmax)] + pool, y.size),
                 ("maxpool_backward_kernel", [argmax, np.ones_like(y), np.empty_like(x)] + pool, x.size),
                 ("lrn_forward_kernel", [x, np.empty_like(x)] + lrn + [t(1), t(0.75), t(2)], x.size),
                 ("lrn_backward_kernel", [x, np.ones_like(x), np.empty_like(x)] + lrn + [t(1), t(0.75), t(2)],
                  x.size)]
        for name, args, total in calls:
            for grid, block, order in launches:
                grid = grid or -(-total // block)
                emulate.launch(f"{name}<{ctype}>", args, grid, block, order, seed=case, sanitize="address")
                count += 1
    print(f"{count} launches, every access in bounds")


def test_no_out_of_bounds_access_under_address_sanitizer():
    run_under_asan(__file__, CXX)


if __name__ == "__main__":  # the process the sanitizer test starts
    run_exact_size_cases()
