"""The compiled CPU loops (kernels/cpu_loops.cpp) against the NumPy ones (ops/cpu_kernels.py):
the same bits for every shape, stride, padding and dtype hypothesis draws, ties and NaN
included; and the setting that chooses between them, with its fallback said out loud."""

import os
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinynet.cbuild import compiler, compiler_identity
from tinynet.ops import cpu_kernels, cpu_loops
from tinynet.ops.pool import max_pool2d_backward_naive, max_pool2d_naive

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler: the compiled loops cannot be built")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def same_bits_but_nan(a, b):
    """Same bits, except that where both are NaN their signs and payloads may differ: which
    NaN a sum of NaN operands gives depends on their order, and the compiler may swap a sum's
    operands (the Winograd transforms' sums of several terms)."""
    a, b = np.asarray(a), np.asarray(b)
    both_nan = np.isnan(a) & np.isnan(b)
    return same_bits(np.where(both_nan, 0, a).astype(a.dtype), np.where(both_nan, 0, b).astype(b.dtype))


@st.composite
def conv_geometry(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 12))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 4)), h=h, w=w, kh=kh, kw=kw,
                stride=(sh, sw), padding=(ph, pw))


DTYPES = st.sampled_from([np.float32, np.float64])


@given(conv_geometry(), DTYPES, st.integers(0, 2**31))
def test_im2col_and_col2im_give_the_numpy_bits(g, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"])).astype(dtype)
    args = (g["kh"], g["kw"], g["stride"], g["padding"])
    cols = cpu_kernels.im2col(x, *args)
    assert same_bits(cpu_loops.im2col(x, *args), cols)
    # col2im of arbitrary columns (not only ones im2col made): every overlap sums
    cols = rng.standard_normal(cols.shape).astype(dtype)
    assert same_bits(cpu_loops.col2im(cols, x.shape, *args), cpu_kernels.col2im(cols, x.shape, *args))


@given(conv_geometry(), DTYPES)
def test_im2col_and_col2im_fill_the_buffers_they_are_given(g, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"])).astype(dtype)
    args = (g["kh"], g["kw"], g["stride"], g["padding"])
    cols = cpu_kernels.im2col(x, *args)
    out = np.full_like(cols, np.nan)
    assert cpu_loops.im2col(x, *args, out=out) is out and same_bits(out, cols)
    gx = np.full_like(x, np.nan)
    assert cpu_loops.col2im(cols, x.shape, *args, out=gx) is gx
    assert same_bits(gx, cpu_kernels.col2im(cols, x.shape, *args))


@given(conv_geometry(), DTYPES, st.integers(0, 15), st.sampled_from([1, 2, 3]))
def test_im2col_stored_past_the_cache_gives_the_numpy_bits(g, dtype, offset, threads):
    # columns over IM2COL_STREAM_BYTES go past the cache in whole lines, the part lines at each
    # image's run's ends as usual: with the threshold at 0 every call streams, into a buffer
    # starting anywhere in a cache line (offset elements past one's start), the rest of the
    # buffer untouched, with one to three threads (each a run of the images)
    rng = np.random.default_rng(offset)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"])).astype(dtype)
    args = (g["kh"], g["kw"], g["stride"], g["padding"])
    cols = cpu_kernels.im2col(x, *args)
    lines = np.full(cols.size + 64, np.nan, dtype)
    start = (-lines.ctypes.data % 64) // lines.itemsize + offset % (64 // lines.itemsize)
    out = lines[start:start + cols.size].reshape(cols.shape)
    old_threads, old_bytes = cpu_kernels.get_num_threads(), cpu_loops.IM2COL_STREAM_BYTES
    cpu_kernels.set_num_threads(threads)
    cpu_loops.IM2COL_STREAM_BYTES = 0
    try:
        assert cpu_loops.im2col(x, *args, out=out) is out
        own = cpu_loops.im2col(x, *args)  # into an array of its own
    finally:
        cpu_kernels.set_num_threads(old_threads)
        cpu_loops.IM2COL_STREAM_BYTES = old_bytes
    assert same_bits(out, cols) and same_bits(own, cols)
    assert np.isnan(lines[:start]).all() and np.isnan(lines[start + cols.size:]).all()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n, hw, dtype", [(5, 160, np.float32), (3, 190, np.float64), (4, 260, np.float32)])
def test_im2col_of_large_images_in_blocks_and_runs_per_thread_gives_the_numpy_bits(threads, n, hw, dtype):
    # the compiled im2col reads the images in blocks whose channel planes fit in 256 KB: two
    # 100 KB planes a block and a last block of one (160 px, float32), or one image a block
    # (190 px float64, 260 px float32); each thread takes one run of the batch's images
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2, hw, hw)).astype(dtype)
    old = cpu_kernels.get_num_threads()
    cpu_kernels.set_num_threads(threads)
    try:
        for args in ((3, 3, (1, 1), (1, 1)), (5, 4, (2, 3), (0, 2))):
            assert same_bits(cpu_loops.im2col(x, *args), cpu_kernels.im2col(x, *args))
    finally:
        cpu_kernels.set_num_threads(old)


