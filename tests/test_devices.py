"""The device model, proved on the CPU: tensors know their device, ops run
where their inputs are and refuse two devices, only explicit copies cross,
and virtual CPU devices (cpu:0, cpu:1) follow the same rules as two GPUs.
The two-tower AlexNet on (cpu:0, cpu:1) equals the grouped model through
SGD steps and a checkpoint resume."""

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet import backend
from tinynet.autograd import Function
from tinynet.checkpoint import load_checkpoint, restore, save_checkpoint
from tinynet.models import AlexNet
from tinynet.optim import SGD

CPU0, CPU1 = tn.device("cpu:0"), tn.device("cpu:1")


# ---- devices and tensors ----------------------------------------------------------------

def test_device_names():
    assert tn.device("cpu") == CPU0 and CPU0 == "cpu" and CPU0 == "cpu:0"
    assert CPU1 != CPU0 and str(CPU1) == "cpu:1" and str(CPU0) == "cpu"
    assert tn.device("cuda") == tn.device("cuda:0")
    assert len({CPU0, tn.device("cpu"), CPU1}) == 2
    for bad in ("gpu", "cpu:x", "cuda:-1", 3):
        with pytest.raises((ValueError, TypeError), match="device"):
            tn.device(bad)


def test_tensors_know_their_device_and_ops_keep_it():
    x = tn.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True, device="cpu:1")
    assert x.device == CPU1 and "device='cpu:1'" in repr(x)
    y = (x * 2 + 1).sum(axis=0)
    assert y.device == CPU1
    y.sum().backward()
    assert x.grad.tolist() == [[2.0] * 3] * 2
    assert F.relu(x).device == CPU1 and x.detach().device == CPU1
    assert tn.tensor([1.0]).device == CPU0


def test_mixing_devices_is_refused_naming_both():
    a = tn.tensor(np.ones((2, 2)), device="cpu:1")
    b = tn.tensor(np.ones((2, 2)))
    for op in (lambda: a + b, lambda: a @ b, lambda: tn.concat([a, b]), lambda: F.linear(a, b)):
        with pytest.raises(RuntimeError, match="same device.*cpu:1 and cpu"):
            op()
    # a number is no device: it follows the tensor
    assert (a * 3).device == CPU1 and (3 - a).device == CPU1


def test_host_data_put_on_another_virtual_device_is_copied_there():
    """cpu:0 holds the caller's array as np.asarray would; cpu:1 is another device, with memory
    of its own as a second GPU's: a later write to the array, or to the cpu:0 tensor over it,
    never reaches it."""
    a = np.zeros(3)
    on0, on0_too, on1 = tn.tensor(a), tn.tensor(a, device="cpu:0"), tn.tensor(a, device="cpu:1")
    a[0] = 5.0
    assert on0.data[0] == 5.0 and on0_too.data[0] == 5.0
    assert on1.data[0] == 0.0 and not np.shares_memory(on1.data, a)
    assert tn.tensor([1, 2], dtype=np.float32, device="cpu:1").data.dtype == np.float32


def test_to_is_an_explicit_copy_that_never_shares_memory():
    a = tn.tensor(np.zeros(4), requires_grad=True)
    assert a.to("cpu") is a and a.to("cpu:0") is a
    b = a.to("cpu:1")
    assert b.device == CPU1 and b.requires_grad and b.is_leaf
    b.data += 1  # another device's memory: the source must not see it
    assert a.data.tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="cannot be tagged cuda:0"):
        tn.Tensor(np.zeros(2), device="cuda:0")


def test_backward_checks_each_gradient_against_its_input():
    class WrongDtype(Function):
        def forward(self, x):
            return x * 2

        def backward(self, g):
            return (g * 2).astype(np.float64)  # a float64 gradient for a float32 input

    x = tn.tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(RuntimeError, match="WrongDtype.backward: gradient dtype float64 .* float32"):
        WrongDtype.apply(x).sum().backward()

    class WrongShape(Function):
        def forward(self, x):
            return x * 2

        def backward(self, g):
            return g[:1]

    with pytest.raises(RuntimeError, match="WrongShape.backward: gradient shape"):
        WrongShape.apply(x).sum().backward()


# ---- gradients own their memory ------------------------------------------------------------

