"""tn.trace(): what it prints forward and backward, that it changes no result, that it is
switched off afterwards, and the training program's --trace."""

import io
import os

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet import autograd, nn

from conftest import load_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def traced(fn):
    """Run fn() under tn.trace(); return (fn's result, the printed text)."""
    out = io.StringIO()
    with tn.trace(file=out):
        result = fn()
    return result, out.getvalue()


def test_conv1_prints_the_numbers_the_articles_quote():
    conv1 = nn.Conv2d(3, 96, 11, stride=4)
    x = tn.tensor(np.zeros((1, 3, 227, 227), np.float32))
    y, text = traced(lambda: conv1(x))
    assert y.shape == (1, 96, 55, 55)
    assert "#1   Conv2d" in text                           # called on its own: no layer name
    assert "weight (96, 3, 11, 11), bias (96,) -> (1, 96, 55, 55)" in text
    assert "cols [363 x 3025]" in text and "rows C*KH*KW = 3*11*11" in text
    assert "columns N*OH*OW = 1*55*55; 4.4 MB" in text
    assert "W [96 x 363] @ cols [363 x 3025] -> [96 x 3025]" in text
    assert "105,415,200 multiply-adds (210.8 MFLOP)" in text


def small_net():
    tn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 3))


def train_step(model, x, labels):
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    return loss


def test_forward_then_backward_in_reverse_order():
    """By im2col (a 3x3 convolution of two images would run by Winograd: see the test below)."""
    model = small_net()
    x = tn.tensor(np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32),
                  requires_grad=True)
    old = F.set_conv_algorithm("im2col")
    try:
        _, text = traced(lambda: train_step(model, x, np.array([0, 2])))
    finally:
        F.set_conv_algorithm(old)
    lines = text.splitlines()
    fwd = lines.index("-- tinynet.trace: forward (oldest op first) --")
    bwd = lines.index("-- tinynet.trace: backward (newest op first, gradients flow back) --")
    assert fwd < bwd
    ops = [line.split()[0] for line in lines if line.startswith("#")]
    n = len(ops) // 2
    assert ops[:n] == [f"#{i}" for i in range(1, n + 1)]          # forward: #1 .. #6
    assert ops[n:] == list(reversed(ops[:n]))                     # backward: #6 .. #1
    assert n == 6                                                  # conv relu pool reshape linear loss
    # layer and parameter names, forward and backward
    assert "#1   0: Conv2d" in text and "0.weight (6, 2, 3, 3)" in text
    assert "grad in (2, 4, 5, 5), 0.weight (6, 2, 3, 3), 0.bias (6,)" in text
    # grouped conv: per-group GEMMs, and since x needs a gradient, grad cols and col2im
    assert "2 groups, each: W [3 x 18] @ cols [18 x 50]" in text
    assert "grad cols = 2 groups, each: W^T [18 x 3] @ gY [3 x 50] -> [18 x 50]" in text
    assert "col2im  grad cols [36 x 50] -> grad x (2, 4, 5, 5)" in text
    assert "windows 3x3, stride 2x2 (overlapping" in text
    assert "GEMM    grad W = gY^T [3 x 2] @ x [2 x 24] -> [3 x 24]" in text
    # the footer counts the multiply-adds: backward does two GEMMs per layer here
    forward_macs = 2 * 3 * 18 * 50 + 2 * 24 * 3
    assert f"6 ops forward, {forward_macs:,} multiply-adds; 6 ops backward, {2 * forward_macs:,}" in text


def test_tracing_changes_no_number_and_switches_off():
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    grads = []
    for trace_it in (False, True):
        model = small_net()
        if trace_it:
            loss, _ = traced(lambda: train_step(model, tn.tensor(x), np.array([1, 2])))
        else:
            loss = train_step(model, tn.tensor(x), np.array([1, 2]))
        grads.append([p.grad.copy() for p in model.parameters()] + [loss.item()])
    for a, b in zip(*grads):
        assert np.array_equal(a, b)
    assert autograd.get_tracer() is None
    with pytest.raises(ValueError, match="conv2d"):
        with tn.trace(file=io.StringIO()):
            F.conv2d(tn.tensor(x), tn.tensor(np.zeros((2, 3, 3, 3), np.float32)))
    assert autograd.get_tracer() is None                          # off again after an error