def test_im2col_of_every_tiny_geometry_gives_the_numpy_bits():
    # each direction alone over every small size, kernel, stride (up to more than the image) and
    # padding: the edges where a window starts in the padding or a stride skips the whole image
    rng = np.random.default_rng(0)
    for size in range(1, 7):
        for k in range(1, 5):
            for stride in range(1, 6):
                for pad in range(0, 3):
                    if k > size + 2 * pad:
                        continue
                    for shape, args in (((2, 2, size, 3), (k, 1, (stride, 1), (pad, 0))),
                                        ((2, 2, 3, size), (1, k, (1, stride), (0, pad)))):
                        x = rng.standard_normal(shape)
                        assert same_bits(cpu_loops.im2col(x, *args), cpu_kernels.im2col(x, *args)), (shape, args)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_one_image_shared_out_by_channels_gives_the_numpy_bits(threads, channels):
    # a batch of one image: im2col and max-pool give each thread a run of channels (3 channels
    # on 2 threads: runs of 2 and 1; 1 channel on 3 threads: one run)
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((1, channels, 13, 17)).astype(np.float32)
    old = cpu_kernels.get_num_threads()
    cpu_kernels.set_num_threads(threads)
    try:
        for args in ((3, 3, (1, 1), (1, 1)), (5, 4, (2, 3), (0, 2)), (11, 11, (4, 4), (0, 0))):
            assert same_bits(cpu_loops.im2col(x, *args), cpu_kernels.im2col(x, *args))
        (y, argmax), (y_np, argmax_np) = (m.maxpool_forward(x, 3, 3, 2, 2, 6, 8) for m in (cpu_loops, cpu_kernels))
        assert same_bits(y, y_np) and np.array_equal(argmax, argmax_np)
    finally:
        cpu_kernels.set_num_threads(old)


def test_strided_views_and_non_contiguous_buffers_are_handled():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 9, 9))[:, ::2]          # every other channel: not contiguous
    cols = cpu_kernels.im2col(x, 3, 3, (1, 1), (1, 1))
    out = np.empty((cols.shape[1], cols.shape[0])).T       # a transposed buffer
    assert cpu_loops.im2col(x, 3, 3, (1, 1), (1, 1), out=out) is out and same_bits(np.ascontiguousarray(out), cols)
    gx = np.empty((2, 9, 9, 3)).transpose(0, 3, 1, 2)
    cpu_loops.col2im(cols, (2, 3, 9, 9), 3, 3, (1, 1), (1, 1), out=gx)
    assert np.array_equal(gx, cpu_kernels.col2im(cols, (2, 3, 9, 9), 3, 3, (1, 1), (1, 1)))


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh, 11)), draw(st.integers(kw, 11))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    # few distinct values: many ties, so "the first maximum" is put to the test
    levels = draw(st.integers(1, 4))
    nans, signed_zeros = draw(st.booleans()), draw(st.booleans())
    return shape, (kh, kw, sh, sw), levels, nans, signed_zeros


@given(pool_case(), DTYPES, st.integers(0, 2**31))
def test_max_pool_gives_the_numpy_bits_with_ties_and_nan(case, dtype, seed):
    shape, (kh, kw, sh, sw), levels, nans, signed_zeros = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, shape).astype(dtype)
    if nans:
        x[rng.random(shape) < 0.1] = np.nan
    if signed_zeros:  # -0.0 ties +0.0: the maximum is the first zero, with its sign
        x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    oh, ow = (shape[2] - kh) // sh + 1, (shape[3] - kw) // sw + 1
    y, argmax = cpu_kernels.maxpool_forward(x, kh, kw, sh, sw, oh, ow)
    y_c, argmax_c = cpu_loops.maxpool_forward(x, kh, kw, sh, sw, oh, ow)
    assert same_bits(y_c, y) and argmax_c.dtype == np.int32 and np.array_equal(argmax_c, argmax)
    # without argmax (inference) both find the same maxima, by the loop that records no places
    for loops in (cpu_kernels, cpu_loops):
        y_only, none = loops.maxpool_forward(x, kh, kw, sh, sw, oh, ow, with_argmax=False)
        assert none is None and same_bits(y_only, y), loops.__name__
    # the naive twin's argmax (row-major place in the window) is the same place in the plane
    y_naive, in_window = max_pool2d_naive(x, (kh, kw), (sh, sw))
    ky, kx = np.divmod(in_window, kw)
    assert np.array_equal((np.arange(oh)[:, None] * sh + ky) * shape[3] + np.arange(ow) * sw + kx, argmax)
    assert np.array_equal(y_naive, y, equal_nan=True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = cpu_kernels.maxpool_backward(argmax, gy, x.shape, kh, kw, sh, sw)
    assert same_bits(cpu_loops.maxpool_backward(argmax, gy, x.shape, kh, kw, sh, sw), gx)
    # the terms reach a pixel in the outputs' row-major order, as the naive twin adds them
    assert same_bits(max_pool2d_backward_naive(x, gy, (kh, kw), (sh, sw)), gx)



def test_max_pool_backward_refuses_an_argmax_or_shape_that_does_not_match():
    # the compiled scatter writes where argmax says: a wrong argmax or x_shape is refused, not run
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)
    y, argmax = cpu_loops.maxpool_forward(x, 3, 3, 2, 2, 3, 3)
    gy = np.ones_like(y)
    for bad_argmax, x_shape in ((argmax.astype(np.int64), x.shape), (argmax[:1], x.shape), (argmax, (2, 4, 7, 7))):
        with pytest.raises(ValueError, match="maxpool_backward: argmax must be int32"):
            cpu_loops.maxpool_backward(bad_argmax, gy, x_shape, 3, 3, 2, 2)

