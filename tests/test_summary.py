"""tinynet.summary: AlexNet's numbers exactly as the paper's network has them, a small Sequential
worked by hand, a functional model with groups, the two-tower model, and the errors."""

import io
from collections import OrderedDict

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet import nn
from tinynet.models import AlexNet, TwoTowerAlexNet
from tinynet.summary import collect_summary, format_summary

# the paper's network: multiply-adds per image and parameters
MACS = OrderedDict(conv1=105_415_200, conv2=223_948_800, conv3=149_520_384, conv4=112_140_288,
                   conv5=74_760_192, fc6=37_748_736, fc7=16_777_216, fc8=4_096_000)
MACS_IN_MILLIONS = [105.4, 223.9, 149.5, 112.1, 74.8, 37.7, 16.8, 4.1]
PARAMS = OrderedDict(conv1=34_944, conv2=307_456, conv3=885_120, conv4=663_936, conv5=442_624,
                     fc6=37_752_832, fc7=16_781_312, fc8=4_097_000)


@pytest.fixture(scope="module")
def alexnet():
    return AlexNet(seed=0)


@pytest.fixture(scope="module")
def alexnet_summary(alexnet):
    return collect_summary(alexnet, (3, 227, 227))


def layer_rows(s):
    """layer name -> its Conv2d/Linear row."""
    return {r["layer"]: r for r in s["rows"] if r["op"] in ("Conv2d", "Linear")}


def test_alexnet_totals_are_exact(alexnet_summary):
    s = alexnet_summary
    assert s["params"] == s["model_params"] == 60_965_224
    assert s["macs"] == sum(MACS.values()) == 724_406_816          # "about 724M MACs"
    assert round(2 * s["macs"] / 1e9, 2) == 1.45                    # "1.45 GFLOP"


def test_alexnet_per_layer_numbers(alexnet_summary):
    rows = layer_rows(alexnet_summary)
    assert list(rows) == list(MACS)
    assert {k: r["macs"] for k, r in rows.items()} == MACS
    assert [round(r["macs"] / 1e6, 1) for r in rows.values()] == MACS_IN_MILLIONS
    assert {k: r["params"] for k, r in rows.items()} == PARAMS


def test_alexnet_im2col_and_gemm_shapes(alexnet_summary):
    info = {k: r["info"] for k, r in layer_rows(alexnet_summary).items()}
    # conv1: columns 363 x 3025 per image, weights 96 x 363 (4.4 MB of columns)
    assert info["conv1"]["cols"] == (363, 3025)
    assert info["conv1"]["weight_matrix"] == (96, 363)
    assert info["conv1"]["gemm"] == (1, 96, 363, 3025)
    assert round(info["conv1"]["col_bytes"] / 1e6, 1) == 4.4
    # conv2: 2 x (1200 x 729), 7.0 MB; conv3 2304 x 169; conv4/conv5 2 x (1728 x 169)
    assert info["conv2"]["gemm"] == (2, 128, 1200, 729)
    assert round(info["conv2"]["col_bytes"] / 1e6, 1) == 7.0
    assert info["conv3"]["gemm"] == (1, 384, 2304, 169)
    assert info["conv4"]["gemm"] == (2, 192, 1728, 169)
    assert info["conv5"]["gemm"] == (2, 128, 1728, 169)
    assert info["fc6"]["gemm"] == (1, 1, 9216, 4096)
    assert alexnet_summary["max_col_layer"] == "conv2"


def test_alexnet_shapes_follow_the_spatial_chain(alexnet_summary):
    rows = alexnet_summary["rows"]
    pools = [r["outputs"][0] for r in rows if r["op"] == "MaxPool2d"]
    assert pools == [(1, 96, 27, 27), (1, 256, 13, 13), (1, 256, 6, 6)]
    convs = [r["outputs"][0] for r in rows if r["op"] == "Conv2d"]
    assert convs == [(1, 96, 55, 55), (1, 256, 27, 27), (1, 384, 13, 13), (1, 384, 13, 13), (1, 256, 13, 13)]
    assert [r["outputs"][0] for r in rows if r["op"] == "Reshape"] == [(1, 9216)]
    # dropout is the identity in evaluation mode: a row without an op
    assert [r["layer"] for r in rows if r["op"] == "Dropout*"] == ["drop6", "drop7"]
    # activation bytes: float32 output of conv1 is 96*55*55*4
    assert layer_rows(alexnet_summary)["conv1"]["nbytes"] == 96 * 55 * 55 * 4


def test_alexnet_table_text(alexnet_summary):
    text = format_summary(alexnet_summary)
    for piece in ["60,965,224", "724,406,816", "1.45 GFLOP", "105,415,200", "223,948,800",
                  "W [96 x 363] @ cols [363 x 3025]", "2 x (1200 x 729)", "2 x (128 x 1200)",
                  "48/48 filters", "2 x 48x55x55", "2 x 2048", "500/500 outputs", "6,998,400 bytes"]:
        assert piece in text, piece
    conv1 = next(line for line in text.splitlines() if line.split()[1:3] == ["conv1", "Conv2d"])
    assert conv1.split()[3:] == ["96x55x55", "2", "x", "48x55x55", "34,944", "105,415,200", "1,161,600"]


def test_a_winograd_layer_says_what_ran(alexnet_summary):
    """On the CPU conv2 (5x5) runs by Winograd from one image on: the table's im2col row is the
    convolution as written, and a line under it gives the products that ran."""
    text = format_summary(alexnet_summary)
    assert ("conv2 ran by Winograd's F(4x4, 5x5) here, not by the im2col product above (the convolution "
            "as written): 128 products U [128 x 48] @ V [48 x 49]") in text
    assert f"{64 * 256 * 48 * 49:,} multiply-adds" in text and "(conv2; it ran by Winograd here" in text
    old = F.set_conv_algorithm("im2col")
    try:
        plain = format_summary(collect_summary(AlexNet(1000, seed=0), (3, 227, 227)))
    finally:
        F.set_conv_algorithm(old)
    assert "Winograd" not in plain


