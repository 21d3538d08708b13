from collections import OrderedDict

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet import nn, optim


def tiny_net():
    tn.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1, groups=1), relu=nn.ReLU(),
        lrn=nn.LocalResponseNorm(3), pool=nn.MaxPool2d(3, 2),
        flat=nn.Flatten(), drop=nn.Dropout(0.5), fc=nn.Linear(4 * 3 * 3, 5)))


def test_module_registration_and_names():
    net = tiny_net()
    assert [n for n, _ in net.named_parameters()] == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    assert net.num_parameters() == 4 * 3 * 9 + 4 + 36 * 5 + 5
    assert net.conv.weight.shape == (4, 3, 3, 3)
    net.eval()
    assert not net.drop.training
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)
    a, b = net(x).data, net(x).data
    assert np.array_equal(a, b)  # eval: dropout off, deterministic
    assert "Conv2d(3, 4" in repr(net)


def test_state_dict_round_trip_and_strict_checks():
    net = tiny_net()
    state = net.state_dict()
    assert isinstance(state["fc.weight"], np.ndarray)
    other = tiny_net()
    for p in other.parameters():
        p.data[...] = 0
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        assert np.array_equal(v, state[k])
    state["fc.weight"][...] = 5  # a copy: the model is untouched
    assert not np.any(net.fc.weight.data == 5)
    bad = dict(state)
    del bad["fc.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['fc.bias'\]"):
        other.load_state_dict(bad)
    bad = dict(state, extra=np.zeros(1))
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        other.load_state_dict(bad)
    bad = dict(state, **{"fc.bias": np.zeros(6)})
    with pytest.raises(ValueError, match=r"fc.bias has shape \(6,\) in the state dict, the model expects \(5,\)"):
        other.load_state_dict(bad)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="Conv2d: groups=2 must divide in_channels=3"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="Linear: in_features must be a positive int"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match="Dropout: p must be in"):
        nn.Dropout(1.5)
    with pytest.raises(TypeError, match="Sequential: item '0' is a int"):
        nn.Sequential(3)


def test_sgd_follows_the_paper_rule():
    w0 = np.array([1.0, -2.0, 3.0])
    p = nn.Parameter(w0.copy())
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    v = np.zeros(3)
    w = w0.copy()
    for step in range(3):
        g = np.array([0.5, 0.25, -1.0]) * (step + 1)
        p.grad = g.copy()
        opt.step()
        v = 0.9 * v - 0.01 * 0.1 * w - 0.1 * g
        w = w + v
        assert np.allclose(p.data, w)
    opt.zero_grad()
    assert p.grad is None


def test_sgd_big_tensor_path_matches_small():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(3 * 2**20).astype(np.float32)
    g = rng.standard_normal(w.size).astype(np.float32)
    big, small = nn.Parameter(w.copy()), nn.Parameter(w[:1000].copy())
    ob, os_ = optim.SGD([big], lr=0.01), optim.SGD([small], lr=0.01)
    for _ in range(2):
        big.grad, small.grad = g.copy(), g[:1000].copy()
        ob.step(), os_.step()
    assert np.array_equal(big.data[:1000], small.data)


def test_sgd_state_round_trip_and_errors():
    p = nn.Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    state = opt.state_dict()
    q = nn.Parameter(p.data.copy())
    opt2 = optim.SGD([q], lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.1 and np.array_equal(opt2.velocity[0], opt.velocity[0])
    with pytest.raises(ValueError, match="SGD: lr must be a finite number >= 0"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="SGD: got an empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="SGD: parameter 1 .* is parameter 0 again"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="SGD: parameter 1 .* is parameter 0 again, or shares its memory"):
        optim.SGD([p, p.detach().requires_grad_()], lr=0.1)
    with pytest.raises(ValueError, match="velocity 0 has shape"):
        optim.SGD([nn.Parameter(np.ones(4))]).load_state_dict(state)


def test_plateau_scheduler_divides_by_ten_at_most_three_times():
    p = nn.Parameter(np.ones(1))
    opt = optim.SGD([p], lr=0.01)
    sched = optim.ReduceLROnPlateau(opt, patience=1)
    history = []
    for err in [0.9, 0.8, 0.8, 0.8] + [0.8] * 20:
        sched.step(err)
        history.append(opt.lr)
    assert history[:4] == [0.01, 0.01, 0.01, pytest.approx(0.001)]
    assert opt.lr == pytest.approx(1e-5) and sched.reductions == 3
    s2 = optim.ReduceLROnPlateau(opt)
    s2.load_state_dict(sched.state_dict())
    assert s2.reductions == 3 and s2.best == 0.8


def test_training_reduces_loss_on_a_tiny_problem():
    net = tiny_net()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 7, 7)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=0.0)
    net.eval()  # no dropout noise: a clean check that steps descend
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]



