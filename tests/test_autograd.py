import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinynet as tn
import tinynet.functional as F
from tinynet.gradcheck import gradcheck

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def broadcast_shapes(draw):
    """A shape and one that broadcasts against it (leading dims dropped, some set to 1)."""
    a = draw(shapes)
    b = list(a)
    b = b[draw(st.integers(0, len(b))):]  # drop leading dims
    b = [1 if draw(st.booleans()) else n for n in b]
    if draw(st.booleans()):
        return a, tuple(b)
    return tuple(b), a


@given(broadcast_shapes(), st.sampled_from(["add", "sub", "mul", "div"]))
def test_binary_ops_broadcast_gradients(shapes_ab, op):
    a_shape, b_shape = shapes_ab
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape)
    b = rng.uniform(0.5, 2.0, b_shape) * rng.choice([-1, 1], b_shape)  # away from 0 for div
    f = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
         "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    gradcheck(f, [a, b])


@given(shapes, st.data())
def test_reductions_and_shape_ops(shape, data):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape)
    axis = data.draw(st.one_of(st.none(), st.integers(0, max(len(shape) - 1, 0)))) if shape else None
    keep = data.draw(st.booleans())
    gradcheck(lambda x: x.sum(axis=axis, keepdims=keep), [a])
    gradcheck(lambda x: x.mean(axis=axis, keepdims=keep), [a])
    gradcheck(lambda x: (x.reshape(-1) * 2.0).reshape(shape), [a])
    if len(shape) >= 2:
        perm = tuple(data.draw(st.permutations(range(len(shape)))))
        gradcheck(lambda x: x.transpose(perm), [a])


def test_unary_ops_and_matmul(rng):
    a = rng.uniform(0.5, 2.0, (3, 4))
    b = rng.standard_normal((4, 5))
    gradcheck(lambda x: x.exp(), [a])
    gradcheck(lambda x: x.log(), [a])
    gradcheck(lambda x: x ** 3, [a])
    gradcheck(lambda x: -x, [a])
    gradcheck(lambda x, y: x @ y, [a, b])
    gradcheck(lambda x: 2.0 - x * 3.0 + 1.0 / x, [a])


def test_getitem_basic_and_repeated_indices(rng):
    a = rng.standard_normal((5, 4))
    gradcheck(lambda x: x[1:4, ::2], [a])
    gradcheck(lambda x: x[np.array([0, 2, 2, 4])], [a])  # repeated row: gradients add
    t = tn.tensor(a, requires_grad=True)
    t[np.array([1, 1, 1])].sum().backward()
    assert np.allclose(t.grad[1], 3.0) and np.allclose(t.grad[0], 0.0)


def test_concat_and_split_are_inverse_and_differentiable(rng):
    a, b = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 5, 2))
    gradcheck(lambda x, y: tn.concat([x, y], axis=1), [a, b])
    gradcheck(lambda x: tn.split(x, [1, 4, 3], axis=1)[1] * 2.0, [np.concatenate([a, b], 1)])
    x = tn.tensor(np.concatenate([a, b], axis=1))
    p, q = tn.split(x, [3, 5], axis=1)
    assert np.array_equal(p.data, a) and np.array_equal(q.data, b)
    # only one piece used: the other's gradient is zero
    x = tn.tensor(np.concatenate([a, b], axis=1), requires_grad=True)
    p, q = tn.split(x, 2, axis=2)
    q.sum().backward()
    assert np.array_equal(x.grad[..., 0], np.zeros((2, 8))) and np.array_equal(x.grad[..., 1], np.ones((2, 8)))


def test_deep_chain_without_recursion():
    x = tn.tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    assert np.allclose(x.grad, 1.0001 ** 10_000)


def test_gradient_accumulates_when_tensor_is_reused():
    x = tn.tensor(np.array([2.0, 3.0]), requires_grad=True)
    y = x * x + x  # x used three times
    y.sum().backward()
    assert np.allclose(x.grad, 2 * x.data + 1)
    # a diamond: both branches reach x through an intermediate
    x.grad = None
    h = x * 3.0
    (h * h + h).sum().backward()
    assert np.allclose(x.grad, 18 * x.data + 3)
    # a second backward adds into .grad (zero it between steps)
    before = x.grad.copy()
    (x * 2.0).sum().backward()
    assert np.allclose(x.grad, before + 2)