@given(st.integers(0, 4), st.integers(1, 6), st.integers(1, 40), st.booleans(), st.booleans(), DTYPES,
       st.integers(0, 2**31))
def test_conv_output_pass_gives_the_numpy_bits_with_zeros_infinities_and_nan(n, o, p, bias, relu, dtype, seed):
    """The convolution's output pass (transpose, bias, ReLU) and its backward twin (transpose,
    ReLU mask): values on a few levels, so that exact zeros reach the ReLU, and NaN and
    infinities, whose rules (np.maximum keeps a NaN; inf * 0 is NaN) must carry over."""
    rng = np.random.default_rng(seed)
    levels = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, np.inf, -np.inf, np.nan], dtype)
    prod = rng.choice(levels, (o, n, p))
    b = rng.choice(levels[:5], o) if bias else None
    out = np.full((n, o, p), 7.0, dtype)
    want = cpu_kernels.conv_output(prod, b, relu, np.full((n, o, p), 5.0, dtype))
    assert cpu_loops.conv_output(prod, b, relu, out) is out and same_bits(out, want)
    gy = rng.choice(levels, (n, o, p))
    for y in (None, out):
        rows = np.full((o, n, p), 7.0, dtype)
        with np.errstate(invalid="ignore"):  # inf * 0
            assert cpu_loops.conv_grad_rows(gy, y, rows) is rows
            assert same_bits(rows, cpu_kernels.conv_grad_rows(gy, y, np.empty((o, n, p), dtype)))
    if relu:  # the fused pass is the ReLU op's arithmetic
        t = np.transpose(prod, (1, 0, 2)) + (0 if b is None else b[None, :, None])
        assert same_bits(out, np.maximum(t, 0).astype(dtype))


@given(st.integers(0, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 36), st.integers(1, 36),
       st.integers(0, 4), st.sampled_from([3, 5]), st.booleans(), st.booleans(), DTYPES, st.integers(0, 2**31))
def test_winograd_transforms_give_the_numpy_bits(n, c, o, h, w, pad, k, bias, relu, dtype, seed):
    """The four Winograd transforms around the A^2 GEMMs, for 3x3 and 5x5 filters, every
    geometry from 1x1 images (only padding) to uneven tiles, one image (split by channels) and
    none, with exact zeros, NaN and infinities on a few levels: the NumPy twins' bits, NaN for
    NaN.  Planes up to 36 wide: in float32 the input's tiles, the input's gradient and the
    output's gradient take a fixed layout up to 7 tiles a side (AlexNet's 27x27 by 5x5, 13x13 by
    3x3), the plane's own sizes beyond."""
    h, w = max(h, k - 2 * pad), max(w, k - 2 * pad)  # at least one output
    rng = np.random.default_rng(seed)
    levels = np.array([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, np.inf, -np.inf, np.nan], dtype)
    x = rng.choice(levels, (n, c, h, w))
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    tiles = cpu_kernels.winograd_tiles(oh, ow, k)
    t, e = n * tiles[0] * tiles[1], cpu_kernels.winograd_side(k) ** 2
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, inf * 0
        v = cpu_loops.winograd_input(x, (pad, pad), tiles, np.full((e, c, t), 7.0, dtype))
        assert same_bits_but_nan(v, cpu_kernels.winograd_input(x, (pad, pad), tiles, np.empty((e, c, t), dtype)))
        m = rng.choice(levels, (e, o, t))
        b = rng.choice(levels[:7], o) if bias else None
        y = cpu_loops.winograd_output(m, b, relu, tiles, np.full((n, o, oh, ow), 7.0, dtype))
        assert same_bits_but_nan(y, cpu_kernels.winograd_output(m, b, relu, tiles, np.empty((n, o, oh, ow), dtype)))
        gy = rng.choice(levels, (n, o, oh, ow))
        for mask in (None, y):
            z = cpu_loops.winograd_grad_output(gy, mask, tiles, np.full((e, o, t), 7.0, dtype))
            assert same_bits_but_nan(z, cpu_kernels.winograd_grad_output(gy, mask, tiles, np.empty((e, o, t), dtype)))
        gx = cpu_loops.winograd_input_grad(v, (pad, pad), tiles, np.full((n, c, h, w), 7.0, dtype))
        assert same_bits_but_nan(gx, cpu_kernels.winograd_input_grad(v, (pad, pad), tiles, np.empty((n, c, h, w), dtype)))


