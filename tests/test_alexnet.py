"""The paper's AlexNet (tinynet.models.AlexNet) against the facts of the paper (docs/alexnet.md), and its checkpoints.

Building a full AlexNet draws ~61M random numbers (a few seconds on 2 cores), so the big models
are module-scoped fixtures; tests that change a fixture's weights put them back.
"""

import math
import os
import pickle

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet.checkpoint import load_checkpoint, restore, save_checkpoint
from tinynet.models import AlexNet
from tinynet.optim import SGD

# the paper's network: parameters per layer with groups 2 in conv2, conv4, conv5
LAYER_PARAMS = {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936,
                "conv5": 442_624, "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}
TOTAL_PARAMS = 60_965_224
ONES_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")
ZERO_BIAS = ("conv1", "conv3", "fc8")
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


@pytest.fixture(scope="module")
def net1000():
    """AlexNet(1000), the paper's defaults (bias_init="paper", N(0, 0.01)), seeded."""
    return AlexNet(1000, seed=0)


@pytest.fixture(scope="module")
def image227():
    return np.random.default_rng(7).normal(0, 50, (1, 3, 227, 227)).astype(np.float32)


def _snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------

def test_shape_after_every_block_at_227(net1000, image227):
    m = net1000
    pool = lambda t: F.max_pool2d(t, 3, 2)  # noqa: E731
    # groups=2: LRN within each tower, as the model does
    lrn = lambda t: F.local_response_norm(t, 5, 1e-4, 0.75, 2.0, groups=2)  # noqa: E731
    with tn.no_grad():
        x = tn.tensor(image227)
        x = F.relu(m.conv1(x))
        assert x.shape == (1, 96, 55, 55)
        x = pool(lrn(x))
        assert x.shape == (1, 96, 27, 27)
        x = F.relu(m.conv2(x))
        assert x.shape == (1, 256, 27, 27)
        x = pool(lrn(x))
        assert x.shape == (1, 256, 13, 13)
        x = F.relu(m.conv3(x))
        assert x.shape == (1, 384, 13, 13)
        x = F.relu(m.conv4(x))
        assert x.shape == (1, 384, 13, 13)
        x = F.relu(m.conv5(x))
        assert x.shape == (1, 256, 13, 13)
        x = pool(x)
        assert x.shape == (1, 256, 6, 6)
        flat = F.flatten(x)
        assert flat.shape == (1, 9216)

        m.eval()
        try:
            # the model's own features() gives the same (N, 256, 6, 6) block output
            feats = m.features(tn.tensor(image227))
            assert feats.shape == (1, 256, 6, 6)
            np.testing.assert_allclose(feats.data, x.data, rtol=1e-5, atol=1e-5)
            logits = m(tn.tensor(image227))
        finally:
            m.train()
    assert logits.shape == (1, 1000)
    assert np.all(np.isfinite(logits.data))


def test_parameter_count_total_and_per_layer(net1000):
    assert net1000.num_parameters() == TOTAL_PARAMS
    per_layer = {}
    for name, p in net1000.named_parameters():
        per_layer[name.split(".")[0]] = per_layer.get(name.split(".")[0], 0) + p.size
    assert per_layer == LAYER_PARAMS
    assert sum(LAYER_PARAMS.values()) == TOTAL_PARAMS


def test_parameter_names_and_shapes_as_pytorch(net1000):
    shapes = {name: p.shape for name, p in net1000.named_parameters()}
    assert list(shapes) == [f"{layer}.{kind}" for layer in LAYERS for kind in ("weight", "bias")]
    assert shapes["conv1.weight"] == (96, 3, 11, 11)
    assert shapes["conv2.weight"] == (256, 48, 5, 5)       # groups 2: 96 / 2 input channels
    assert shapes["conv3.weight"] == (384, 256, 3, 3)      # across towers
    assert shapes["conv4.weight"] == (384, 192, 3, 3)
    assert shapes["conv5.weight"] == (256, 192, 3, 3)
    assert shapes["fc6.weight"] == (4096, 9216)
    assert shapes["fc7.weight"] == (4096, 4096)
    assert shapes["fc8.weight"] == (1000, 4096)
    assert shapes["fc8.bias"] == (1000,)
    state = net1000.state_dict()
    assert list(state) == list(shapes)
    assert all(v.dtype == np.float32 for v in state.values())


def test_initialisation_statistics_paper(net1000):
    for layer in LAYERS:
        w = getattr(net1000, layer).weight.data.astype(np.float64)
        n = w.size
        # N(0, 0.01): the sample mean is within a few standard errors of 0, the std within 2%
        assert abs(w.mean()) < 5 * 0.01 / math.sqrt(n), layer
        assert w.std() == pytest.approx(0.01, rel=0.02), layer
    for layer in ONES_BIAS:
        assert np.all(getattr(net1000, layer).bias.data == 1.0), layer
    for layer in ZERO_BIAS:
        assert np.all(getattr(net1000, layer).bias.data == 0.0), layer


def test_seed_makes_weights_repeatable(net1000):
    # reset_parameters with the same seed gives the same weights (the fixture was built with seed 0)
    before = _snapshot(net1000)
    net1000.reset_parameters("paper", 0.01, seed=0)
    after = net1000.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("shape,rows", [((7, 5, 3), 1), ((7, 5, 3), 3), ((7, 5, 3), None), ((), None), ((0, 4), None)])
def test_fill_draws_exactly_the_numbers_of_one_whole_draw(shape, rows):
    """Weights are drawn a piece of rows at a time (no 302 MB float64 temporary for fc6): the
    pieces hold the same numbers, cast once to float32, as one draw of the whole shape."""
    from tinynet.random import fill

    whole = np.random.default_rng(7).normal(0.0, 0.01, shape).astype(np.float32)
    rng = np.random.default_rng(7)
    out = np.full(shape, np.nan, np.float32)
    assert fill(out, lambda s: rng.normal(0.0, 0.01, s), rows_per_piece=rows) is out
    assert out.dtype == np.float32 and np.array_equal(out, whole)


PEAK_PROBE = """
import sys
from tinynet.models import AlexNet
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
before = status("VmRSS:")
model = AlexNet(1000, seed=0)
params = sum(p.data.nbytes for p in model.parameters())
print(params, status("VmHWM:") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from Linux's /proc")
def test_building_alexnet_needs_little_more_memory_than_its_weights():
    """Drawing the 61M weights whole in float64 (NumPy's draw) put a 302 MB temporary beside
    them, more than any inference batch up to 32 adds later."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True,
                         cwd=root, timeout=120, check=True)
    params, grown = map(int, out.stdout.split())
    assert params > 240e6
    assert grown < params + 100e6, (grown, params)


def test_224_input_gives_clear_error(net1000):
    x = np.zeros((1, 3, 224, 224), np.float32)
    with tn.no_grad(), pytest.raises(ValueError, match="227"):
        net1000(tn.tensor(x))


def test_eval_is_deterministic_and_train_is_not(net1000, image227):
    m = net1000
    with tn.no_grad():
        m.eval()
        try:
            assert not m.drop6.training and not m.drop7.training
            a = m(tn.tensor(image227)).data
            b = m(tn.tensor(image227)).data
        finally:
            m.train()
        assert m.training and m.drop6.training and m.drop7.training
        c = m(tn.tensor(image227)).data
        d = m(tn.tensor(image227)).data
    assert np.array_equal(a, b)          # dropout off: bit-for-bit repeatable
    assert not np.array_equal(c, d)      # dropout on: two masks, two answers


# --------------------------------------------------------------------------------------------
# Two towers = groups 2
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", ["conv2", "conv4", "conv5"])
def test_grouped_conv_equals_two_towers(net1000, layer):
    """Each tower convolves its own half of the channels with its half of the filters; the grouped
    weight is the towers' weights stacked along `out`. Checked forward and backward, in float64, on
    a small spatial size."""
    conv = getattr(net1000, layer)
    assert conv.groups == 2
    rng = np.random.default_rng(3)
    out_c, in_per_group = conv.weight.shape[:2]
    cin = in_per_group * 2
    x = rng.standard_normal((2, cin, 7, 6))
    w = conv.weight.data.astype(np.float64) + rng.normal(0, 0.01, conv.weight.shape)
    b = rng.standard_normal(out_c)

    xt, wt, bt = (tn.tensor(a, requires_grad=True) for a in (x, w, b))
    grouped = F.conv2d(xt, wt, bt, conv.stride, conv.padding, groups=2)
    assert grouped.shape == (2, out_c, 7, 6)

    h, hc = out_c // 2, cin // 2
    towers = []
    leaves = []
    for t in range(2):
        xs = tn.tensor(x[:, t * hc:(t + 1) * hc], requires_grad=True)
        ws = tn.tensor(w[t * h:(t + 1) * h], requires_grad=True)
        bs = tn.tensor(b[t * h:(t + 1) * h], requires_grad=True)
        towers.append(F.conv2d(xs, ws, bs, conv.stride, conv.padding, groups=1))
        leaves.append((xs, ws, bs))
    joined = np.concatenate([y.data for y in towers], axis=1)
    np.testing.assert_allclose(grouped.data, joined, rtol=1e-12, atol=1e-12)

    g = rng.standard_normal(grouped.shape)
    (grouped * tn.tensor(g)).sum().backward()
    for t, (y, (xs, ws, bs)) in enumerate(zip(towers, leaves)):
        (y * tn.tensor(g[:, t * h:(t + 1) * h])).sum().backward()
    np.testing.assert_allclose(xt.grad, np.concatenate([l[0].grad for l in leaves], axis=1),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(wt.grad, np.concatenate([l[1].grad for l in leaves], axis=0),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bt.grad, np.concatenate([l[2].grad for l in leaves]),
                               rtol=1e-10, atol=1e-10)

    # and a tower really sees only its own channels: changing tower 1's input leaves tower 0 alone
    x2 = x.copy()
    x2[:, hc:] += 1.0
    y2 = F.conv2d(tn.tensor(x2), tn.tensor(w), tn.tensor(b), conv.stride, conv.padding, groups=2).data
    np.testing.assert_array_equal(y2[:, :h], grouped.data[:, :h])
    assert not np.allclose(y2[:, h:], grouped.data[:, h:])


# --------------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def net10():
    """AlexNet(10) with Caffe's 0.1 biases: signals reach every layer, logits stay small."""
    return AlexNet(10, bias_init="caffe", seed=5)


def test_fc8_follows_num_classes_and_caffe_biases(net10):
    m = net10
    assert m.fc8.weight.shape == (10, 4096)
    assert m.fc8.bias.shape == (10,)
    assert m.num_parameters() == TOTAL_PARAMS - LAYER_PARAMS["fc8"] + 4096 * 10 + 10
    # bias_init="caffe": 0.1 where the paper has 1, 0 elsewhere
    for layer in ONES_BIAS:
        assert np.all(getattr(m, layer).bias.data == np.float32(0.1)), layer
    for layer in ZERO_BIAS:
        assert np.all(getattr(m, layer).bias.data == 0), layer
    assert m.config["bias_init"] == "caffe"


def test_lrn_option_paper_by_default_false_for_none(net10):
    """lrn=None is the paper's LRN; lrn=False leaves it out; anything else is refused."""
    x = np.random.default_rng(0).standard_normal((1, 96, 5, 5)).astype(np.float32) * 30
    assert net10.config["lrn"] is None
    paper = F.local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=2).data
    np.testing.assert_array_equal(net10._lrn(tn.tensor(x)).data, paper)
    plain = AlexNet(10, lrn=False, seed=5)
    np.testing.assert_array_equal(plain._lrn(tn.tensor(x)).data, x)
    with pytest.raises(TypeError, match="AlexNet: lrn must be None"):
        AlexNet(10, lrn=True)


def test_one_sgd_step_tiny_batch(net10, tmp_path):
    m = net10
    before = _snapshot(m)
    try:
        tn.manual_seed(0)
        rng = np.random.default_rng(11)
        x = tn.tensor(rng.normal(0, 30, (2, 3, 227, 227)).astype(np.float32))
        y = np.array([3, 8])
        opt = SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0)
        loss = F.cross_entropy(m(x), y)
        value = loss.item()
        assert math.isfinite(value)
        # weights N(0, 0.01) and small biases: logits near 0, loss near ln(10) = 2.303
        assert value == pytest.approx(math.log(10), abs=0.1)
        opt.zero_grad()
        loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.shape == p.shape, name
            assert np.all(np.isfinite(p.grad)), name
        opt.step()
        after = m.state_dict()
        # no weight decay: every layer moved because of its gradient
        for name in before:
            assert not np.array_equal(before[name], after[name]), name
        # the paper's rule, first step from v = 0: w <- w - lr * grad
        np.testing.assert_allclose(after["fc8.weight"], before["fc8.weight"] - 0.01 * m.fc8.weight.grad,
                                   rtol=1e-6, atol=1e-9)

        # the optimiser's momentum survives a checkpoint
        path = tmp_path / "step.npz"
        save_checkpoint(str(path), m, opt, meta={"note": "one step"})
        opt2 = SGD(m.parameters(), lr=0.5, momentum=0.0, weight_decay=0.1)
        meta = restore(load_checkpoint(str(path)), m, opt2)
        assert meta["note"] == "one step"
        assert (opt2.lr, opt2.momentum, opt2.weight_decay) == (0.01, 0.9, 0.0)
        for v1, v2 in zip(opt.velocity, opt2.velocity):
            assert np.array_equal(v1, v2)
        assert any(np.any(v != 0) for v in opt2.velocity)
    finally:
        m.load_state_dict(before)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def test_state_dict_round_trips_through_checkpoint(net10, tmp_path):
    m = net10
    before = _snapshot(m)
    path = tmp_path / "model.npz"
    try:
        assert save_checkpoint(str(path), m, meta={"epoch": 3}) == str(path)
        # written atomically: only the target is left in the folder, no temporary file
        assert sorted(os.listdir(tmp_path)) == ["model.npz"]
        ckpt = load_checkpoint(str(path))
        assert list(ckpt["model"]) == list(before)
        for k in before:
            assert ckpt["model"][k].dtype == np.float32
            assert np.array_equal(ckpt["model"][k], before[k]), k
        assert ckpt["meta"]["epoch"] == 3
        assert ckpt["velocity"] == []
        # spoil the weights, then restore them from the file
        for p in m.parameters():
            p.data[...] = 0
        meta = restore(ckpt, m)
        assert meta["epoch"] == 3
        after = m.state_dict()
        for k in before:
            assert np.array_equal(after[k], before[k]), k
    finally:
        m.load_state_dict(before)