def test_leaf_gradients_own_their_memory():
    w = tn.tensor(np.ones((3, 4)), requires_grad=True)
    w.sum().backward()  # Sum's backward is a read-only zero-stride broadcast view
    assert w.grad.flags.writeable and w.grad.flags.owndata
    w.grad *= 0.5  # clipping/scaling in place works
    a, b, c = (tn.tensor([v], requires_grad=True) for v in (1.0, 2.0, 3.0))
    ((a + b) * c).sum().backward()  # Add hands one array to both a and b
    assert a.grad is not b.grad
    a.grad[0] = 100.0
    assert b.grad[0] == 3.0
    p = tn.tensor(2.0, requires_grad=True)
    (p * p).backward()
    (p * p).backward()  # accumulation keeps an array too
    assert isinstance(p.grad, np.ndarray) and p.grad.shape == () and p.grad == 8.0
    user = np.ones(3)
    q = tn.tensor(np.zeros(3), requires_grad=True)
    (q * 1.0).backward(user)
    q.grad[0] = 5.0
    assert user[0] == 1.0  # the caller's array is not handed out as a .grad


def test_allreduce_path_accepts_gradients_from_sum_and_mean():
    # allreduce_gradients writes the averaged gradient back into p.grad in place; the
    # gradient of a parameter that feeds sum()/mean() directly must be writeable
    from tinynet.distributed import _pack, _unpack

    w = tn.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    w.mean().backward()
    buf, offsets = _pack([w.grad], np.float32)
    _unpack(buf * 2, offsets, [w.grad])
    assert np.allclose(w.grad, 2 / 6)


# ---- one dtype rule ------------------------------------------------------------------------

def test_one_dtype_rule():
    ints = tn.tensor([1, 2, 3])
    assert (ints * 0.5).numpy().tolist() == [0.5, 1.0, 1.5]  # never a silent [0, 0, 0]
    assert (ints / 2).dtype == np.float64 and (ints * 2).dtype == ints.dtype
    assert (0.5 * ints).numpy().tolist() == [0.5, 1.0, 1.5]
    x = tn.tensor(np.ones(3, np.float32), requires_grad=True)
    for y in (x ** np.float64(2), x * np.float64(2), x + 1.5, x / np.float32(3), 2.0 - x):
        assert y.dtype == np.float32
    (x ** np.float64(2)).sum().backward()
    assert x.grad.dtype == np.float32
    with pytest.raises(TypeError, match="different dtypes float32 and float64"):
        x + tn.tensor(np.ones(3))
    z = tn.tensor([0.0, 2.0], requires_grad=True)
    (z ** 0).sum().backward()
    assert z.grad.tolist() == [0.0, 0.0]  # not NaN at 0


# ---- version counter -----------------------------------------------------------------------

def test_backward_after_an_in_place_update_is_refused():
    lin = tn.nn.Linear(3, 2, rng=np.random.default_rng(0), dtype=np.float64)
    opt = SGD(lin.parameters(), lr=0.1)
    loss = lin(tn.tensor(np.ones((1, 3)))).sum()
    loss.backward(retain_graph=True)
    opt.step()
    with pytest.raises(RuntimeError, match="modified in place after forward"):
        loss.backward()
    lin.load_state_dict(lin.state_dict())  # also an in-place change
    loss2 = lin(tn.tensor(np.ones((1, 3)))).sum()
    loss2.backward()  # a new forward is fine


def test_tensors_over_the_same_memory_share_the_version_count():
    """A tensor over a parameter's memory (detach(), tn.tensor(w), a view such as reshape or a
    slice) sees the parameter's in-place updates: a graph that saved the old values refuses
    backward, and refuses it before any gradient reaches a leaf."""
    w = tn.nn.Parameter(np.array([2.0, 3.0]))
    frozen = tn.nn.Parameter(np.array([[2.0, 3.0]]))
    frozen.requires_grad = False
    cases = {
        "detach": lambda: w.detach(),
        "tn.tensor": lambda: tn.tensor(w),
        "reshape": lambda: w.reshape(1, 2),
        "slice": lambda: w[1:],
        "frozen view": lambda: frozen.reshape(2),
    }
    for name, alias_of in cases.items():
        x = tn.tensor(np.array([1.0, 1.0]), requires_grad=True)
        loss = (alias_of() * x).sum()
        for p in (w, frozen):
            p._bump_version()  # what SGD.step and load_state_dict do
        with pytest.raises(RuntimeError, match="modified in place after forward"):
            loss.backward()
        assert x.grad is None, name  # nothing was delivered before the refusal
    # a copy is not affected
    x = tn.tensor(np.array([1.0, 1.0], np.float32), requires_grad=True)
    loss = (tn.tensor(w, dtype=np.float32) * x).sum()
    w._bump_version()
    loss.backward()
    assert x.grad.tolist() == [2.0, 3.0]
    # an op's fresh output has a count of its own
    y = w * 2.0
    w._bump_version()
    assert y._version == 0


# ---- optimiser and modules keep their parameters ---------------------------------------------

def test_sgd_updates_a_big_non_contiguous_parameter():
    w = tn.nn.Parameter(np.ones((1100, 1100), np.float32).T)  # big enough for the compiled update, F-ordered
    w.grad = np.ones((1100, 1100), np.float32)
    SGD([w], lr=0.1, momentum=0.0, weight_decay=0.0).step()
    np.testing.assert_allclose(w.data, 0.9, rtol=1e-6)