def test_details_off_and_matmul():
    a = tn.tensor(np.ones((2, 3)), requires_grad=True)
    out = io.StringIO()
    with tn.trace(file=out, details=False) as tracer:
        (a @ tn.tensor(np.ones((3, 4)))).sum().backward()
    assert "GEMM" not in out.getvalue() and "MatMul" in out.getvalue()
    assert tracer.forward_macs == 24 and tracer.backward_macs == 24   # only grad a is needed


def test_training_program_traces_one_step(tmp_path, capsys, monkeypatch):
    prog = load_example("alexnet_train")
    monkeypatch.chdir(tmp_path)
    prog.main(["--preset", "demo", "--max-train-images", "4", "--max-val-images", "4",
               "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--trace"])
    text = capsys.readouterr().out
    assert "#1   conv1: Conv2d" in text
    assert "cols [363 x 6050]" in text                            # batch 2: 2*55*55 columns
    assert "W [96 x 363] @ cols [363 x 6050] -> [96 x 6050]" in text
    assert "-- tinynet.trace: backward" in text
    assert "fc8.weight (10, 4096)" in text
    assert "--trace: traced one training step on a batch of 2" in text
    assert os.listdir(tmp_path) == ["cache"]  # no run folder: nothing written but the data's cache


def test_a_winograd_convolution_prints_what_ran():
    """conv3 at batch 2 runs by Winograd on the CPU: the trace shows its tiles and 16 products,
    its cost beside im2col's, and backward the same maps transposed; by im2col it shows cols."""
    conv3 = nn.Conv2d(256, 384, 3, padding=1)
    x = tn.tensor(np.zeros((2, 256, 13, 13), np.float32), requires_grad=True)
    y, text = traced(lambda: conv3(x).sum().backward())
    assert "V [4096 x 98]" in text and "N*TH*TW = 2*7*7" in text
    assert "16 tile entries x U [384 x 256] @ V [256 x 98] -> [384 x 98]" in text
    assert f"{16 * 384 * 256 * 98:,} multiply-adds" in text and f"im2col's product: {384 * 2304 * 338:,}" in text
    assert "grad V = U^T [256 x 384] @ Z [384 x 98]" in text and "added back onto its pixels" in text
    # the footer counts the network's arithmetic, the direct convolution's multiply-adds, and says so
    assert f"2 ops forward, {384 * 2304 * 338:,} multiply-adds" in text
    assert "(the convolutions as written, by im2col; those that ran by Winograd did fewer" in text
    old = F.set_conv_algorithm("im2col")
    try:
        _, text = traced(lambda: conv3(x))
    finally:
        F.set_conv_algorithm(old)
    assert "cols [2304 x 338]" in text and "V [" not in text and "Winograd did fewer" not in text


def test_a_5x5_winograd_convolution_prints_its_8x8_tiles():
    """conv2 (5x5, two groups) at batch 2: 8x8 tiles making 4x4 blocks (7x7 of them per image), 64
    entries per channel, 64 products per group."""
    conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
    x = tn.tensor(np.zeros((2, 96, 27, 27), np.float32), requires_grad=True)
    y, text = traced(lambda: conv2(x).sum().backward())
    assert "every 8x8 input tile: 64 rows per channel, a column per 4x4 output block" in text
    assert "V [6144 x 98]" in text
    assert "64 tile entries x 2 groups x U [128 x 48] @ V [48 x 98] -> [128 x 98]" in text
    assert f"{64 * 256 * 48 * 98:,} multiply-adds" in text
    assert "Z [16384 x 98]" in text and "every 4x4 output block" in text and "its 16 gradients' sum" in text
