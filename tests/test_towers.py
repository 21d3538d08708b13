"""The two-tower split on two CPU 'devices' computes exactly what the grouped
single-device AlexNet computes, forward and backward, and its state_dict is
the grouped model's."""

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet.models import AlexNet, TwoTowerAlexNet


@pytest.fixture(scope="module")
def pair():
    # float64: the split and grouped GEMMs sum in different orders, so float32 would
    # differ by rounding; in float64 the two must agree to ~1e-10
    grouped = AlexNet(10, bias_init="caffe", seed=3, dtype=np.float64)
    split = AlexNet(10, bias_init="caffe", seed=3, dtype=np.float64, towers=("cpu:0", "cpu:1"))
    return grouped, split


def test_factory_and_state_dict_equal_the_grouped_model(pair):
    grouped, split = pair
    assert isinstance(split, TwoTowerAlexNet)
    a, b = grouped.state_dict(), split.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape and np.array_equal(a[key], b[key]), key
    # tower 0 holds filters [0:48] of conv1, tower 1 [48:96]
    assert np.array_equal(split.tower1.conv1.weight.data, grouped.conv1.weight.data[48:])
    assert split.tower0.conv2.weight.shape == (128, 48, 5, 5)   # own tower only
    assert split.tower0.conv3.weight.shape == (192, 256, 3, 3)  # across towers
    assert split.num_parameters() == grouped.num_parameters()


def _run(model, x, labels, train):
    model.train(train)
    tn.manual_seed(11)  # same dropout masks for both models
    for p in model.parameters():
        p.grad = None
    logits = model(tn.tensor(x))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {}
    if isinstance(model, TwoTowerAlexNet):
        g0 = dict(model.tower0.named_parameters())
        g1 = dict(model.tower1.named_parameters())
        for k in g0:
            grads[k] = np.concatenate([g0[k].grad, g1[k].grad], axis=0)
    else:
        grads = {k: p.grad for k, p in model.named_parameters()}
    return logits.data, grads


@pytest.mark.parametrize("train", [False, True])
def test_split_equals_grouped_forward_and_backward(pair, train):
    grouped, split = pair
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 227, 227)) * 50
    labels = np.array([1, 7])
    logits_g, grads_g = _run(grouped, x, labels, train)
    split.traffic.reset()
    logits_s, grads_s = _run(split, x, labels, train)
    np.testing.assert_allclose(logits_s, logits_g, rtol=1e-10, atol=1e-12)
    for key, g in grads_g.items():
        np.testing.assert_allclose(grads_s[key], g, rtol=1e-8, atol=1e-10 * np.abs(g).max(), err_msg=key)
    # traffic per image (the paper's towers): conv3 128*13*13*4 each way, fc6 4608*4, fc7 and fc8 2048*4
    n, f4 = 2, 8  # float64
    per_direction = n * f4 * (128 * 13 * 13 + 4608 + 2048 + 2048)
    logits_bytes = n * f4 * 5
    assert split.traffic.by_layer["conv3 forward"] == 2 * n * f4 * 128 * 13 * 13  # both directions of exchange
    assert split.traffic.forward_bytes == 2 * per_direction + logits_bytes
    assert split.traffic.backward_bytes == 2 * per_direction + logits_bytes


def test_load_state_dict_checks_and_moves_between_layouts(pair):
    grouped, split = pair
    other = AlexNet(10, seed=99, towers=("cpu", "cpu"))  # float32: values are converted
    other.load_state_dict(grouped.state_dict())
    for k, v in other.state_dict().items():
        assert v.dtype == np.float32 and np.array_equal(v, grouped.state_dict()[k].astype(np.float32))
    back = AlexNet(10, seed=5)  # and from the split model into a grouped one
    back.load_state_dict(other.state_dict())
    assert all(np.array_equal(v, other.state_dict()[k]) for k, v in back.state_dict().items())
    bad = grouped.state_dict()
    del bad["fc8.bias"]
    with pytest.raises(KeyError, match="missing keys"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="towers must be a pair"):
        AlexNet(10, towers=("cpu",))
    with pytest.raises(RuntimeError, match="CuPy"):
        AlexNet(10, towers=("cuda:0", "cuda:1")) if tn.backend.cupy_or_none() is None else pytest.skip("CuPy present")


def test_two_towers_refuse_a_single_named_device():
    """--device cuda:3 --towers 2 would put the towers on the GPUs of TINYNET_DEVICES, not on 3:
    a device with an index is refused, with the way to name two."""
    for device in ("cuda:3", "cpu:1"):
        with pytest.raises(ValueError, match="two towers need two devices, but .* names one"):
            tn.backend.tower_devices(device)
    assert tn.backend.tower_devices("cpu") == (tn.backend.Device("cpu:0"), tn.backend.Device("cpu:1"))
