import gc
import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import tinynet as tn
import tinynet.functional as F
from tinynet.gradcheck import gradcheck
from tinynet.ops.conv import conv2d_backward_naive, conv2d_naive, release_workspace

from conftest import PATHS, conv_path


@st.composite
def conv_geometry(draw):
    groups = draw(st.integers(1, 3))
    g = dict(
        n=draw(st.integers(1, 3)),
        groups=groups,
        c=groups * draw(st.integers(1, 2)),
        o=groups * draw(st.integers(1, 2)),
        kh=draw(st.integers(1, 4)), kw=draw(st.integers(1, 4)),
        sh=draw(st.integers(1, 5)), sw=draw(st.integers(1, 5)),  # stride > kernel too
        ph=draw(st.integers(0, 2)), pw=draw(st.integers(0, 2)),
    )
    g["h"] = draw(st.integers(1, 9))
    g["w"] = draw(st.integers(1, 9))  # non-square; tiny sizes give 1x1 outputs
    assume(g["kh"] <= g["h"] + 2 * g["ph"] and g["kw"] <= g["w"] + 2 * g["pw"])
    return g


def make(g, rng, dtype=np.float64):
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"])).astype(dtype)
    w = rng.standard_normal((g["o"], g["c"] // g["groups"], g["kh"], g["kw"])).astype(dtype)
    b = rng.standard_normal(g["o"]).astype(dtype)
    return x, w, b


def im2col_by_definition(x, kh, kw, s, p):
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    oh, ow = (H + 2 * p[0] - kh) // s[0] + 1, (W + 2 * p[1] - kw) // s[1] + 1
    cols = np.zeros((C * kh * kw, N * oh * ow), x.dtype)
    for c in range(C):
        for ky in range(kh):
            for kx in range(kw):
                for n in range(N):
                    for i in range(oh):
                        for j in range(ow):
                            cols[(c * kh + ky) * kw + kx, (n * oh + i) * ow + j] = xp[n, c, i * s[0] + ky, j * s[1] + kx]
    return cols


# Each hypothesis test runs down every code path (conftest.conv_path): "whole" (one chunk,
# columns kept for backward, one thread), "chunked" (one image per chunk, columns rebuilt) and
# "threaded" (im2col and col2im cut into one-image pieces on 3 threads), the last two being
# what large batches take in training.


@pytest.mark.parametrize("path", PATHS)
@given(conv_geometry())
def test_im2col_matches_definition_and_col2im_is_its_adjoint(path, g):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"]))
    k, s, p = (g["kh"], g["kw"]), (g["sh"], g["sw"]), (g["ph"], g["pw"])
    with conv_path(path):
        cols = F.im2col(x, k, s, p).data
        assert np.array_equal(cols, im2col_by_definition(x, *k, s, p))
        # <im2col(x), c> == <x, col2im(c)>: col2im is the transpose of im2col
        c = rng.standard_normal(cols.shape)
        folded = F.col2im(c, x.shape, k, s, p).data
    assert np.isclose((cols * c).sum(), (x * folded).sum())


@pytest.mark.parametrize("path", PATHS)
@given(conv_geometry(), st.booleans())
def test_conv2d_fast_matches_naive_forward_and_backward(path, g, with_bias):
    rng = np.random.default_rng(1)
    x, w, b = make(g, rng)
    s, p = (g["sh"], g["sw"]), (g["ph"], g["pw"])
    xt, wt = tn.tensor(x, requires_grad=True), tn.tensor(w, requires_grad=True)
    bt = tn.tensor(b, requires_grad=True) if with_bias else None
    with conv_path(path):
        F.conv_workspace_peak(reset=True)
        y = F.conv2d(xt, wt, bt, s, p, g["groups"])
        kept = y._creator.saved[2] is not None
        assert np.allclose(y.data, conv2d_naive(x, w, b if with_bias else None, s, p, g["groups"]))
        gy = rng.standard_normal(y.shape)
        y.backward(gy)
        peak = F.conv_workspace_peak(by_role=True)
    # the path taken is the one asked for
    assert kept == (path in ("whole", "numpy"))
    one_image = x.shape[1] * g["kh"] * g["kw"] * y.shape[2] * y.shape[3] * x.itemsize
    if y._creator.describe()["algorithm"] == "winograd":  # 3x3, stride 1: V, 16 rows per channel, a column per tile
        one_image = x.shape[1] * 16 * ((y.shape[2] + 1) // 2) * ((y.shape[3] + 1) // 2) * x.itemsize
    assert peak == ({"kept_columns": one_image * g["n"]} if path in ("whole", "numpy") else
                    {"columns": one_image * (1 if path == "chunked" else g["n"])}) | \
        {role: peak[role] for role in ("gemm_output", "column_grad")}
    gx, gw, gb = conv2d_backward_naive(x, w, gy, s, p, g["groups"])
    assert np.allclose(xt.grad, gx) and np.allclose(wt.grad, gw)
    if with_bias:
        assert np.allclose(bt.grad, gb)


@pytest.mark.parametrize("relu", [False, True], ids=["conv", "conv+relu"])
@pytest.mark.parametrize("path", PATHS)
@given(conv_geometry())
def test_conv2d_gradcheck_float64(path, relu, g):
    """Also with the ReLU in the convolution's output pass (``relu=True``)."""
    rng = np.random.default_rng(4 if relu else 2)
    x, w, b = make(g, rng)
    s, p = (g["sh"], g["sw"]), (g["ph"], g["pw"])
    with conv_path(path):
        gradcheck(lambda x, w, b: F.conv2d(x, w, b, s, p, g["groups"], relu=relu), [x, w, b], max_checks=60)


@pytest.mark.parametrize("path", PATHS)
@given(conv_geometry(), st.booleans(), st.booleans())
def test_conv2d_with_relu_matches_the_naive_twins(path, g, with_bias, input_grad):
    """F.conv2d(relu=True), the ReLU done in the convolution's output pass, against the naive
    convolution followed by the naive ReLU; gradients by the naive backward of the convolution
    fed the gradient the ReLU lets through.  Shifted biases put some outputs below zero."""
    from tinynet.ops.activation import relu_naive

    rng = np.random.default_rng(3)
    x, w, b = make(g, rng)
    b = b - 0.5
    s, p = (g["sh"], g["sw"]), (g["ph"], g["pw"])
    xt, wt = tn.tensor(x, requires_grad=input_grad), tn.tensor(w, requires_grad=True)
    bt = tn.tensor(b, requires_grad=True) if with_bias else None
    with conv_path(path):
        y = F.conv2d(xt, wt, bt, s, p, g["groups"], relu=True)
        gy = rng.standard_normal(y.shape)
        y.backward(gy)
    pre = conv2d_naive(x, w, b if with_bias else None, s, p, g["groups"])
    assert np.allclose(y.data, relu_naive(pre))
    gx, gw, gb = conv2d_backward_naive(x, w, gy * (pre > 0), s, p, g["groups"])
    assert np.allclose(wt.grad, gw)
    assert np.allclose(xt.grad, gx) if input_grad else xt.grad is None
    if with_bias:
        assert np.allclose(bt.grad, gb)


def test_conv2d_relu_must_be_a_bool():
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3))
    with pytest.raises(TypeError, match="conv2d: relu must be True or False, got 'yes'"):
        F.conv2d(x, w, relu="yes")


def test_conv2d_float32_against_float64(rng):
    x = rng.standard_normal((2, 6, 13, 13))
    w = rng.standard_normal((8, 3, 3, 3)) * 0.1
    y64 = F.conv2d(x, w, padding=1, groups=2).data
    y32 = F.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1, groups=2)
    assert y32.dtype == np.float32
    assert np.allclose(y32.data, y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("relu", [False, True], ids=["conv", "conv+relu"])
@pytest.mark.parametrize("keep", [0, 2**30], ids=["rebuilt", "kept"])
@pytest.mark.parametrize("budget", [1, 5000, 10**9])
def test_chunked_columns_give_identical_results(rng, budget, keep, relu):
    # float64, so that only summation order (chunk by chunk) can differ; with kept columns
    # every chunk reads a slice of them (a view whose rows are the whole batch apart)
    x = rng.standard_normal((5, 4, 11, 11))
    w = rng.standard_normal((6, 2, 3, 3))
    gy = rng.standard_normal((5, 6, 6, 6))

    def run():
        xt, wt = tn.tensor(x, requires_grad=True), tn.tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, stride=2, padding=1, groups=2, relu=relu)
        y.backward(gy)
        return y.data, xt.grad, wt.grad

    reference = run()
    old, old_keep = F.set_conv_workspace(budget), F.set_conv_keep_columns(keep)  # 1 byte: one image per chunk
    try:
        chunked = run()
    finally:
        F.set_conv_workspace(old)
        F.set_conv_keep_columns(old_keep)
    for a, b in zip(reference, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_frozen_weights_keep_and_build_no_columns(rng):
    """Backward reads the columns only for the weight gradient: with the weights frozen,
    forward keeps none and backward builds none (no columns role in its pass)."""
    x, w = rng.standard_normal((3, 4, 9, 9)), rng.standard_normal((6, 2, 3, 3))
    gy = rng.standard_normal((3, 6, 9, 9))
    xt, wt = tn.tensor(x, requires_grad=True), tn.tensor(w)
    y = F.conv2d(xt, wt, padding=1, groups=2)
    assert y._creator.saved[2] is None
    F.conv_workspace_peak(reset=True)
    y.backward(gy)
    assert set(F.conv_workspace_peak(by_role=True)) == {"gemm_output", "column_grad"}
    np.testing.assert_allclose(xt.grad, conv2d_backward_naive(x, w, gy, (1, 1), (1, 1), 2)[0],
                               rtol=1e-12, atol=1e-12)


def test_alexnet_conv1_shape_and_workspace():
    x = np.zeros((2, 3, 227, 227), np.float32)
    w = np.zeros((96, 3, 11, 11), np.float32)
    F.conv_workspace_peak(reset=True)
    y = F.conv2d(x, w, stride=4)
    assert y.shape == (2, 96, 55, 55)
    assert F.im2col(x[:1], 11, 4).shape == (363, 3025)  # the articles' M = [363 x 3025]
    assert 0 < F.conv_workspace_peak() <= 192 * 2**20


def test_conv2d_errors():
    x = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"conv2d: weight expects 3 channels per group x 1 groups = 3 input channels, but x has C=4"):
        F.conv2d(x, np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="conv2d: groups=3 does not divide the input channels C=4"):
        F.conv2d(x, np.zeros((3, 1, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match="conv2d: groups=2 does not divide the filters O=3"):
        F.conv2d(x, np.zeros((3, 2, 3, 3), np.float32), groups=2)
    with pytest.raises(ValueError, match=r"conv2d: kernel \(9, 9\) is larger than the padded input 8x8"):
        F.conv2d(x, np.zeros((2, 4, 9, 9), np.float32))
    with pytest.raises(ValueError, match=r"conv2d: x must have 4 dims, got shape \(4, 8, 8\)"):
        F.conv2d(x[0], np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(TypeError, match="conv2d: weight has dtype float64 but x has float32"):
        F.conv2d(x, np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(2,\)"):
        F.conv2d(x, np.zeros((2, 4, 3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="conv2d: stride must be >= 1"):
        F.conv2d(x, np.zeros((2, 4, 3, 3), np.float32), stride=0)
    with pytest.raises(TypeError, match="conv2d: padding must be an int or a pair"):
        F.conv2d(x, np.zeros((2, 4, 3, 3), np.float32), padding="same")
    with pytest.raises(TypeError, match="conv2d: x must be float32 or float64"):
        F.conv2d(x.astype(np.int32), np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"col2im: cols must have shape \(36, 36\)"):
        F.col2im(np.zeros((5, 5)), (1, 4, 8, 8), 3)
    for shape in ((2, 4, 0, 0), (2, 4, 3, 0), (0, 4, 3, 3)):
        with pytest.raises(ValueError, match=r"conv2d: weight \(filters, channels per group, KH, KW\) must have"):
            F.conv2d(x, np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: kernel_size must be >= 1, got \(3, 0\)"):
        tn.nn.Conv2d(4, 2, (3, 0))


@pytest.mark.parametrize("keep", [0, 10**9])
def test_kept_and_rebuilt_columns_give_identical_gradients(rng, keep):
    x = rng.standard_normal((3, 4, 9, 9))
    w = rng.standard_normal((6, 2, 3, 3))
    gy = rng.standard_normal((3, 6, 9, 9))

    def run():
        xt, wt = tn.tensor(x, requires_grad=True), tn.tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, padding=1, groups=2)
        saved = y._creator.saved[2] is not None  # the columns, kept from forward
        y.backward(gy)
        return saved, xt.grad, wt.grad

    old = F.set_conv_keep_columns(keep)
    try:
        saved, gx, gw = run()
    finally:
        F.set_conv_keep_columns(old)
    assert saved == bool(keep)
    ref_gx, ref_gw, _ = conv2d_backward_naive(x, w, gy, (1, 1), (1, 1), 2)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-12, atol=1e-12)
    for bad in (-1, True, 2.0**20, None):  # True is no byte count, though Python calls it an int
        with pytest.raises(ValueError, match="set_conv_keep_columns: nbytes must be an int >= 0"):
            F.set_conv_keep_columns(bad)


def test_the_workspace_budget_defaults_by_device_and_a_set_one_holds_for_both(monkeypatch):
    """Unset (None), the budget is DEFAULT_WORKSPACE's for where the arrays live: 192 MiB on the
    CPU and on a GPU (a module other than NumPy), each looked up by its own key (told apart below
    with made-up values); a set budget holds for both, and None puts the defaults back.  The
    chunks follow it: conv1 needs 5.6 MB an image (4.4 MB of columns, 1.2 MB of GEMM output):
    6 fit in 32 MiB, so 16 images go in 3 chunks (of 6, 6 and 4), and all 16 in one in 192 MiB."""
    from tinynet.ops import conv
    from tinynet.ops.conv import DEFAULT_WORKSPACE, _chunk_images, get_conv_workspace

    class OtherModule:  # stands for CuPy: anything but NumPy
        pass

    per_image = (363 + 96) * 3025 * 4
    old = F.set_conv_workspace(None)
    try:
        assert DEFAULT_WORKSPACE == {"cpu": 192 * 2**20, "gpu": 192 * 2**20}
        assert F.get_conv_workspace() == get_conv_workspace(np) == get_conv_workspace(OtherModule) == 192 * 2**20
        assert _chunk_images(16, per_image) == _chunk_images(16, per_image, OtherModule) == 16
        monkeypatch.setattr(conv, "DEFAULT_WORKSPACE", {"cpu": 32 * 2**20, "gpu": 3 * 2**30})
        assert get_conv_workspace(np) == 32 * 2**20 and get_conv_workspace(OtherModule) == 3 * 2**30
        assert _chunk_images(16, per_image) == 6 and _chunk_images(16, per_image, OtherModule) == 16
        assert F.set_conv_workspace(2**20) is None  # the previous value: the defaults
        assert get_conv_workspace(np) == get_conv_workspace(OtherModule) == 2**20
        assert F.set_conv_workspace(None) == 2**20
        assert get_conv_workspace(np) == 32 * 2**20
        for bad in (0, -1, 1.5, True, "32"):
            with pytest.raises(ValueError, match=r"set_conv_workspace: nbytes must be a positive int or None "
                                                 r"\(the defaults\), got "):
                F.set_conv_workspace(bad)
        assert get_conv_workspace(np) == 32 * 2**20  # a refused value changes nothing
    finally:
        F.set_conv_workspace(old)


# tracemalloc also counts the Python objects made along the way (a few KB)
PYTHON_OBJECTS = 32 * 2**10


def held_after_a_step(x, w, workspace, keep=64 * 2**20, algorithm="im2col"):
    """Run forward and backward within a workspace budget; return (columns kept from forward?,
    the peak pass by role, bytes still held once every output is dropped: the reused buffers).
    By im2col unless ``algorithm`` says "auto" (the byte counts below are im2col's)."""
    old_budget, old_keep = F.set_conv_workspace(workspace), F.set_conv_keep_columns(keep)
    old_algorithm = F.set_conv_algorithm(algorithm)
    tracemalloc.start()  # NumPy reports its arrays to tracemalloc
    try:
        release_workspace()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        F.conv_workspace_peak(reset=True)
        xt, wt = tn.tensor(x, requires_grad=True), tn.tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt)
        kept = y._creator.saved[2] is not None
        y.backward(np.ones(y.shape))
        np.testing.assert_allclose(xt.grad, conv2d_backward_naive(x, w, np.ones(y.shape))[0], rtol=1e-12)
        del y, xt, wt
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        release_workspace()
        F.set_conv_workspace(old_budget)
        F.set_conv_keep_columns(old_keep)
        F.set_conv_algorithm(old_algorithm)
    return kept, F.conv_workspace_peak(by_role=True), held


def test_winograd_tiles_are_the_columns_of_the_workspace():
    """By Winograd, V (16 rows per channel, a column per 2x2 output tile) takes the columns'
    place: kept within the keep cap, else rebuilt, and backward cut into chunks of images."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((5, 3, 3, 3))  # 4x4 out: 2x2 tiles
    v, m, gv = 16 * 3 * 2 * 4 * 8, 16 * 5 * 2 * 4 * 8, 16 * 3 * 2 * 4 * 8  # whole batch, bytes
    kept, roles, _ = held_after_a_step(x, w, workspace=10**9, keep=v, algorithm="auto")
    assert kept and roles == {"kept_columns": v, "gemm_output": m, "column_grad": gv}
    kept, roles, _ = held_after_a_step(x, w, workspace=(m + gv) // 2, keep=v, algorithm="auto")
    assert kept and roles == {"kept_columns": v, "gemm_output": m // 2, "column_grad": gv // 2}
    kept, roles, _ = held_after_a_step(x, w, workspace=10**9, keep=v - 1, algorithm="auto")
    assert not kept and roles == {"columns": v, "gemm_output": m, "column_grad": gv}


def test_the_gemm_output_is_inside_the_workspace_budget():
    """A 1x1 convolution with many filters (as 64 -> 2048 at batch 32 on 56x56, whose columns
    are 26 MB and whose GEMM output is 822 MB): small columns, a huge GEMM output. Here, scaled
    down: 64 KB of columns, 4 MB of GEMM output, a 1 MiB budget. The output must be cut into
    chunks, in forward and backward, whether the columns are kept or rebuilt, counted in the
    peak, and the buffers held between calls must stay within the budget."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 4, 16, 16)), rng.standard_normal((256, 4, 1, 1))
    budget = 2**20
    for keep, columns_role in ((2**20, "kept_columns"), (0, "columns")):
        kept, roles, held = held_after_a_step(x, w, budget, keep=keep)
        assert kept == bool(keep)
        # the largest pass: forward's when the columns are kept (it has no columns role and takes
        # two images per chunk), backward's when they are rebuilt (one image per chunk)
        assert columns_role in roles and "gemm_output" in roles
        assert roles["gemm_output"] == 256 * 16 * 16 * 8 * (2 if keep else 1)  # of 4 MB for 8 images
        assert 0 < sum(roles.values()) - (roles[columns_role] if keep else 0) <= budget
        assert held <= budget + PYTHON_OBJECTS, f"{held} bytes held between calls, budget {budget}"


def test_kept_columns_have_their_own_cap_and_backward_reads_them_in_chunks():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((5, 3, 3, 3))
    cols, out = 3 * 9 * 2 * 16 * 8, 5 * 2 * 16 * 8           # whole batch: 6,912 and 1,280 bytes
    kept, roles, _ = held_after_a_step(x, w, workspace=10**9, keep=cols)  # at the cap: kept
    assert kept and roles == {"kept_columns": cols, "gemm_output": out, "column_grad": cols}
    # a budget for one image's gradient rows and column gradient: backward in two chunks
    kept, roles, _ = held_after_a_step(x, w, workspace=(cols + out) // 2, keep=cols)
    assert kept and roles == {"kept_columns": cols, "gemm_output": out // 2, "column_grad": cols // 2}
    kept, roles, _ = held_after_a_step(x, w, workspace=10**9, keep=cols - 1)  # over the keep cap
    assert not kept and roles == {"columns": cols, "gemm_output": out, "column_grad": cols}


def test_a_pass_over_the_budget_is_reported_and_not_held():
    """One image alone needs more than the budget: the pass still runs (one image per chunk),
    the peak shows it, and its buffer is freed afterwards instead of held."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((3, 2, 10, 10)), rng.standard_normal((4, 2, 3, 3))
    kept, roles, held = held_after_a_step(x, w, workspace=1000, keep=0)  # columns rebuilt
    one_image = (2 * 9 * 2 + 4) * 64 * 8                       # columns, column grad, GEMM output
    assert not kept and sum(roles.values()) == one_image > 1000
    assert held < min(one_image, PYTHON_OBJECTS)


# ----------------------------------------------------------------------------
# Winograd's F(2x2, 3x3) and F(4x4, 5x5): every 3x3 and 5x5, stride-1 convolution on the CPU
# ----------------------------------------------------------------------------

@st.composite
def winograd_geometry(draw):
    groups, k = draw(st.integers(1, 3)), draw(st.sampled_from([3, 5]))
    pad = (draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1)))
    g = dict(n=draw(st.integers(0, 3)), groups=groups, c=groups * draw(st.integers(1, 3)),
             o=groups * draw(st.integers(1, 3)), kh=k, kw=k, sh=1, sw=1, ph=pad[0], pw=pad[1],
             h=draw(st.integers(max(1, k - 2 * pad[0]), 11)), w=draw(st.integers(max(1, k - 2 * pad[1]), 11)))
    return g


def conv_by_winograd(x, w, b, g, relu=False):
    """F.conv2d on a 3x3 or 5x5, stride-1 geometry by Winograd (also for 0 and 1 images, which
    "auto" runs by im2col), checking that it took that path."""
    old = F.set_conv_algorithm("winograd")
    try:
        y = F.conv2d(x, w, b, (1, 1), (g["ph"], g["pw"]), g["groups"], relu=relu)
    finally:
        F.set_conv_algorithm(old)
    if y._creator is not None:  # (gradcheck's perturbed evaluations run without a graph)
        assert y._creator.describe()["algorithm"] == "winograd"
    return y


@pytest.mark.parametrize("path", PATHS)
@given(winograd_geometry(), st.booleans(), st.booleans())
def test_winograd_convolution_matches_the_naive_twins(path, g, relu, with_bias):
    """Forward and all three gradients against the naive loops, float64, with and without the
    ReLU in the output pass, down every code path (chunks of one image, threads, NumPy loops);
    an empty batch too."""
    rng = np.random.default_rng(7)
    x, w, b = make(g, rng)
    p = (g["ph"], g["pw"])
    xt, wt = tn.tensor(x, requires_grad=True), tn.tensor(w, requires_grad=True)
    bt = tn.tensor(b, requires_grad=True) if with_bias else None
    with conv_path(path):
        y = conv_by_winograd(xt, wt, bt, g, relu)
        want = conv2d_naive(x, w, b if with_bias else None, (1, 1), p, g["groups"])
        if relu:
            want = np.maximum(want, 0)
        assert np.allclose(y.data, want, rtol=1e-12, atol=1e-12)
        gy = rng.standard_normal(y.shape)
        y.backward(gy)
    gy = gy * (want > 0) if relu else gy
    gx, gw = conv2d_backward_naive(x, w, gy, (1, 1), p, g["groups"])[:2]
    assert np.allclose(xt.grad, gx, rtol=1e-12, atol=1e-12) and np.allclose(wt.grad, gw, rtol=1e-12, atol=1e-12)
    if with_bias:
        assert np.allclose(bt.grad, gy.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@given(winograd_geometry())
def test_winograd_convolution_gradcheck_float64(path, g):
    rng = np.random.default_rng(8)
    x, w, b = make(g, rng)
    if g["n"] == 0:
        return
    with conv_path(path):
        gradcheck(lambda x, w, b: conv_by_winograd(x, w, b, g, relu=True), [x, w, b], max_checks=60)


def test_the_algorithm_setting_chooses_and_refuses(rng):
    """"im2col" runs a 3x3 stride-1 convolution by im2col, "auto" by Winograd from two images
    on (one image by im2col) and a 5x5 one from one image on, "winograd" always, to float32's
    rounding of each other; other kernels and strides always run im2col; an unknown name is
    refused, naming the setting."""
    x = tn.tensor(rng.standard_normal((2, 8, 13, 13)).astype(np.float32))
    w = tn.tensor((0.1 * rng.standard_normal((6, 4, 3, 3))).astype(np.float32), requires_grad=True)
    assert F.get_conv_algorithm() == "auto"
    y_auto = F.conv2d(x, w, None, 1, 1, 2)
    old = F.set_conv_algorithm("im2col")
    try:
        y_im2col = F.conv2d(x, w, None, 1, 1, 2)
    finally:
        F.set_conv_algorithm(old)
    assert y_auto._creator.describe()["algorithm"] == "winograd"
    assert y_im2col._creator.describe()["algorithm"] == "im2col"
    assert np.allclose(y_auto.data, y_im2col.data, rtol=1e-5, atol=1e-5)
    strided = F.conv2d(x, w, None, 2, 1, 2)
    assert strided._creator.describe()["algorithm"] == "im2col"
    one = tn.tensor(x.data[:1])
    assert F.conv2d(one, w, None, 1, 1, 2)._creator.describe()["algorithm"] == "im2col"
    w5 = tn.tensor((0.1 * rng.standard_normal((6, 4, 5, 5))).astype(np.float32), requires_grad=True)
    assert F.conv2d(one, w5, None, 1, 2, 2)._creator.describe()["algorithm"] == "winograd"
    assert F.conv2d(one, w5, None, 2, 2, 2)._creator.describe()["algorithm"] == "im2col"
    assert F.conv2d(tn.tensor(x.data[:0]), w5, None, 1, 2, 2).shape == (0, 6, 13, 13)
    old = F.set_conv_algorithm("winograd")
    try:
        assert F.conv2d(one, w, None, 1, 1, 2)._creator.describe()["algorithm"] == "winograd"
        assert F.conv2d(x, w, None, (1, 2), 1, 2)._creator.describe()["algorithm"] == "im2col"
    finally:
        F.set_conv_algorithm(old)
    with pytest.raises(ValueError, match="set_conv_algorithm: expected one of"):
        F.set_conv_algorithm("fft")
