import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinynet as tn
import tinynet.functional as F
from tinynet.gradcheck import gradcheck
from tinynet.ops.activation import relu_naive
from tinynet.ops.loss import cross_entropy_naive

from conftest import shuffled_linspace

small_shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@given(small_shapes)
def test_relu_and_tanh(shape):
    rng = np.random.default_rng(0)
    x = shuffled_linspace(shape, rng, -2, 2)  # no element at the kink 0
    assert np.array_equal(F.relu(x).data, relu_naive(x))
    gradcheck(F.relu, [x])
    gradcheck(F.tanh, [x])
    assert np.allclose(F.tanh(x).data, np.tanh(x))


@given(st.integers(1, 6), st.integers(1, 7), st.integers(1, 5), st.booleans())
def test_linear_gradcheck(n, fin, fout, bias):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin)), rng.standard_normal(fout)
    if bias:
        gradcheck(F.linear, [x, w, b])
        assert np.allclose(F.linear(x, w, b).data, x @ w.T + b)
    else:
        gradcheck(F.linear, [x, w])


@given(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7), st.booleans())
def test_linear_small_batch_routes_by_weight_rows_and_outer_product(n, fin, fout, routes):
    # blocks of 2 weight rows here (512 in use), so that most weights have several blocks and
    # an uneven last one; the weight gradient is a sum of outer products (one product at batch 1)
    from tinynet.ops import linear
    rng = np.random.default_rng(n * 100 + fin * 10 + fout)
    x, w, b = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin)), rng.standard_normal(fout)
    gy = rng.standard_normal((n, fout))
    saved = linear.WEIGHT_ROWS, linear.SMALL_BATCH_ROUTES
    linear.WEIGHT_ROWS, linear.SMALL_BATCH_ROUTES = 2, routes
    try:
        assert np.allclose(linear.forward_gemm(x, w), x @ w.T, rtol=1e-13, atol=1e-13)
        assert np.allclose(linear.weight_grad_gemm(gy, x), gy.T @ x, rtol=1e-13, atol=1e-13)
        if n == 1:  # one product per entry, rounded once either way
            assert np.array_equal(linear.weight_grad_gemm(gy, x), np.outer(gy, x))
        gradcheck(F.linear, [x, w, b])
    finally:
        linear.WEIGHT_ROWS, linear.SMALL_BATCH_ROUTES = saved


@given(st.integers(1, 40), st.integers(0, 600), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31),
       st.integers(1, 5))
def test_linear_at_batch_one_is_the_matrix_vector_product_within_its_rounding(fout, fin, dtype, seed, batch):
    # at batch 1-4 the CPU runs x @ w.T as matrix-vector products (cpu loops' matvec), each
    # output a sum of fin products in a fixed order of its own, not OpenBLAS's: whatever the
    # order, a sum of n products is within gamma_n * sum |w| |x| of the exact one, gamma_n =
    # n u / (1 - n u) (Higham, Accuracy and Stability of Numerical Algorithms, 3.1); batch 5
    # takes the blocks of weight rows
    from tinynet.ops import cpu_kernels, linear
    from tinynet.ops.cpu_loops import set_cpu_loops
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((batch, fin)).astype(dtype), rng.standard_normal((fout, fin)).astype(dtype)
    y = linear.forward_gemm(x, w)
    assert y.shape == (batch, fout) and y.dtype == dtype
    wide = np.longdouble if dtype == np.float64 else np.float64  # products exact or nearly, sums far finer
    exact = x.astype(wide) @ w.T.astype(wide)
    u = np.finfo(dtype).eps / 2
    gamma = fin * u / (1 - fin * u)
    bound = gamma * (np.abs(x).astype(wide) @ np.abs(w.T).astype(wide))
    assert np.all(np.abs(y.astype(wide) - exact) <= 1.01 * bound)
    if batch not in linear.MATVEC_BATCH:
        return
    assert np.array_equal(y, cpu_kernels.matvec(w, x))  # the route taken: the NumPy twin's bits
    old = set_cpu_loops("numpy")
    try:
        assert np.array_equal(F.linear(x, w).data, y)  # and the NumPy loops take it too
    finally:
        set_cpu_loops(old)



@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 300), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**31))
def test_linear_weight_gradient_at_a_small_batch_is_the_sum_of_outer_products_within_its_rounding(
        batch, fout, fin, dtype, seed):
    # at batch 1-32 the CPU writes gy.T @ x as the sum of the batch's outer products (cpu loops'
    # outer_sum), each entry's products added in order, not OpenBLAS's: within gamma_n * sum |gy| |x|
    # of the exact sum, as any order of n products (Higham 3.1); batch 33-40 takes OpenBLAS's route
    from tinynet.ops import cpu_kernels, linear
    from tinynet.ops.cpu_loops import set_cpu_loops
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((batch, fin)).astype(dtype), rng.standard_normal((fout, fin)).astype(dtype)
    gy = rng.standard_normal((batch, fout)).astype(dtype)
    gw = linear.weight_grad_gemm(gy, x)
    assert gw.shape == (fout, fin) and gw.dtype == dtype
    wide = np.longdouble if dtype == np.float64 else np.float64
    exact = gy.T.astype(wide) @ x.astype(wide)
    u = np.finfo(dtype).eps / 2
    gamma = batch * u / (1 - batch * u)
    assert np.all(np.abs(gw.astype(wide) - exact) <= 1.01 * gamma * (np.abs(gy.T).astype(wide) @ np.abs(x).astype(wide)))
    if batch in linear.OUTER_SUM_BATCH:
        assert np.array_equal(gw, cpu_kernels.outer_sum(gy, x))  # the route taken: the NumPy twin's bits
        old = set_cpu_loops("numpy")
        try:  # and the NumPy loops take it too, in the backward pass
            xt, wt = tn.tensor(x, requires_grad=True), tn.tensor(w, requires_grad=True)
            F.linear(xt, wt).backward(gy)
            assert np.array_equal(wt.grad, gw)
        finally:
            set_cpu_loops(old)


