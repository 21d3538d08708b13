import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import tinynet as tn
import tinynet.functional as F
from tinynet.gradcheck import gradcheck
from tinynet.ops.lrn import local_response_norm_naive
from tinynet.ops.pool import max_pool2d_backward_naive, max_pool2d_naive

from conftest import conv_path, shuffled_linspace


@st.composite
def pool_geometry(draw):
    g = dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)),
             h=draw(st.integers(1, 10)), w=draw(st.integers(1, 10)),
             kh=draw(st.integers(1, 4)), kw=draw(st.integers(1, 4)),
             sh=draw(st.integers(1, 5)), sw=draw(st.integers(1, 5)),
             p=draw(st.integers(0, 1)))
    assume(2 * g["p"] <= min(g["kh"], g["kw"]))
    assume(g["kh"] <= g["h"] + 2 * g["p"] and g["kw"] <= g["w"] + 2 * g["p"])
    return g


# Each hypothesis test runs down every code path of pooling and LRN (conftest.conv_path):
# "whole", the batch in one piece on the calling thread, "threaded", one-image pieces on
# 3 threads (what large batches take), both with the compiled loops, and "numpy", the NumPy
# loops.  ("chunked" cuts only the convolution's columns.)
POOL_PATHS = ["whole", "threaded", "numpy"]


@pytest.mark.parametrize("path", POOL_PATHS)
@given(pool_geometry())
def test_max_pool_matches_naive_and_gradcheck(path, g):
    rng = np.random.default_rng(0)
    x = shuffled_linspace((g["n"], g["c"], g["h"], g["w"]), rng)  # tie-free
    k, s, p = (g["kh"], g["kw"]), (g["sh"], g["sw"]), (g["p"], g["p"])
    xt = tn.tensor(x, requires_grad=True)
    with conv_path(path):
        y = F.max_pool2d(xt, k, s, p)
        ref, _ = max_pool2d_naive(x, k, s, p)
        assert np.array_equal(y.data, ref)
        gy = rng.standard_normal(y.shape)
        y.backward(gy)
        assert np.allclose(xt.grad, max_pool2d_backward_naive(x, gy, k, s, p))
        gradcheck(lambda t: F.max_pool2d(t, k, s, p), [x], eps=1e-7)


@pytest.mark.parametrize("path", POOL_PATHS)
@given(pool_geometry(), st.integers(1, 4), st.booleans())
def test_max_pool_without_backward_gives_the_same_maxima(path, g, levels, nans):
    """Under no_grad, or on an input that needs no gradient, forward finds the maxima without
    their places (nothing will read them): the same values, bit for bit, as when it records
    them, with ties (few distinct levels), NaN and padding, on every code path."""
    rng = np.random.default_rng(levels)
    x = rng.integers(0, levels, (g["n"], g["c"], g["h"], g["w"])).astype(np.float32)
    if nans:
        x[rng.random(x.shape) < 0.1] = np.nan
    k, s, p = (g["kh"], g["kw"]), (g["sh"], g["sw"]), (g["p"], g["p"])
    with conv_path(path):
        recorded = F.max_pool2d(tn.tensor(x, requires_grad=True), k, s, p)
        plain = F.max_pool2d(tn.tensor(x), k, s, p)
        with tn.no_grad():
            inference = F.max_pool2d(tn.tensor(x, requires_grad=True), k, s, p)
    assert recorded._creator is not None and plain._creator is None and inference._creator is None
    for y in (plain, inference):
        assert np.array_equal(y.data.view(np.int32), recorded.data.view(np.int32))
    assert np.array_equal(recorded.data, max_pool2d_naive(x, k, s, p)[0], equal_nan=True)


def test_overlapping_pool_gradient_adds_where_windows_share_the_max():
    # 3x3 windows, stride 2: the centre column/row is shared by neighbouring windows
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 10.0  # in all four windows
    xt = tn.tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, 3, 2)
    assert y.shape == (1, 1, 2, 2) and np.all(y.data == 10.0)
    y.sum().backward()
    assert xt.grad[0, 0, 2, 2] == 4.0 and xt.grad.sum() == 4.0


def test_max_pool_ties_send_gradient_to_first_maximum():
    x = np.ones((1, 1, 3, 3))  # all tied
    xt = tn.tensor(x, requires_grad=True)
    F.max_pool2d(xt, 3, 2).sum().backward()
    expected = np.zeros((3, 3))
    expected[0, 0] = 1.0  # top-left: first in row-major order
    assert np.array_equal(xt.grad[0, 0], expected)
    x = np.array([[[[0, 5, 5], [5, 0, 0], [0, 0, 5]]]], dtype=np.float32)
    xt = tn.tensor(x, requires_grad=True)
    F.max_pool2d(xt, 3).sum().backward()
    assert xt.grad[0, 0, 0, 1] == 1 and xt.grad.sum() == 1


