"""SGD(update_in_backward=True): the fully connected layers' weights updated by their backward,
with the same bits as backward and then step(), and refused or declined wherever that could not
hold."""

import copy
import warnings
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinynet as tn
import tinynet.functional as F
from tinynet import nn, optim
from tinynet.ops import cpu_kernels, cpu_loops, linear


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def mlp(dtype=np.float32):
    tn.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1, dtype=dtype), relu=nn.ReLU(), pool=nn.MaxPool2d(3, 2),
        flat=nn.Flatten(), fc1=nn.Linear(4 * 3 * 3, 40, dtype=dtype), relu1=nn.ReLU(),
        drop=nn.Dropout(0.5), fc2=nn.Linear(40, 7, dtype=dtype)))


def train(net, opt, batches):
    losses = []
    for x, y in batches:
        loss = F.cross_entropy(net(tn.tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def batches(sizes, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 3, 7, 7)).astype(dtype), rng.integers(0, 7, n)) for n in sizes]


def one_layer(n_in=4, n_out=3):
    """A Linear layer, an SGD that updates it in backward (kept alive by the caller) and an input
    of two rows of ones."""
    tn.manual_seed(0)
    fc = nn.Linear(n_in, n_out)
    opt = optim.SGD(fc.parameters(), lr=0.1, update_in_backward=True)
    return fc, opt, tn.tensor(np.ones((2, n_in), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loops", ["compiled", "numpy"])
def test_training_gives_the_bits_of_backward_then_step(dtype, loops):
    # batch 40 takes the GEMM route for the weight gradient: backward declines there, step() updates
    data = batches([5, 1, 32, 40, 8], dtype)
    with _loops(loops):
        plain, fused = mlp(dtype), mlp(dtype)
        fused.load_state_dict(plain.state_dict())
        opt_plain = optim.SGD(plain.parameters(), lr=0.05, weight_decay=1e-3)
        opt = optim.SGD(fused.parameters(), lr=0.05, weight_decay=1e-3, update_in_backward=True)
        tn.manual_seed(3)  # the same dropout masks
        a = train(plain, opt_plain, data)
        tn.manual_seed(3)
        b = train(fused, opt, data)
    assert a == b
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        assert same_bits(p.data, q.data), name
    for v, u in zip(opt_plain.velocity, opt.velocity):
        assert same_bits(v, u)


class _loops:
    def __init__(self, which):
        self.which = which

    def __enter__(self):
        self.before = cpu_loops.get_cpu_loops()
        tn.set_cpu_loops(self.which)

    def __exit__(self, *exc):
        tn.set_cpu_loops(self.before)


def test_the_fc_weights_get_no_grad_and_the_rest_do():
    net = mlp()
    opt = optim.SGD(net.parameters(), lr=0.01, update_in_backward=True)
    (x, y), = batches([6])
    F.cross_entropy(net(tn.tensor(x)), y).backward()
    names = dict(net.named_parameters())
    assert names["fc1.weight"].grad is None and names["fc2.weight"].grad is None
    assert all(p.grad is not None for n, p in names.items() if not n.endswith("fc1.weight") and not n.endswith("fc2.weight"))
    before = names["fc1.weight"].data.copy()
    opt.step()  # the fc weights were updated in backward: step() leaves them
    assert same_bits(before, names["fc1.weight"].data)


def test_a_second_backward_before_step_is_refused_before_any_gradient():
    net = mlp()
    opt = optim.SGD(net.parameters(), lr=0.01, update_in_backward=True)
    (x, y), = batches([6])
    F.cross_entropy(net(tn.tensor(x)), y).backward()
    loss = F.cross_entropy(net(tn.tensor(x)), y)
    grads = {n: None if p.grad is None else p.grad.copy() for n, p in net.named_parameters()}
    with pytest.raises(RuntimeError, match="already updated by an earlier backward .* call step\\(\\) after each backward"):
        loss.backward()
    for n, p in net.named_parameters():  # nothing delivered
        assert (p.grad is None) == (grads[n] is None) and (p.grad is None or same_bits(p.grad, grads[n]))
    opt.step()
    loss = F.cross_entropy(net(tn.tensor(x)), y)
    opt.zero_grad()
    loss.backward()  # after step() it runs again
    opt.step()


def test_a_weight_used_twice_takes_its_gradient_and_step_with_a_warning():
    tn.manual_seed(0)
    fc = nn.Linear(6, 6)
    opt = optim.SGD(fc.parameters(), lr=0.1, update_in_backward=True)
    ref = nn.Linear(6, 6)
    ref.load_state_dict(fc.state_dict())
    opt_ref = optim.SGD(ref.parameters(), lr=0.1)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    for net, o in ((ref, opt_ref), (fc, opt)):
        out = net(net(tn.tensor(x))).sum()  # the same weight in two products
        o.zero_grad()
        if net is fc:
            with pytest.warns(UserWarning, match=r"parameter 0 \(shape \(6, 6\)\) is updated by step\(\), not in "
                                                 r"backward: it is an input of more than one op"):
                out.backward()
            assert fc.weight.grad is not None
        else:
            out.backward()
        o.step()
    assert same_bits(fc.weight.data, ref.weight.data)


def test_a_view_of_the_weight_elsewhere_in_the_graph_declines():
    fc, opt, x = one_layer(5, 5)
    other = tn.tensor(fc.weight.data, requires_grad=True)  # the same memory, another tensor
    out = (fc(x) @ other).sum()
    with pytest.warns(UserWarning, match="shares its memory with one"):
        out.backward()
    assert fc.weight.grad is not None
    opt.step()


def test_retain_graph_and_an_existing_grad_decline():
    fc, opt, x = one_layer()
    out = fc(x).sum()
    with pytest.warns(UserWarning, match=r"backward\(retain_graph=True\)"):
        out.backward(retain_graph=True)
    g = fc.weight.grad.copy()
    out.backward()  # adds to the .grad: declined again (said once), and the sum is right
    assert same_bits(fc.weight.grad, g + g)
    opt.step()


def test_the_newest_optimiser_decides_and_a_copy_is_not_updated_in_backward():
    net = mlp()
    first = optim.SGD(net.parameters(), lr=0.01, update_in_backward=True)  # noqa: F841  (kept alive)
    twin = copy.deepcopy(net)
    (x, y), = batches([4])
    F.cross_entropy(twin(tn.tensor(x)), y).backward()
    assert all(p.grad is not None for p in twin.parameters())  # a copy: nothing registered
    opt = optim.SGD(net.parameters(), lr=0.01)  # without the option: takes it back
    F.cross_entropy(net(tn.tensor(x)), y).backward()
    assert all(p.grad is not None for p in net.parameters())
    opt.step()


def test_an_updated_weight_refuses_a_graph_that_saved_it():
    fc, opt, x = one_layer()  # opt kept alive: it updates in backward
    first, second = fc(x).sum(), fc(x).sum()
    first.backward()  # updates the weight in place
    with pytest.raises(RuntimeError, match="was modified in place after forward"):
        second.backward()


@settings(max_examples=40, deadline=None)
@given(batch=st.one_of(st.integers(0, 9), st.integers(60, 70)), rows=st.integers(1, 20),
       length=st.one_of(st.integers(1, 90), st.integers(250, 600)),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31 - 1),
       lr=st.floats(0, 1), m=st.floats(0, 1), wd=st.floats(0, 0.1))
def test_outer_sum_sgd_gives_outer_sum_then_sgd_update_bits(batch, rows, length, dtype, seed, lr, m, wd):
    rng = np.random.default_rng(seed)
    gy, x = (rng.standard_normal(s).astype(dtype) for s in ((batch, rows), (batch, length)))
    w, v = (rng.standard_normal((rows, length)).astype(dtype) for _ in range(2))
    want_w, want_v = w.copy(), v.copy()
    g = cpu_kernels.outer_sum(gy, x)
    cpu_kernels.sgd_update(want_w.reshape(-1), g.reshape(-1), want_v.reshape(-1), lr, m, wd)
    for module in (cpu_kernels, cpu_loops):
        ww, vv = w.copy(), v.copy()
        module.outer_sum_sgd(gy, x, ww, vv, lr, m, wd)
        assert same_bits(ww, want_w) and same_bits(vv, want_v), module.__name__


def test_outer_sum_sgd_in_several_tiles_of_x_gives_the_same_bits():
    # a single vector's tile is STEP_TILE_BYTES (64 KB) long: 17,000 columns take two, the last short
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        gy, x = rng.standard_normal((1, 7)).astype(dtype), rng.standard_normal((1, 17000)).astype(dtype)
        w, v = (rng.standard_normal((7, 17000)).astype(dtype) for _ in range(2))
        want_w, want_v, got_w, got_v = w.copy(), v.copy(), w.copy(), v.copy()
        cpu_kernels.outer_sum_sgd(gy, x, want_w, want_v, 0.01, 0.9, 5e-4)
        cpu_loops.outer_sum_sgd(gy, x, got_w, got_v, 0.01, 0.9, 5e-4)
        assert same_bits(got_w, want_w) and same_bits(got_v, want_v)


def test_outer_sum_sgd_refuses_mismatched_arrays():
    gy, x = np.ones((2, 3), np.float32), np.ones((2, 5), np.float32)
    for module in (cpu_kernels, cpu_loops):
        with pytest.raises(ValueError, match=r"outer_sum_sgd: expected w and v of shape \(O, I\) with O = gy.shape\[1\] = 3"):
            module.outer_sum_sgd(gy, x, np.ones((4, 5), np.float32), np.ones((4, 5), np.float32), 0.1, 0.9, 0.0)
        with pytest.raises(ValueError, match="outer_sum_sgd: w and v must be C-contiguous"):
            module.outer_sum_sgd(gy, x, np.ones((5, 3), np.float32).T, np.ones((3, 5), np.float32), 0.1, 0.9, 0.0)


def test_it_runs_only_where_the_weight_gradient_is_a_sum_of_outer_products():
    assert set(linear.OUTER_SUM_BATCH) == set(range(1, 33))
    net = mlp()
    opt = optim.SGD(net.parameters(), lr=0.01, update_in_backward=True)  # noqa: F841  (kept alive)
    (x, y), = batches([33])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a route that does not run: no warning, the usual gradient
        F.cross_entropy(net(tn.tensor(x)), y).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_an_optimiser_that_is_gone_updates_nothing_and_is_not_kept_alive():
    import gc
    import weakref

    net = mlp()
    opt = optim.SGD(net.parameters(), lr=0.01, update_in_backward=True)
    gone = weakref.ref(opt)
    del opt
    gc.collect()
    assert gone() is None  # autograd's registry held it only weakly
    (x, y), = batches([4])
    F.cross_entropy(net(tn.tensor(x)), y).backward()
    assert all(p.grad is not None for p in net.parameters())  # the usual gradients, no update


def test_a_plain_tensor_declines_since_its_memory_is_not_tracked():
    w = tn.tensor(np.ones((3, 5), np.float32), requires_grad=True)
    opt = optim.SGD([w], lr=0.1, update_in_backward=True)
    x = tn.tensor(np.ones((2, 5), np.float32))
    with pytest.warns(UserWarning, match="it is not an nn.Parameter"):
        F.linear(x, w).sum().backward()
    assert w.grad is not None
    opt.step()


def test_an_offer_declined_later_is_withdrawn():
    fc, opt, x = one_layer()
    out = fc(x).sum()
    fn = out._creator.inputs[0]._creator  # the Linear op, under the sum
    fn.updates = {1: opt.in_backward[0]}  # as a refused or failed earlier backward might leave it
    fc.weight.grad = np.zeros(fc.weight.shape, np.float32)  # a .grad to add to: declined this time
    with pytest.warns(UserWarning, match="already holds a gradient"):
        out.backward()
    assert not opt.in_backward[0].pending and np.any(fc.weight.grad != 0)
    opt.step()