def test_a_leaf_that_feeds_an_add_does_not_change_the_gradients_still_on_their_way():
    """``a + b`` hands one array back to both inputs; a leaf input keeps it as its .grad while
    the other input's creator has yet to read it.  The leaf's next gradient must not be added
    into that shared array."""
    x = tn.tensor(np.array([1.0, 1.0]), requires_grad=True)
    ((x + x * 1.0) + x * 1.0).backward(np.ones(2))
    assert x.grad.tolist() == [3.0, 3.0]
    x, y = tn.tensor(np.ones(1), requires_grad=True), tn.tensor(np.ones(1), requires_grad=True)
    total = y * 2.0
    for _ in range(20):
        total = total + x
    total.sum().backward()
    assert y.grad.tolist() == [2.0] and x.grad.tolist() == [20.0]
    g = x.grad
    g *= 0.5  # still an array of its own
    assert y.grad.tolist() == [2.0]


@st.composite
def linear_graphs(draw):
    """A random graph of +, - and scaling over 1-3 leaves, some used many times, with the
    exact gradient of its sum: each node is tracked as its coefficient on every leaf."""
    leaves = draw(st.integers(1, 3))
    nodes = [("leaf", i) for i in range(leaves)]
    coefs = [np.eye(leaves)[i] for i in range(leaves)]
    for _ in range(draw(st.integers(1, 12))):
        a, b = draw(st.integers(0, len(nodes) - 1)), draw(st.integers(0, len(nodes) - 1))
        op = draw(st.sampled_from(["add", "sub", "scale"]))
        c = draw(st.sampled_from([0.5, 2.0, -1.0]))
        nodes.append((op, a, b, c))
        coefs.append(coefs[a] + coefs[b] if op == "add" else coefs[a] - coefs[b] if op == "sub" else c * coefs[a])
    ends = draw(st.lists(st.integers(0, len(nodes) - 1), min_size=1, max_size=3))
    return leaves, nodes, ends, sum(coefs[e] for e in ends)


@given(linear_graphs())
def test_gradients_of_random_graphs_of_sums_are_exact(graph):
    leaves, nodes, ends, expected = graph
    xs = [tn.tensor(np.ones(2), requires_grad=True) for _ in range(leaves)]
    values = []
    for node in nodes:
        if node[0] == "leaf":
            values.append(xs[node[1]])
            continue
        op, a, b, c = node
        values.append(values[a] + values[b] if op == "add" else values[a] - values[b] if op == "sub"
                      else values[a] * c)
    total = values[ends[0]]
    for e in ends[1:]:
        total = total + values[e]
    if not total.requires_grad:
        return
    total.backward(np.ones(2))  # a gradient array of its own from the start (sum's is a view)
    for i, x in enumerate(xs):
        got = np.zeros(2) if x.grad is None else x.grad
        np.testing.assert_array_equal(got, np.full(2, expected[i]))