def test_sgd_state_lives_on_each_parameters_device():
    a = tn.nn.Parameter(np.ones(3))
    b = tn.nn.Parameter(np.ones(3)).to("cpu:1")
    opt = SGD([a, b], lr=0.1)
    assert opt.velocity_devices == [CPU0, CPU1]
    model = tn.nn.Linear(2, 2, dtype=np.float64)
    opt = SGD(model.parameters(), lr=0.1)
    params = model.parameters()
    model.to("cpu:1")
    assert model.parameters()[0] is params[0] and params[0].device == CPU1  # moved in place
    params[0].grad = np.ones((2, 2))
    with pytest.raises(RuntimeError, match="parameter 0 is on cpu:1 but its momentum buffer on cpu"):
        opt.step()


def test_load_state_dict_copies_in_place_on_the_parameters_device():
    model = tn.nn.Linear(2, 3, dtype=np.float64).to("cpu:1")
    before = model.parameters()
    weight_memory = before[0].data
    model.load_state_dict({"weight": np.full((3, 2), 7.0, np.float32), "bias": np.zeros(3)})
    after = model.parameters()
    assert all(p is q for p, q in zip(before, after)) and after[0].data is weight_memory
    assert after[0].device == CPU1 and after[0].dtype == np.float64 and (after[0].data == 7).all()


def test_module_registered_twice_is_counted_and_updated_once():
    lin = tn.nn.Linear(2, 2, dtype=np.float64)
    net = tn.nn.Sequential(lin, tn.nn.ReLU(), lin)
    assert net.num_parameters() == 6 and len(net.parameters()) == 2
    assert list(net.state_dict()) == ["0.weight", "0.bias"]
    before = lin.weight.data.copy()
    lin.weight.grad = np.ones((2, 2))
    lin.bias.grad = np.ones(2)
    SGD(net.parameters(), lr=0.1, momentum=0.0, weight_decay=0.0).step()
    np.testing.assert_allclose(lin.weight.data, before - 0.1)  # once, not twice


def test_seeding_never_touches_cupy(monkeypatch):
    class FakeCupy:
        class random:
            @staticmethod
            def seed(s):
                raise AssertionError("manual_seed created a CUDA context")

    monkeypatch.setattr(backend, "_cupy", FakeCupy)
    monkeypatch.setattr(backend, "_cupy_checked", True)
    tn.manual_seed(3)


def test_bool_of_a_one_element_tensor():
    assert bool(tn.tensor(1.0)) and not bool(tn.tensor([0.0]))
    with pytest.raises(ValueError, match="ambiguous"):
        bool(tn.tensor([1.0, 2.0]))


# ---- two towers on two virtual CPU devices ---------------------------------------------------

def _grouped_and_split():
    kw = dict(bias_init="caffe", seed=3, dtype=np.float64)
    return AlexNet(10, **kw), AlexNet(10, towers=("cpu:0", "cpu:1"), **kw)


def _step(model, opt, x, labels, seed):
    tn.manual_seed(seed)  # the same dropout masks for both models
    opt.zero_grad()
    loss = F.cross_entropy(model(tn.tensor(x)), labels)
    loss.backward()
    opt.step()
    return loss.item()


def _batch(i):
    rng = np.random.default_rng(i)
    return rng.standard_normal((2, 3, 227, 227)) * 30, rng.integers(0, 10, 2)


@pytest.mark.slow
def test_split_on_two_devices_equals_grouped_through_sgd_steps_and_resume(tmp_path):
    grouped, split = _grouped_and_split()
    assert [p.device for p in split.tower0.parameters()] == [CPU0] * 16
    assert [p.device for p in split.tower1.parameters()] == [CPU1] * 16
    opt_g = SGD(grouped.parameters(), lr=0.01)
    opt_s = SGD(split.parameters(), lr=0.01)
    assert set(opt_s.velocity_devices) == {CPU0, CPU1}
    losses_g = [_step(grouped, opt_g, *_batch(i), seed=100 + i) for i in range(2)]
    # the split model: one step, a checkpoint, a fresh model and optimiser resumed from it
    losses_s = [_step(split, opt_s, *_batch(0), seed=100)]
    path = save_checkpoint(str(tmp_path / "split.npz"), split, opt_s, meta={"step": 1})
    _, resumed = _grouped_and_split()
    opt_r = SGD(resumed.parameters(), lr=0.01)
    params_before = resumed.parameters()
    restore(load_checkpoint(path), resumed, opt_r)
    assert all(p is q for p, q in zip(params_before, resumed.parameters()))  # the optimiser still holds them
    resumed.traffic.reset()
    losses_s += [_step(resumed, opt_r, *_batch(1), seed=101)]
    np.testing.assert_allclose(losses_s, losses_g, rtol=1e-10)
    a, b = grouped.state_dict(), resumed.state_dict()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-10, atol=1e-12, err_msg=key)
    # tower 1's weights really trained after the resume (they differ from the checkpoint's)
    assert not np.array_equal(resumed.tower1.conv1.weight.data, load_checkpoint(path)["model"]["conv1.weight"][48:])
    per_step = 2 * 8 * (128 * 13 * 13 + 4608 + 2048 + 2048) * 2 + 2 * 8 * 5
    assert resumed.traffic.forward_bytes == resumed.traffic.backward_bytes == per_step  # counted crossings