@given(st.integers(1, 70), st.integers(1, 5), st.sampled_from([3, 5]), DTYPES, st.integers(0, 2**31))
def test_winograd_filter_transforms_give_the_numpy_bits(o, c, k, dtype, seed):
    """U = G g G^T and the gradient's G^T gU G, for 3x3 and 5x5 filters, over more (filter,
    channel) pairs than a block of the compiled loop holds: the NumPy twins' bits."""
    rng = np.random.default_rng(seed)
    levels = np.array([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf, np.nan], dtype)
    w = np.where(rng.random((o, c, k, k)) < 0.9, rng.standard_normal((o, c, k, k)), rng.choice(levels, (o, c, k, k)))
    w = w.astype(dtype)
    gu = rng.standard_normal((cpu_kernels.winograd_side(k) ** 2, o, c)).astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        assert same_bits_but_nan(cpu_loops.winograd_weight(w), cpu_kernels.winograd_weight(w))
        assert same_bits_but_nan(cpu_loops.winograd_weight_grad(gu), cpu_kernels.winograd_weight_grad(gu))


@given(st.integers(1, 3), st.integers(1, 14), st.integers(1, 6), st.integers(1, 12), DTYPES,
       st.sampled_from([0.75, 0.5, 1.0]), st.integers(0, 2**31))
def test_lrn_gives_the_numpy_bits(n, c, hw, size, dtype, beta, seed):
    """Windows of up to 9 channels are summed in one pass (kernels/cpu_loops.cpp, MAX_WINDOW),
    wider ones a row at a time: sizes up to 12 draw both."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, hw, hw)) * 3).astype(dtype)
    alpha, k = 1e-2, 2.0
    y = cpu_kernels.lrn_forward(x, size, alpha, beta, k)
    y2 = cpu_loops.lrn_forward(x, size, alpha, beta, k)
    gy = rng.standard_normal(x.shape).astype(dtype)
    gx = cpu_kernels.lrn_backward(x, gy, size, alpha, beta, k)
    gx2 = cpu_loops.lrn_backward(x, gy, size, alpha, beta, k)
    if beta == 0.75:  # square roots and a division: correctly rounded on both sides
        assert same_bits(y2, y) and same_bits(gx2, gx)
    else:             # pow: NumPy's and the C library's may differ in the last bit
        rtol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(y2, y, rtol=rtol, atol=0)
        # each backward computes y again with its own pow, and gx is a difference of two terms
        # of the size of gy: a last-bit difference in y is measured against gy, not gx
        np.testing.assert_allclose(gx2, gx, rtol=rtol, atol=4 * rtol * np.abs(gy).max())


@pytest.mark.parametrize("shape,size", [((1, 12, 60, 60), 5), ((2, 20, 70, 70), 9), ((1, 40, 40, 40), 11),
                                        ((1, 1100, 5, 5), 1025)],
                         ids=["two tiles", "uneven tiles", "wide window, two tiles", "16-pixel tiles"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_backward_in_several_pixel_tiles_gives_the_numpy_bits(shape, size, dtype):
    """The compiled backward goes through each image in tiles of pixels, as many as let its two
    rings of `size` channel rows fit 64 KB each (RING_BYTES), at least 16: these shapes take
    two tiles of 3,276 and 324 pixels (float32; three in float64), tiles of 1,820 pixels with
    a shorter last one (a 9-channel window), a wide window (summed a row at a time) in two
    tiles (three in float64), and 16-pixel tiles with a 9-pixel last one (a window of 1,025
    channels, whose rings overfill 64 KB even at 16 pixels).  The hypothesis test above
    always fits in one tile, and its rings wrap around as soon as C > size."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    gx = cpu_kernels.lrn_backward(x, gy, size, 1e-2, 0.75, 2.0)
    assert same_bits(cpu_loops.lrn_backward(x, gy, size, 1e-2, 0.75, 2.0), gx)