@pytest.mark.parametrize("loops", ["compiled", "numpy"])
def test_max_pool_padding_never_takes_a_gradient(loops):
    """Padding is -inf, so a window whose real pixels are all -inf ties with it, and the padding
    comes first in row-major order: its gradient still goes to the first real pixel (PyTorch's
    choice), on both loops and in the naive twin, and every output's gradient lands somewhere."""
    x = np.array([[[[-np.inf, -np.inf, 1.0], [-np.inf, -np.inf, 2.0], [3.0, 4.0, -np.inf]]]])
    old = tn.set_cpu_loops(loops)
    try:
        xt = tn.tensor(x, requires_grad=True)
        y = F.max_pool2d(xt, 2, 1, 1)           # 4x4 windows of 2x2 over the padded 5x5 plane
        y.backward(np.ones(y.shape))
    finally:
        tn.set_cpu_loops(old)
    assert y.data[0, 0, 0, 0] == -np.inf and xt.grad.sum() == y.size
    assert xt.grad[0, 0, 0, 0] == 4                  # windows (0,0), (0,1), (1,0) and (1,1): all -inf
    _, arg = max_pool2d_naive(x, (2, 2), (1, 1), (1, 1))
    assert arg[0, 0, 0, 0] == 3                      # (ky, kx) = (1, 1): the first real pixel
    np.testing.assert_array_equal(xt.grad, max_pool2d_backward_naive(x, np.ones(y.shape), (2, 2), (1, 1), (1, 1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_nan_wins_and_takes_the_gradient(dtype):
    """A NaN anywhere in a window makes that window's output NaN (as NumPy and PyTorch),
    and the window's gradient goes to its first NaN (row-major), as np.argmax picks it:
    the fast path and the naive twin agree on both."""
    rng = np.random.default_rng(3)
    x = shuffled_linspace((2, 2, 7, 7), rng).astype(dtype)
    x[0, 0, 2, 2] = np.nan          # shared by four 3x3/stride-2 windows, last in two of them
    x[0, 1, 6, 5] = x[0, 1, 5, 6] = np.nan  # two NaN in one window: the first one (row 5) wins
    x[1, 1, 0, 0] = np.nan          # first in its window
    xt = tn.tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, 3, 2)
    ref, _ = max_pool2d_naive(x, (3, 3), (2, 2))
    assert np.array_equal(y.data, ref, equal_nan=True)
    assert np.isnan(y.data[0, 0, :2, :2]).all() and np.isnan(y.data[0, 1, 2, 2]) and np.isnan(y.data[1, 1, 0, 0])
    assert np.isnan(y.data).sum() == 6
    gy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(gy)
    np.testing.assert_allclose(xt.grad, max_pool2d_backward_naive(x, gy, (3, 3), (2, 2)), rtol=1e-6)
    assert xt.grad[0, 0, 2, 2] == pytest.approx(gy[0, 0, :2, :2].sum(), rel=1e-6)
    assert xt.grad[0, 1, 5, 6] == gy[0, 1, 2, 2] and xt.grad[0, 1, 6, 5] == 0


def test_alexnet_pool_sizes():
    for size, out in ((55, 27), (27, 13), (13, 6)):
        assert F.max_pool2d(np.zeros((1, 1, size, size), np.float32), 3, 2).shape[-1] == out


def test_pool_errors():
    with pytest.raises(ValueError, match=r"max_pool2d: kernel \(3, 3\) is larger than the padded input 2x2"):
        F.max_pool2d(np.zeros((1, 1, 2, 2)), 3, 2)
    with pytest.raises(ValueError, match="max_pool2d: x must have 4 dims"):
        F.max_pool2d(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="max_pool2d: padding"):
        F.max_pool2d(np.zeros((1, 1, 5, 5)), 2, padding=2)


@st.composite
def lrn_case(draw):
    groups = draw(st.integers(1, 3))
    return dict(shape=(draw(st.integers(1, 3)), groups * draw(st.integers(1, 4)), draw(st.integers(1, 3)),
                       draw(st.integers(1, 3))),
                size=draw(st.integers(1, 7)), alpha=draw(st.sampled_from([1e-4, 0.5, 1.0, 2.0])),
                beta=draw(st.sampled_from([0.75, 0.5, 1.3])), k=draw(st.sampled_from([2.0, 1.0, 0.5])),
                groups=groups)


@pytest.mark.parametrize("path", POOL_PATHS)
@given(lrn_case())
def test_lrn_matches_naive_and_gradcheck(path, c):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(c["shape"])
    args = (c["size"], c["alpha"], c["beta"], c["k"])
    g = c["groups"]
    with conv_path(path):
        y = F.local_response_norm(x, *args, groups=g)
        assert np.allclose(y.data, local_response_norm_naive(x, *args, groups=g), rtol=1e-12)
        gradcheck(lambda t: F.local_response_norm(t, *args, groups=g), [x])


def test_lrn_groups_never_reach_across_the_tower_boundary():
    x = np.zeros((1, 8, 1, 1))
    x[0, 4] = 10.0  # first channel of tower 1
    y = F.local_response_norm(x + 0.0, size=5, alpha=1.0, beta=1.0, k=1.0, groups=2).data
    assert y[0, 3, 0, 0] == 0.0
    x[0, 3] = 1.0  # last channel of tower 0: its window must not see channel 4
    y = F.local_response_norm(x, size=5, alpha=1.0, beta=1.0, k=1.0, groups=2).data
    assert np.isclose(y[0, 3, 0, 0], 1.0 / (1.0 + 1.0))
    y1 = F.local_response_norm(x, size=5, alpha=1.0, beta=1.0, k=1.0, groups=1).data
    assert np.isclose(y1[0, 3, 0, 0], 1.0 / (1.0 + 1.0 + 100.0))


def test_lrn_window_is_exactly_five_channels_with_strong_alpha():
    # with alpha = 1e-4 a window of 4 or 6 channels would pass unnoticed;
    # with alpha = 1 the output tells the window apart
    x = np.zeros((1, 9, 1, 1))
    x[0, 2] = 1.0  # one active channel: it enters the sums of channels 0..4
    y = F.local_response_norm(x + 0.0, size=5, alpha=1.0, beta=1.0, k=1.0)
    x2 = x.copy()
    x2[0, 4] = 3.0  # channel 4 is in window(2) = 0..4; channel 5 would not be
    y2 = F.local_response_norm(x2, size=5, alpha=1.0, beta=1.0, k=1.0)
    assert np.isclose(y.data[0, 2, 0, 0], 1 / (1 + 1))
    assert np.isclose(y2.data[0, 2, 0, 0], 1 / (1 + 1 + 9))
    x3 = x.copy()
    x3[0, 5] = 3.0  # outside window(2)
    assert np.isclose(F.local_response_norm(x3, size=5, alpha=1.0, beta=1.0, k=1.0).data[0, 2, 0, 0], 0.5)


def test_lrn_edges_clip_and_caffe_convention():
    x = np.random.default_rng(3).standard_normal((2, 6, 3, 3))
    # channel 0 sees channels 0..2 only (clipped, no wrap-around)
    s0 = 2.0 + 1.0 * (x[:, 0:3] ** 2).sum(1)
    y = F.local_response_norm(x, 5, alpha=1.0, beta=0.75, k=2.0).data
    assert np.allclose(y[:, 0], x[:, 0] / s0 ** 0.75)
    # Caffe/PyTorch divide alpha by size: paper alpha 1e-4 == caffe alpha 5e-4
    paper = F.local_response_norm(x, 5, alpha=1e-4, k=2.0).data
    caffe = F.local_response_norm(x, 5, alpha=5e-4, k=2.0, alpha_over_size=True).data
    assert np.allclose(paper, caffe, rtol=1e-12)


def test_lrn_float32_fast_path_agrees_with_float64():
    x = np.random.default_rng(4).standard_normal((2, 96, 7, 7)) * 30
    y64 = F.local_response_norm(x, alpha=1e-4).data
    y32 = F.local_response_norm(x.astype(np.float32), alpha=1e-4).data
    assert y32.dtype == np.float32 and np.allclose(y32, y64, rtol=1e-5, atol=1e-5)


def test_lrn_errors():
    with pytest.raises(ValueError, match="local_response_norm: size must be a positive int"):
        F.local_response_norm(np.zeros((1, 3, 2, 2)), size=0)
    with pytest.raises(ValueError, match="local_response_norm: k must be > 0"):
        F.local_response_norm(np.zeros((1, 3, 2, 2)), k=0.0)
    with pytest.raises(ValueError, match="local_response_norm: x must have 4 dims"):
        F.local_response_norm(np.zeros((3, 2, 2)))
    for bad in (dict(alpha=float("nan")), dict(beta=float("inf")), dict(k=float("nan")), dict(size=True)):
        with pytest.raises(ValueError, match="local_response_norm: (alpha|beta|k|size) must be"):
            F.local_response_norm(np.zeros((1, 3, 2, 2)), **bad)
    with pytest.raises(ValueError, match="LocalResponseNorm: alpha must be a finite"):
        tn.nn.LocalResponseNorm(alpha=float("nan"))