def test_summary_leaves_the_model_and_rng_alone(alexnet):
    tn.manual_seed(7)
    state = tn.get_rng_state()
    alexnet.train()
    before = alexnet.conv1.weight.data.copy()
    out = io.StringIO()
    text = tn.summary(alexnet, (3, 227, 227), file=out)
    assert out.getvalue().strip() == text.strip()
    assert alexnet.training and alexnet.drop6.training          # modes restored
    assert tn.get_rng_state() == state                          # no dropout mask drawn
    assert np.array_equal(alexnet.conv1.weight.data, before)
    assert tn.autograd.get_tracer() is None


def test_small_sequential_by_hand(capsys):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 4 * 4, 10))
    s = collect_summary(model, (3, 8, 8))
    ops = [(r["layer"], r["op"], r["outputs"][0], r["params"], r["macs"]) for r in s["rows"]]
    assert ops == [
        ("0", "Conv2d", (1, 8, 8, 8), 8 * 27 + 8, 8 * 27 * 64),    # 8 filters of 3*3*3, 64 positions
        ("1", "ReLU", (1, 8, 8, 8), 0, 0),
        ("2", "MaxPool2d", (1, 8, 4, 4), 0, 0),
        ("3", "Reshape", (1, 128), 0, 0),
        ("4", "Dropout*", (1, 128), 0, 0),
        ("5", "Linear", (1, 10), 128 * 10 + 10, 128 * 10),
    ]
    assert s["params"] == model.num_parameters() == 1514
    assert s["macs"] == 13_824 + 1_280
    assert s["rows"][0]["info"]["cols"] == (27, 64)
    text = tn.summary(model, (3, 8, 8))
    assert capsys.readouterr().out == ""                            # returned, not printed ...
    assert repr(text) == str(text)                                  # ... and a REPL shows the table once
    tn.summary(model, (3, 8, 8), show=True)
    assert capsys.readouterr().out.strip() == text.strip()
    assert "per tower" not in text                                  # one tower: no such column
    assert "W [8 x 27] @ cols [27 x 64]" in text and "15,104" in text


class FunctionalNet(nn.Module):
    """Calls tinynet.functional directly in forward, with a grouped conv and a matmul."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.w = nn.Parameter(rng.standard_normal((4, 1, 3, 3)).astype(np.float32))
        self.proj = nn.Parameter(rng.standard_normal((4 * 5 * 5, 3)).astype(np.float32))

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w, padding=0, groups=2))       # (N, 4, 5, 5)
        return F.flatten(y) @ self.proj                              # (N, 3)


def test_functional_model_with_groups_and_towers():
    s = collect_summary(FunctionalNet(), (2, 7, 7), towers=2)
    conv, relu, flat, mm = s["rows"]
    assert (conv["op"], conv["layer"]) == ("Conv2d", "")
    assert conv["info"]["gemm"] == (2, 2, 9, 25)                    # per group W (2 x 9) @ cols (9 x 25)
    assert conv["macs"] == 4 * 9 * 25 and conv["params"] == 36
    assert mm["op"] == "MatMul" and mm["macs"] == 100 * 3 and mm["params"] == 300
    text = format_summary(s)
    assert "2 x 2x5x5" in text                                      # per tower: 2 channels each
    assert "[2 x 9] @ [9 x 25]" in text                             # each tower: one group


def test_two_tower_model_adds_up_to_the_grouped_one():
    model = TwoTowerAlexNet(num_classes=1000, towers=("cpu", "cpu"), seed=0)
    s = collect_summary(model, (3, 227, 227))
    assert s["params"] == 60_965_224 and s["macs"] == 724_406_816
    rows = {r["layer"]: r for r in s["rows"] if r["op"] in ("Conv2d", "Linear")}
    assert rows["tower0.conv1"]["macs"] == rows["tower1.conv1"]["macs"] == MACS["conv1"] // 2
    assert rows["tower0.conv1"]["info"]["weight_matrix"] == (48, 363)
    assert rows["tower1.conv2"]["info"]["gemm"] == (1, 128, 1200, 729)
    # each tower receives the other's half of conv3's input: 128x13x13 float32 = 86,528 bytes
    crossings = [r for r in s["rows"] if r["op"] == "CrossTower"]
    assert crossings[0]["nbytes"] == 128 * 13 * 13 * 4
    assert "tower0.conv1" in format_summary(s)


def test_errors():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="summary: input_shape"):
        tn.summary(model, (4, 0), show=False)
    with pytest.raises(ValueError, match="summary: input_shape"):
        tn.summary(model, 4, show=False)
    with pytest.raises(TypeError, match="summary: model"):
        tn.summary(lambda x: x, (4,), show=False)
    with pytest.raises(ValueError, match="summary: towers"):
        tn.summary(model, (4,), towers=0, show=False)
    # a wrong input shape fails with the op's own message, and tracing is off afterwards
    with pytest.raises(ValueError, match="linear"):
        tn.summary(model, (5,), show=False)
    assert tn.autograd.get_tracer() is None


def test_summary_defaults_to_the_models_input_shape_and_models_need_no_extra_import():
    import subprocess
    import sys

    code = ("import tinynet as tn; m = tn.models.AlexNet(10, seed=0); s = tn.summary(m); "
            "assert 'conv1' in s and '55x55' in s; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    with pytest.raises(ValueError, match="declares no input_shape"):
        tn.summary(nn.Sequential(nn.Linear(2, 2)))