@given(st.integers(1, 3), st.integers(1, 14), st.integers(1, 6), st.integers(1, 12), DTYPES, st.integers(0, 2**31))
def test_lrn_backward_recomputes_forwards_bits(n, c, hw, size, dtype, seed):
    """Backward keeps nothing from forward but x: the s and y it computes again must be
    forward's, bit for bit.  The reference here takes forward's y as returned, and s by
    lrn_scale, and applies the gradient formula to them, call for call as backward does."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, hw, hw)) * 3).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    alpha, beta, k = 1e-2, 0.75, 2.0
    for kernels in (cpu_kernels, cpu_loops):
        y = kernels.lrn_forward(x, size, alpha, beta, k)
        s = cpu_kernels.lrn_scale(x, size, alpha, k, np.empty_like(x), scratch=np.empty_like(x))
        u = y * gy
        u /= s
        t = cpu_kernels.channel_window_sum(u, (size - 1) // 2, size // 2, out=np.empty_like(u))
        t *= x
        t *= -2.0 * alpha * beta
        expected = cpu_kernels.power_neg_beta(s, beta, out=np.empty_like(s)) * gy + t
        assert same_bits(kernels.lrn_backward(x, gy, size, alpha, beta, k), expected), kernels.__name__


@given(st.integers(0, 3000), DTYPES, st.floats(1e-4, 1.0), st.floats(0, 0.99), st.floats(0, 1e-2),
       st.integers(0, 2**31))
def test_sgd_update_gives_the_numpy_bits(n, dtype, lr, m, wd, seed):
    rng = np.random.default_rng(seed)
    w, g, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    w2, v2 = w.copy(), v.copy()
    cpu_kernels.sgd_update(w, g, v, lr, m, wd)
    cpu_loops.sgd_update(w2, g, v2, lr, m, wd)
    assert same_bits(w2, w) and same_bits(v2, v)


@given(st.integers(0, 13), st.integers(0, 300), DTYPES, st.integers(0, 2**31),
       st.sampled_from(["finite", "finite", "nan", "inf", "zeros"]), st.sampled_from([None, 1, 2, 3, 5]))
def test_matvec_gives_the_numpy_bits(rows, length, dtype, seed, special, vectors):
    # lengths on both sides of the partial sums' width (32 float32, 16 float64) and its
    # multiples, with and without a tail; rows in groups of 4 and the rest one by one
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, length)).astype(dtype)
    x = rng.standard_normal(length if vectors is None else (vectors, length)).astype(dtype)  # one or a few
    if special == "zeros" and w.size:  # a row of zero weights times negative inputs: -0.0 every product
        w[rng.integers(rows)] = 0
        x = -np.abs(x)
    elif special != "finite" and w.size:
        w[rng.integers(rows), rng.integers(length)] = np.nan if special == "nan" else -np.inf
        x[..., rng.integers(length)] = np.inf
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, as it should
        y = cpu_loops.matvec(w, x)
        assert same_bits_but_nan(y, cpu_kernels.matvec(w, x))
        if vectors is not None:  # each vector's product as if alone
            assert all(same_bits_but_nan(y[n], cpu_kernels.matvec(w, x[n])) for n in range(vectors))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows, length, dtype", [(23, 1000, np.float32), (300, 1001, np.float64), (5, 20000, np.float32)])
def test_matvec_shared_out_between_threads_gives_the_numpy_bits(threads, rows, length, dtype):
    # the compiled loop's runs of rows (23 on 3 threads: 8, 8 and 7, each 4 at a time and the
    # rest); the NumPy twin's blocks of about 1 MB of products (300 x 1001 float64: three)
    rng = np.random.default_rng(rows)
    w, x = rng.standard_normal((rows, length)).astype(dtype), rng.standard_normal(length).astype(dtype)
    old = cpu_kernels.get_num_threads()
    cpu_kernels.set_num_threads(threads)
    try:
        y = cpu_loops.matvec(w, x)
        assert same_bits(y, cpu_kernels.matvec(w, x))
        assert same_bits(cpu_loops.matvec(w[:, ::2], x[::2]), cpu_kernels.matvec(w[:, ::2], x[::2]))  # strided
        xs = np.stack([x, -x, 2 * x])  # three vectors, each block of rows read once for them
        assert same_bits(cpu_loops.matvec(w, xs), cpu_kernels.matvec(w, xs))
    finally:
        cpu_kernels.set_num_threads(old)
    assert np.allclose(y, w.astype(np.float64) @ x.astype(np.float64), rtol=1e-4, atol=1e-3)



@given(st.integers(0, 40), st.integers(0, 20), st.integers(0, 600), DTYPES, st.booleans(), st.integers(0, 2**31),
       st.sampled_from(["finite", "finite", "nan", "inf", "zeros"]))
def test_outer_sum_gives_the_numpy_bits(batch, rows, length, dtype, stream, seed, special):
    # batches on both sides of 1 and of the 6 rows summed at once; lengths on both sides of the
    # vectors of columns (16 float32, 8 float64) and of the tile of x copied at a time (256,
    # 128), with and without a tail; stores past the cache when the rows allow them
    rng = np.random.default_rng(seed)
    gy = rng.standard_normal((batch, rows)).astype(dtype)
    x = rng.standard_normal((batch, length)).astype(dtype)
    if special == "zeros" and gy.size:  # a row of gw whose every product is -0.0
        gy[:, rng.integers(rows)] = 0
        x = -np.abs(x)
    elif special != "finite" and gy.size and x.size:
        gy[rng.integers(batch), rng.integers(rows)] = np.nan if special == "nan" else -np.inf
        x[rng.integers(batch), rng.integers(length)] = np.inf
    old = cpu_loops.OUTER_SUM_STREAM_BYTES
    cpu_loops.OUTER_SUM_STREAM_BYTES = 0 if stream else 2**62
    try:
        with np.errstate(invalid="ignore"):  # inf - inf, 0 * inf: NaN, as it should
            assert same_bits_but_nan(cpu_loops.outer_sum(gy, x), cpu_kernels.outer_sum(gy, x))
    finally:
        cpu_loops.OUTER_SUM_STREAM_BYTES = old


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch, rows, length, dtype", [(8, 23, 1024, np.float32), (3, 300, 1001, np.float64),
                                                        (32, 5, 20000, np.float32)])
def test_outer_sum_shared_out_between_threads_gives_the_numpy_bits(threads, batch, rows, length, dtype):
    # the compiled loop's runs of rows (23 on 3 threads: 8, 8 and 7, each 6 at a time and the
    # rest); the NumPy twin's blocks of about 1 MB of gw (300 x 1001 float64: three); gw of
    # 1024 float32 columns (whole cache lines) stored past the cache, the others not
    rng = np.random.default_rng(rows)
    gy, x = rng.standard_normal((batch, rows)).astype(dtype), rng.standard_normal((batch, length)).astype(dtype)
    old, old_stream = cpu_kernels.get_num_threads(), cpu_loops.OUTER_SUM_STREAM_BYTES
    cpu_kernels.set_num_threads(threads)
    cpu_loops.OUTER_SUM_STREAM_BYTES = 0
    try:
        gw = cpu_loops.outer_sum(gy, x)
        assert same_bits(gw, cpu_kernels.outer_sum(gy, x))
        assert same_bits(cpu_loops.outer_sum(gy[::2, ::2], x[::2, ::2]), cpu_kernels.outer_sum(gy[::2, ::2], x[::2, ::2]))
    finally:
        cpu_kernels.set_num_threads(old)
        cpu_loops.OUTER_SUM_STREAM_BYTES = old_stream
    assert gw.flags.owndata  # autograd keeps an array of its own as .grad, without a copy
    assert np.allclose(gw, gy.T.astype(np.float64) @ x.astype(np.float64), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("length_bytes", [64, 4096, 4160])
def test_outer_sum_past_the_cache_from_anywhere_in_a_line(dtype, length_bytes):
    # gw at every place in a cache line (NumPy's arrays start where malloc put them): the
    # columns before the first line's start and each row's part line at its end go through
    # the cache, the rest past it; the same bits, and nothing written outside gw
    itemsize = np.dtype(dtype).itemsize
    I, O, N = length_bytes // itemsize, 13, 5
    rng = np.random.default_rng(length_bytes)
    gy, x = rng.standard_normal((N, O)).astype(dtype), rng.standard_normal((N, I)).astype(dtype)
    gt, want = np.ascontiguousarray(gy.T), cpu_kernels.outer_sum(gy, x)
    fn = cpu_loops._function("outer_sum", np.dtype(dtype))
    memory = np.full(O * I + 2 * 64 // itemsize, 7, dtype)
    base = -memory.ctypes.data % 64 // itemsize  # memory[base] starts a line
    for offset in range(64 // itemsize):
        gw = memory[base + offset:base + offset + O * I]
        memory[:] = 7
        fn(gt.ctypes.data, x.ctypes.data, gw.ctypes.data, N, I, 0, O, 1)
        assert same_bits(gw.reshape(O, I), want), offset
        assert (memory[:base + offset] == 7).all() and (memory[base + offset + O * I:] == 7).all(), offset


def test_outer_sum_of_no_products_is_zero():
    for module in (cpu_loops, cpu_kernels):
        gw = module.outer_sum(np.zeros((0, 3), np.float32), np.zeros((0, 70), np.float32))
        assert gw.shape == (3, 70) and gw.dtype == np.float32 and not np.any(gw) and not np.signbit(gw).any()
        with pytest.raises(ValueError, match=r"outer_sum: expected gy \(N, O\) and x \(N, I\) with the same N, "
                                             r"got \(2, 3\) and \(3, 70\)"):
            module.outer_sum(np.zeros((2, 3), np.float32), np.zeros((3, 70), np.float32))

def test_other_dtypes_run_the_numpy_loops():
    x = np.arange(2 * 3 * 6 * 6, dtype=np.float16).reshape(2, 3, 6, 6)
    (y, argmax), (y_np, argmax_np) = (m.maxpool_forward(x, 2, 2, 2, 2, 3, 3) for m in (cpu_loops, cpu_kernels))
    assert same_bits(y, y_np) and np.array_equal(argmax, argmax_np)
    assert same_bits(cpu_loops.im2col(x, 3, 3, (1, 1), (0, 0)), cpu_kernels.im2col(x, 3, 3, (1, 1), (0, 0)))


def test_the_setting_chooses_the_loops_and_refuses_what_it_does_not_know():
    import tinynet as tn
    from tinynet.ops import kernels_for

    x = np.zeros((1, 1, 2, 2))
    old = tn.set_cpu_loops("numpy")
    try:
        assert kernels_for(x) is cpu_kernels and tn.get_cpu_loops() == "numpy"
        assert tn.set_cpu_loops("compiled") == "numpy"
        assert kernels_for(x) is cpu_loops
        with pytest.raises(ValueError, match=r"set_cpu_loops: expected one of \('compiled', 'numpy'\), got 'fast'"):
            tn.set_cpu_loops("fast")
    finally:
        tn.set_cpu_loops(old)


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT, **env})


PROBE = """
import warnings
import numpy as np
import tinynet as tn
import tinynet.functional as F
from tinynet.ops import kernels_for, cpu_kernels
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = F.max_pool2d(tn.tensor(np.ones((1, 1, 4, 4))), 2)
    y = F.max_pool2d(tn.tensor(np.ones((1, 1, 4, 4))), 2)
