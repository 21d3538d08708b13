"""An empty batch (N = 0) goes through every op, forward and backward.

Data-parallel training splits the last, smaller global batch over the ranks, and a rank may get
no samples at all (tinynet.data.DataLoader, drop_last=False). That rank still takes the step:
every op must accept N = 0, give an output with N = 0, an input gradient with N = 0, and
parameter gradients of zeros (so the rank adds nothing to the all-reduced sum).
"""

from collections import OrderedDict

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet import nn

from conftest import PATHS, conv_path


def run(op, x_shape, *params, dtype=np.float64):
    """op(x, *params) on an empty x; backward with a gradient of ones.
    Returns (y, x.grad, [param.grad...])."""
    x = tn.tensor(np.zeros(x_shape, dtype), requires_grad=True)
    ps = [tn.tensor(p.astype(dtype), requires_grad=True) for p in params]
    y = op(x, *ps)
    y.backward(np.ones(y.shape, dtype))
    return y, x.grad, [p.grad for p in ps]


def check_empty(y, gx, x_shape, y_tail, dtype=np.float64):
    assert y.shape == (0,) + y_tail and y.dtype == dtype
    assert gx.shape == x_shape and gx.dtype == dtype


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_on_an_empty_batch(path, dtype):
    w = np.ones((4, 1, 3, 3))
    b = np.ones(4)
    with conv_path(path):
        y, gx, (gw, gb) = run(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2),
                              (0, 2, 7, 7), w, b, dtype=dtype)
    check_empty(y, gx, (0, 2, 7, 7), (4, 4, 4), dtype)
    assert gw.shape == w.shape and not gw.any() and gw.dtype == dtype
    assert gb.shape == b.shape and not gb.any()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("padding", [0, 1])
def test_max_pool_on_an_empty_batch(path, padding):
    with conv_path(path):
        y, gx, _ = run(lambda x: F.max_pool2d(x, 3, 2, padding), (0, 3, 7, 7))
    check_empty(y, gx, (0, 3, 7, 7), (3, 3 + padding, 3 + padding))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_on_an_empty_batch(path, groups):
    with conv_path(path):
        y, gx, _ = run(lambda x: F.local_response_norm(x, groups=groups), (0, 4, 5, 5))
        y32, gx32, _ = run(lambda x: F.local_response_norm(x), (0, 4, 5, 5), dtype=np.float32)
    check_empty(y, gx, (0, 4, 5, 5), (4, 5, 5))
    check_empty(y32, gx32, (0, 4, 5, 5), (4, 5, 5), np.float32)


@pytest.mark.parametrize("op", [F.relu, F.tanh, lambda x: F.dropout(x, 0.5, rng=np.random.default_rng(0)),
                                F.flatten, F.softmax, F.log_softmax],
                         ids=["relu", "tanh", "dropout", "flatten", "softmax", "log_softmax"])
def test_elementwise_ops_on_an_empty_batch(op):
    y, gx, _ = run(op, (0, 6))
    check_empty(y, gx, (0, 6), (6,))


def test_dropout_rows_on_an_empty_local_batch():
    with F.dropout_rows(3, 4):
        mask = F.dropout_mask((0, 5), 0.5, np.float32, np.random.default_rng(0))
    assert mask.shape == (0, 5)


def test_linear_on_an_empty_batch():
    w, b = np.ones((3, 5)), np.ones(3)
    y, gx, (gw, gb) = run(F.linear, (0, 5), w, b)
    check_empty(y, gx, (0, 5), (3,))
    assert gw.shape == (3, 5) and not gw.any() and gb.shape == (3,) and not gb.any()


def test_cross_entropy_of_an_empty_batch_is_zero_with_a_zero_gradient():
    logits = tn.tensor(np.zeros((0, 4), np.float32), requires_grad=True)
    loss = F.cross_entropy(logits, np.zeros(0, np.int64))
    assert loss.shape == () and loss.item() == 0.0 and loss.dtype == np.float32
    loss.backward()
    assert logits.grad.shape == (0, 4)
    with pytest.raises(ValueError, match=r"cross_entropy: logits must have at least one class, got shape \(0, 0\)"):
        F.cross_entropy(np.zeros((0, 0)), np.zeros(0, np.int64))


def test_im2col_and_col2im_on_an_empty_batch():
    cols = F.im2col(np.zeros((0, 2, 5, 5)), 3)
    assert cols.shape == (18, 0)
    assert F.col2im(cols, (0, 2, 5, 5), 3).shape == (0, 2, 5, 5)


@pytest.mark.parametrize("path", PATHS)
def test_a_network_step_on_an_empty_batch_gives_zero_parameter_gradients(path):
    """What a data-parallel rank without samples does: forward, loss, backward. Every parameter
    gets a gradient of zeros (finite, the parameter's shape and dtype): it adds nothing to the
    all-reduced sum."""
    rng = np.random.default_rng(0)
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1, rng=rng), relu=nn.ReLU(), lrn=nn.LocalResponseNorm(),
        pool=nn.MaxPool2d(3, 2), flat=nn.Flatten(), fc=nn.Linear(4 * 3 * 3, 8, rng=rng),
        drop=nn.Dropout(0.5), out=nn.Linear(8, 5, rng=rng)))
    with conv_path(path):
        loss = F.cross_entropy(model(tn.tensor(np.zeros((0, 3, 7, 7), np.float32))),
                               np.zeros(0, np.int64))
        loss.backward()
    assert loss.item() == 0.0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32, name
        assert not p.grad.any(), name