def test_assigning_and_deleting_layers_keeps_the_model_consistent():
    net = nn.Sequential(OrderedDict(fc1=nn.Linear(3, 4), act=nn.ReLU(), fc2=nn.Linear(4, 2)))
    net.act = nn.Tanh()  # a layer replaced keeps its place: the order it runs in, its parameters'
    assert list(net._modules) == ["fc1", "act", "fc2"]
    x = np.ones((1, 3), np.float32)
    expected = net.fc2(F.tanh(net.fc1(tn.tensor(x)))).data
    np.testing.assert_array_equal(net(tn.tensor(x)).data, expected)
    lin = nn.Linear(3, 2)
    lin.weight = nn.Parameter(np.zeros((2, 3), np.float32))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    with pytest.raises(TypeError, match="Linear: weight is a parameter; assign a tn.nn.Parameter"):
        lin.weight = tn.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    del net.fc2  # gone from the model, not only from the attributes
    assert list(net._modules) == ["fc1", "act"] and len(net.parameters()) == 2


def test_sgd_refuses_parameters_tied_through_data_and_checks_a_loaded_state():
    a = nn.Parameter(np.ones((3, 3)))
    b = nn.Parameter(a.data)  # another tensor over the same memory: decayed twice a step
    with pytest.raises(ValueError, match="parameter 1 .* is parameter 0 again, or shares its memory"):
        optim.SGD([a, b], lr=0.1)
    opt = optim.SGD([a], lr=0.1)
    state = opt.state_dict()
    state["lr"] = -1.0
    with pytest.raises(ValueError, match="SGD.load_state_dict: lr must be a finite number >= 0"):
        opt.load_state_dict(state)


def test_load_state_dict_is_all_or_nothing():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = net.state_dict()
    state = net.state_dict()
    state["0.weight"] = state["0.weight"] + 1
    state["1.weight"] = np.zeros((3, 3), np.float32)  # the wrong shape: nothing may be copied
    with pytest.raises(ValueError, match="1.weight has shape"):
        net.load_state_dict(state)
    np.testing.assert_array_equal(net.state_dict()["0.weight"], before["0.weight"])
    state = net.state_dict()
    state["1.bias"] = state["1.bias"].astype(np.complex64)
    with pytest.raises(TypeError, match="1.bias has dtype complex64"):
        net.load_state_dict(state)


def test_reset_parameters_is_an_in_place_change():
    from tinynet.models import AlexNet
    model = AlexNet(10, seed=0)
    x = tn.tensor(np.zeros((1, 3, 227, 227), np.float32))
    loss = model(x).sum()
    model.reset_parameters("paper", seed=1)
    with pytest.raises(RuntimeError, match="modified in place after forward"):
        loss.backward()
    with pytest.raises(ValueError, match="bias_init must be one of"):
        model.reset_parameters("bogus")


def test_module_list_registers_its_modules_and_a_plain_list_is_refused():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 1)])

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    stack = Stack()
    assert [n for n, _ in stack.named_parameters()] == ["blocks.0.weight", "blocks.0.bias",
                                                        "blocks.1.weight", "blocks.1.bias"]
    assert stack(tn.tensor(np.ones((1, 2), np.float32))).shape == (1, 1)
    stack.eval()
    assert not stack.blocks[1].training

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = [nn.Linear(2, 3)]  # the model would not see it: never trained or saved

    with pytest.raises(TypeError, match="blocks holds layers or parameters in a plain list"):
        Hidden()