@pytest.mark.parametrize("loops", ["compiled", "numpy"])
@pytest.mark.parametrize("batch", [1, 8, 48, 128])
def test_linear_weight_gradient_is_kept_as_grad_without_a_copy(monkeypatch, loops, batch):
    # every route's gw (the sum of outer products, rows shared between the threads, one GEMM) is
    # an array of its own, which autograd keeps as .grad: a copy of fc6's would move 151 MB more
    from tinynet.ops import linear
    from tinynet.ops.cpu_loops import set_cpu_loops
    made = []
    route = linear.weight_grad_gemm
    monkeypatch.setattr(linear, "weight_grad_gemm", lambda gy, x: made.append(route(gy, x)) or made[-1])
    old = set_cpu_loops(loops)
    try:
        rng = np.random.default_rng(batch)
        x = tn.tensor(rng.standard_normal((batch, 4096)).astype(np.float32))  # gw of 8 MB: stored past the cache
        w = tn.tensor(rng.standard_normal((520, 4096)).astype(np.float32), requires_grad=True)
        F.linear(x, w).sum().backward()
    finally:
        set_cpu_loops(old)
    assert len(made) == 1 and w.grad is made[0]


@given(st.integers(1, 6), st.integers(1, 8))
def test_softmax_family_and_cross_entropy(n, k):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((n, k)) * 3
    labels = rng.integers(0, k, n)
    p = F.softmax(z).data
    assert np.allclose(p.sum(1), 1) and np.allclose(np.log(p), F.log_softmax(z).data)
    gradcheck(F.softmax, [z])
    gradcheck(F.log_softmax, [z])
    gradcheck(lambda t: F.cross_entropy(t, labels), [z])
    assert np.isclose(F.cross_entropy(z, labels).item(), cross_entropy_naive(z, labels))


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 1e4, 0.0]], dtype=np.float32)
    loss = F.cross_entropy(tn.tensor(z, requires_grad=True), np.array([0, 1]))
    assert np.isfinite(loss.item()) and abs(loss.item()) < 1e-6
    assert np.isclose(F.cross_entropy(np.zeros((4, 1000)), np.arange(4)).item(), np.log(1000))


def test_cross_entropy_errors():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"cross_entropy: labels must be in \[0, 4\) for 4 classes, got values in \[0, 4\]"):
        F.cross_entropy(z, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"cross_entropy: labels must have shape \(3,\)"):
        F.cross_entropy(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="cross_entropy: labels must be integers"):
        F.cross_entropy(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="cross_entropy: logits must have 2 dims"):
        F.cross_entropy(np.zeros(3), np.array([0]))


def test_dropout_inverted_scaling_seeded_and_identity_in_eval():
    x = np.ones((200, 500), np.float32)
    y1 = F.dropout(x, 0.5, training=True, rng=np.random.default_rng(7)).data
    y2 = F.dropout(x, 0.5, training=True, rng=np.random.default_rng(7)).data
    assert np.array_equal(y1, y2)
    assert set(np.unique(y1)) == {0.0, 2.0}
    assert abs(y1.mean() - 1.0) < 0.02  # same expectation as the input
    assert np.array_equal(F.dropout(x, 0.5, training=False).data, x)
    # backward uses the same mask
    xt = tn.tensor(np.ones((4, 6)), requires_grad=True)
    y = F.dropout(xt, 0.3, rng=np.random.default_rng(1))
    y.sum().backward()
    assert np.array_equal(xt.grad, y.data)
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\)"):
        F.dropout(x, 1.0)
    with pytest.raises(TypeError, match=r"dropout: mask must have the dtype of x \(float32\), got float64"):
        F.dropout(x, 0.5, mask=np.ones((200, 500)))


def test_flatten_and_linear_errors():
    assert F.flatten(np.zeros((2, 3, 4, 5))).shape == (2, 60)
    with pytest.raises(ValueError, match=r"flatten: start_dim must be an int in \[0, 4\), got True"):
        F.flatten(np.zeros((2, 3, 4, 5)), start_dim=True)
    with pytest.raises(ValueError, match="Conv2d: stride must be >= 1"):
        tn.nn.Conv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="MaxPool2d: kernel_size must be >= 1"):
        tn.nn.MaxPool2d(0)
    with pytest.raises(ValueError, match="SGD: momentum must be a finite number >= 0, got True"):
        tn.optim.SGD([tn.nn.Parameter(np.ones(2))], momentum=True)
    with pytest.raises(ValueError, match="linear: x has 5 features but weight"):
        F.linear(np.zeros((2, 5)), np.zeros((3, 4)))
    with pytest.raises(TypeError, match="linear: weight has dtype float64 but x has float32"):
        F.linear(np.zeros((2, 4), np.float32), np.zeros((3, 4)))