def test_residual_block_on_an_input_that_needs_its_gradient():
    """x + conv(x, w1) + conv(x, w2): x is a leaf fed straight into an add."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5))
    w1, w2 = rng.standard_normal((2, 3, 3, 3, 3)) * 0.3
    r = rng.standard_normal((2, 3, 5, 5))

    def block(x, w1, w2):
        h = x + F.conv2d(x, w1, padding=1) + F.conv2d(x, w2, padding=1)
        return F.relu(h) * r

    gradcheck(block, [x, w1, w2])


def test_gradcheck_takes_float64_only():
    with pytest.raises(TypeError, match="gradcheck: input 0 must be float64, got float32"):
        gradcheck(lambda x: x * 2.0, [np.ones(3, np.float32)])


def test_graph_is_freed_after_backward():
    x = tn.tensor(np.ones(2), requires_grad=True)
    y = (x * 2.0).sum()
    y.backward()
    assert y._creator.saved == () and y._creator.inputs is None
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()
    z = (x * 2.0).sum()
    z.backward(retain_graph=True)
    z.backward()
    assert np.allclose(x.grad, 2 + 2 + 2)


def test_a_refused_backward_adds_no_gradient_anywhere():
    """The graph is checked before any gradient is delivered: a weight changed after forward
    refuses backward, and the other leaves keep no half-delivered gradient."""
    x = tn.tensor(np.ones(2))
    w1 = tn.tensor(np.ones(2), requires_grad=True)
    w2 = tn.tensor(np.ones(2), requires_grad=True)
    loss = (w1 * x).sum() + ((w2 * x) * 2.0).sum()
    w2._bump_version()                                   # as SGD.step or load_state_dict do
    with pytest.raises(RuntimeError, match="modified in place after forward"):
        loss.backward()
    assert w1.grad is None and w2.grad is None


def test_a_tensor_made_from_a_parameters_memory_shares_its_version_count():
    """tn.tensor(p.data), or a view of it, is the parameter's memory: an SGD step on p between
    its forward and backward refuses the graph, as it does for p itself."""
    p = tn.nn.Parameter(np.array([1.0, 2.0]))
    alias = tn.tensor(p.data, requires_grad=True)
    flipped = tn.tensor(p.data[::-1])
    assert alias._versions is p._versions and flipped._versions is p._versions
    assert tn.tensor(p.data.copy())._versions is not p._versions     # a copy is other memory
    loss = (alias * flipped).sum()
    p.grad = np.ones(2)
    tn.optim.SGD([p], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified in place after forward"):
        loss.backward()
    import copy
    q = copy.deepcopy(p)                                   # a copy: memory of its own, registered
    assert tn.tensor(q.data)._versions is q._versions and q._versions is not p._versions


def test_the_loss_and_dropout_keep_their_own_labels_and_mask():
    """A caller's label array or dropout mask refilled before backward (a reused batch buffer)
    does not change the gradient: the ops keep copies."""
    logits = tn.tensor(np.zeros((3, 4)), requires_grad=True)
    labels = np.array([0, 3, 1])
    loss = F.cross_entropy(logits, labels)
    labels[:] = 2
    loss.backward()
    expected = np.full((3, 4), 0.25)
    expected[[0, 1, 2], [0, 3, 1]] -= 1.0
    assert np.allclose(logits.grad, expected / 3)
    x = tn.tensor(np.ones(4), requires_grad=True)
    mask = np.array([2.0, 0.0, 2.0, 0.0])
    y = F.dropout(x, 0.5, mask=mask)
    mask[:] = 1.0
    y.sum().backward()
    assert np.array_equal(x.grad, [2.0, 0.0, 2.0, 0.0])


def test_an_integer_tensor_to_a_float_power_is_float64():
    """The dtype rule of the other ops: an integer tensor with a float number gives float64."""
    assert np.allclose((tn.tensor(np.array([2, 4])) ** -1.0).data, [0.5, 0.25])
    assert np.allclose((tn.tensor(np.array([4, 9])) ** 0.5).data, [2.0, 3.0])
    assert (tn.tensor(np.array([2, 4])) ** 2.0).dtype == np.float64
    assert (tn.tensor(np.array([2, 4])) ** 2).dtype == np.int64
    from fractions import Fraction
    assert np.allclose((tn.tensor(np.array([4, 9])) ** Fraction(1, 2)).data, [2.0, 3.0])
    with pytest.raises(ValueError, match=r"negative integer power \(-1\).*float exponent \(-1.0\)"):
        tn.tensor(np.array([2, 4])) ** -1


def test_no_grad_builds_no_graph():
    x = tn.tensor(np.ones(2), requires_grad=True)
    with tn.no_grad():
        y = x * 2.0
        assert not tn.is_grad_enabled()
    assert tn.is_grad_enabled()
    assert y._creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_detach_and_numpy():
    x = tn.tensor(np.arange(3.0), requires_grad=True)
    d = (x * 2.0).detach()
    assert d.is_leaf and not d.requires_grad
    assert isinstance(d.numpy(), np.ndarray) and d.shape == (3,)


def test_backward_errors():
    x = tn.tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match="grad can be omitted only"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"grad must have shape \(2, 2\)"):
        (x * 2.0).backward(np.ones(3))
    (x * 2.0).backward(np.ones((2, 2)))
    assert np.allclose(x.grad, 2.0)


def test_dtype_rules():
    a = tn.tensor(np.ones(2, np.float32))
    b = tn.tensor(np.ones(2, np.float64))
    with pytest.raises(TypeError, match="add: operands have different dtypes float32 and float64"):
        a + b
    assert (a * 2.5).dtype == np.float32  # Python numbers take the tensor's dtype
    with pytest.raises(TypeError, match="only floating-point tensors can require grad"):
        tn.tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="float16"):
        tn.tensor(np.ones(2, np.float16))


def test_shape_op_errors():
    x = tn.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\)"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match="split: sizes"):
        tn.split(x, [1, 1], axis=1)
    with pytest.raises(ValueError, match="concat: tensor 1 has shape"):
        tn.concat([x, tn.tensor(np.ones((3, 3)))], axis=1)
    with pytest.raises(ValueError, match="sum: axis 5 is out of range"):
        x.sum(axis=5)
    with pytest.raises(TypeError, match="mean: axis must be an int or a tuple of ints, got True"):
        x.mean(axis=True)  # a bool is an int to Python, and True would mean axis 1