def test_checkpoint_write_is_atomic_on_failure(tmp_path, monkeypatch):
    from tinynet import nn
    import tinynet.checkpoint as ckpt_mod

    small = nn.Linear(4, 3)
    path = tmp_path / "latest.npz"
    save_checkpoint(str(path), small, meta={"version": "old"})
    old_bytes = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(str(path), small, meta={"version": "new"})
    monkeypatch.undo()
    # the old checkpoint is untouched and no temporary file is left behind
    assert sorted(os.listdir(tmp_path)) == ["latest.npz"]
    assert path.read_bytes() == old_bytes
    assert load_checkpoint(str(path))["meta"]["version"] == "old"


def _bad_files(tmp_path):
    """name -> path of files that are not tinynet checkpoints."""
    from tinynet import nn

    good = tmp_path / "good.npz"
    save_checkpoint(str(good), nn.Linear(5, 4), meta={"x": 1})
    raw = good.read_bytes()
    files = {}

    def write(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        files[name] = str(p)

    write("text.npz", b"this is not a checkpoint\n" * 20)
    write("empty.npz", b"")
    write("truncated.npz", raw[: len(raw) // 2])
    p = tmp_path / "array.npy"
    np.save(p, np.arange(5.0))
    files["array.npy"] = str(p)
    p = tmp_path / "nometa.npz"
    np.savez(p, **{"model/weight": np.zeros(3)})
    files["nometa.npz"] = str(p)
    p = tmp_path / "listmeta.npz"
    np.savez(p, meta=np.frombuffer(b"[1, 2]", np.uint8))
    files["listmeta.npz"] = str(p)
    p = tmp_path / "version.npz"
    np.savez(p, meta=np.frombuffer(b'{"format_version": 999}', np.uint8))
    files["version.npz"] = str(p)
    return files


def test_non_checkpoint_files_give_value_error(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(ValueError, match="load_checkpoint"):
            load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.npz"))


def test_loading_never_needs_pickle(tmp_path, monkeypatch):
    from tinynet import nn

    path = tmp_path / "c.npz"
    save_checkpoint(str(path), nn.Linear(3, 2), meta={"k": [1, 2]})

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    ckpt = load_checkpoint(str(path))
    assert ckpt["meta"]["k"] == [1, 2]
    monkeypatch.undo()

    # an archive holding a pickled (object) array is refused, never unpickled
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.frombuffer(b'{"format_version": 1}', np.uint8),
             **{"model/weight": np.array([{"code": "run me"}], dtype=object)})
    with pytest.raises(ValueError, match="not a tinynet checkpoint"):
        load_checkpoint(str(evil))