print(kernels_for(np.ones(1)) is cpu_kernels, len(caught))
print(caught[0].message if caught else "")
try:
    tn.set_cpu_loops("compiled")
except RuntimeError as e:
    print("refused:", str(e).splitlines()[0])
"""


def test_without_a_compiler_the_numpy_loops_run_and_a_warning_says_so(tmp_path):
    out = run_python(PROBE, CXX=str(tmp_path / "no-such-compiler"), XDG_CACHE_HOME=str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "True 1"  # NumPy's loops, and one warning for two ops
    assert "could not be built, so the CPU runs the NumPy loops" in lines[1]
    assert "needs a C++ compiler, and none was found" in out.stdout
    assert lines[-1].startswith("refused: set_cpu_loops('compiled'): the library cannot be built")


def test_a_bad_environment_value_is_refused():
    out = run_python("import tinynet as tn; tn.get_cpu_loops()", TINYNET_CPU_LOOPS="fast")
    assert out.returncode != 0
    assert "TINYNET_CPU_LOOPS: expected one of ('compiled', 'numpy'), got 'fast'" in out.stderr



def test_a_bad_sanitizer_value_is_refused():
    code = "import numpy as np, tinynet.functional as F; F.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2)"
    out = run_python(code, TINYNET_CPU_LOOPS_SANITIZE="thread")
    assert out.returncode != 0
    assert "TINYNET_CPU_LOOPS_SANITIZE: expected 'address', got 'thread'" in out.stderr


@pytest.mark.skipif(shutil.which("nm") is None or not sys.platform.startswith("linux")
                    or platform.machine() != "x86_64",
                    reason="the loops are cloned for AVX2 on x86-64 Linux; listing the library takes nm")
def test_every_loop_is_compiled_inside_its_exported_function():
    """The exported functions are cloned for SSE2 and AVX2 (LRN's and the outer sums' for AVX-512
    too); a C++ function the compiler left out of line (a loop's lambda, say) would be compiled
    once, for SSE2, and called from the AVX2 clone.  Every C++ function must be inlined: the library defines none of its own (mangled
    names start with _Z), only the exported C functions, their clones and the runtime's."""
    library = cpu_loops._load(strict=True)._name  # built if not yet
    listing = subprocess.run(["nm", "--defined-only", library], capture_output=True, text=True, check=True)
    symbols = (line.split() for line in listing.stdout.splitlines())
    functions = [fields[2] for fields in symbols if len(fields) == 3 and fields[1] in "tT"]
    assert any(name.startswith("winograd_input_f32") for name in functions), "nm listed no loops"
    wide = {name.split(".")[0] for name in functions if "arch_x86_64_v4" in name}  # AVX-512 clones
    expected = {f"{loop}_{suffix}" for loop in ("lrn_forward", "lrn_backward", "outer_sum", "outer_sum_sgd")
                for suffix in ("f32", "f64")}
    assert wide <= expected, wide
    identity = compiler_identity(compiler())
    version = re.search(r"(\d+)\.\d+\.\d+", identity)
    if "clang" not in identity and version and int(version.group(1)) >= 11:  # GCC 11 knows x86-64-v4
        assert wide == expected, f"AVX-512 clones from {identity}: {wide}, expected {expected}"
    out_of_line = [name for name in functions if name.startswith("_Z")]
    assert not out_of_line, f"functions left out of line in {library}: {out_of_line}"


# ----------------------------------------------------------------------------
# Every access in bounds, under AddressSanitizer
# ----------------------------------------------------------------------------

def run_every_loop_on_exact_buffers(cases=60):
    """Every compiled loop on random geometry, one to three images (one image takes the
    channel-split path), on NumPy arrays of exactly their size.  Run in a process with
    AddressSanitizer preloaded and the library built with it, every heap buffer has poisoned
    memory right before and after it: one element read or written out of bounds aborts with a
    report.  (The bit-for-bit tests above only see reads that reach an output.)"""
    rng = np.random.default_rng(0)
    for case in range(cases):
        dtype = (np.float32, np.float64)[case % 2]
        N, C = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, [6, 6, 5, 5]))
        H, W = kh + int(rng.integers(0, 12)), kw + int(rng.integers(0, 12))
        ph, pw = int(rng.integers(0, min(kh, 3))), int(rng.integers(0, min(kw, 3)))
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        cpu_loops.IM2COL_STREAM_BYTES = int(rng.choice([0, 2**62]))  # past the cache or not
        cols = cpu_loops.im2col(x, kh, kw, (sh, sw), (ph, pw))
        cpu_loops.col2im(cols, x.shape, kh, kw, (sh, sw), (ph, pw))
        oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
        y, argmax = cpu_loops.maxpool_forward(x, kh, kw, sh, sw, oh, ow)
        cpu_loops.maxpool_backward(argmax, np.ones_like(y), x.shape, kh, kw, sh, sw)
        size = int(rng.integers(1, 13))  # both sides of MAX_WINDOW (9)
        cpu_loops.lrn_forward(x, size, 1e-4, 0.75, 2.0)
        cpu_loops.lrn_backward(x, np.ones_like(x), size, 1e-4, 0.75, 2.0)
        if case < 2:  # backward in several pixel tiles, the last one shorter (see the bit test)
            wide = rng.standard_normal((1, 7000, 5, 7)).astype(dtype)  # tiles of 16, 16 and 3 pixels
            cpu_loops.lrn_backward(wide, np.ones_like(wide), 9, 1e-4, 0.75, 2.0)
        O, P = C + 1, oh * ow
        prod = rng.standard_normal((O, N, P)).astype(dtype)
        out = np.empty((N, O, P), dtype)
        cpu_loops.conv_output(prod, rng.standard_normal(O).astype(dtype), True, out)
        cpu_loops.conv_grad_rows(out, out, np.empty((O, N, P), dtype))
        k = int(rng.choice([3, 5]))
        pad, e = int(rng.integers(0, k)), cpu_kernels.winograd_side(k) ** 2
        if H + 2 * pad >= k and W + 2 * pad >= k:  # Winograd's transforms, when a kxk fits
            oh, ow = H + 2 * pad - k + 1, W + 2 * pad - k + 1
            tiles = cpu_kernels.winograd_tiles(oh, ow, k)
            t = N * tiles[0] * tiles[1]
            v = cpu_loops.winograd_input(x, (pad, pad), tiles, np.empty((e, C, t), dtype))
            cpu_loops.winograd_input_grad(v, (pad, pad), tiles, np.empty_like(x))
            y = np.empty((N, O, oh, ow), dtype)
            cpu_loops.winograd_output(rng.standard_normal((e, O, t)).astype(dtype),
                                      rng.standard_normal(O).astype(dtype), True, tiles, y)
            cpu_loops.winograd_grad_output(y, y, tiles, np.empty((e, O, t), dtype))
            u = cpu_loops.winograd_weight(rng.standard_normal((O, C, k, k)).astype(dtype))
            cpu_loops.winograd_weight_grad(u)
        n = int(rng.integers(1, 5000))
        w, g, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
        cpu_loops.sgd_update(w, g, v, 0.01, 0.9, 5e-4)
        rows, length = int(rng.integers(0, 9)), int(rng.integers(0, 100))
        vectors = (length,) if rng.integers(2) else (int(rng.integers(0, 5)), length)
        cpu_loops.matvec(rng.standard_normal((rows, length)).astype(dtype), rng.standard_normal(vectors).astype(dtype))
        batch, length = int(rng.integers(0, 20)), int(rng.choice([int(rng.integers(0, 300)), 64, 256]))
        cpu_loops.OUTER_SUM_STREAM_BYTES = int(rng.choice([0, 2**62]))  # past the cache or not
        gy, xs = rng.standard_normal((batch, rows)).astype(dtype), rng.standard_normal((batch, length)).astype(dtype)
        cpu_loops.outer_sum(gy, xs)
        w, v = (rng.standard_normal((rows, length)).astype(dtype) for _ in range(2))
        cpu_loops.outer_sum_sgd(gy, xs, w, v, 0.01, 0.9, 5e-4)
    print(f"{cases} cases, every access in bounds")


def test_no_out_of_bounds_access_under_address_sanitizer():
    from conftest import run_under_asan

    run_under_asan(__file__, compiler(), TINYNET_CPU_LOOPS_SANITIZE="address")


if __name__ == "__main__":  # the process the sanitizer test starts
    cpu_loops.set_cpu_loops("compiled")
    run_every_loop_on_exact_buffers()