def test_a_misplaced_op_is_refused():
    split = AlexNet(10, towers=("cpu:0", "cpu:1"), dtype=np.float64)
    x = tn.tensor(np.zeros((1, 3, 227, 227)))
    with pytest.raises(RuntimeError, match="Conv2d: expected all tensors to be on the same device, "
                                           "but found at least two devices, cpu and cpu:1"):
        F.conv2d(x, split.tower1.conv1.weight, split.tower1.conv1.bias, stride=4)  # tower 1's filters, tower 0's data


# ---- GPU-to-GPU copies, against a fake CUDA that enforces CUDA's rules ------------------------

class _FakeCuda:
    """Just enough of CuPy to run copy_to_device between two GPUs, checking the
    rules a real GPU enforces: an event is recorded on a stream of the device it
    was created on, and a raw byte copy reads a contiguous source."""

    def __init__(self):
        fake = self
        self.current = 0
        self.copies = []

        class Device:
            def __init__(self, i=None):
                self.id, self.prev = (fake.current if i is None else i), None

            def __enter__(self):
                self.prev, fake.current = fake.current, self.id

            def __exit__(self, *exc):
                fake.current = self.prev

        class Stream:
            def __init__(self, dev):
                self.device, self.waits = dev, []

            def wait_event(self, ev):
                self.waits.append(ev)

        class Event:
            def __init__(self, disable_timing=True):
                self.device = fake.current

            def record(self, stream):
                if stream.device != self.device:
                    raise RuntimeError("cudaErrorInvalidResourceHandle: event and stream on different devices")

        class Memory:
            def __init__(self, arr):
                self.arr = arr

            def copy_from_device_async(self, src, nbytes, stream):
                if not src.arr.flags.c_contiguous:
                    raise AssertionError("raw copy from a non-contiguous buffer")
                fake.copies.append((src.arr.device_id, fake.current, nbytes))
                self.arr.ravel()[:] = np.frombuffer(src.arr.tobytes()[:nbytes], src.arr.dtype)

        class Array(np.ndarray):
            __module__ = "cupy"

            @property
            def data(self):
                return Memory(self)

            @property
            def device(self):
                return Device(self.device_id)

        def make(a):
            out = np.ascontiguousarray(a).view(Array)
            out.device_id = fake.current
            return out

        streams = {0: Stream(0), 1: Stream(1)}
        self.streams = streams
        self.Array = Array
        self.make = make
        self.cuda = type("cuda", (), dict(
            Device=Device, Event=Event,
            get_current_stream=staticmethod(lambda: streams[fake.current]),
            runtime=type("runtime", (), dict(getDeviceCount=staticmethod(lambda: 2)))))

    def ascontiguousarray(self, a):
        out = self.make(np.asarray(a))
        return out

    def empty(self, shape, dtype):
        return self.make(np.empty(shape, dtype))


def test_gpu_to_gpu_copy_orders_events_on_the_right_devices(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "_cupy_checked", True)
    with fake.cuda.Device(0):
        whole = fake.make(np.arange(24, dtype=np.float32).reshape(2, 12))
    view = whole[:, 4:8]  # a channel slice, as Concat.backward hands to CrossTower.backward
    assert not view.flags.c_contiguous
    with fake.cuda.Device(0):  # the current device is GPU 0 ...
        out = backend.copy_to_device(view, "cuda:0", "cuda:1")  # ... copying to GPU 1
    np.testing.assert_array_equal(np.asarray(out), np.asarray(whole)[:, 4:8])
    assert out.device_id == 1 and fake.copies == [(0, 1, 2 * 4 * 4)]
    assert len(fake.streams[1].waits) == 1 and fake.streams[1].waits[0].device == 0  # dst waits for src
    assert len(fake.streams[0].waits) == 1 and fake.streams[0].waits[0].device == 1  # src's memory outlives the copy
    with fake.cuda.Device(1):
        back = backend.copy_to_device(out, "cuda:1", "cuda:0")
    assert back.device_id == 0
