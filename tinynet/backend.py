"""Array backends and devices: NumPy on the CPU, CuPy on CUDA devices.

Layer code asks ``xp = get_array_module(x)`` and then writes ``xp.exp``,
``xp.matmul``... so one implementation serves both.  CuPy is optional:
importing tinynet never imports it unless a CUDA array or device is used.

Devices.  A ``Device`` is a place where a tensor's data lives: ``cuda:0``,
``cuda:1``, ... are GPUs; ``cpu:0``, ``cpu:1``, ... are *virtual* CPU devices,
all in host memory (``"cpu"`` means ``cpu:0``).  Virtual CPU devices exist so
that code written for two GPUs (AlexNet's two towers) runs, and is tested,
on any laptop with the same rules: a tensor knows its device, an op refuses
inputs from two devices, and only an explicit copy (``Tensor.to``,
``copy_to_device``) moves data between them.  This is the idea of JAX's
host-platform device count.  The rule itself is enforced in one place, the
op guard in ``autograd.Function.apply`` and the backward walk.

This module is the ground floor: it knows arrays and devices, not tensors.
"""

import re

import numpy as np

_cupy = None
_cupy_checked = False


def cupy_or_none():
    """The cupy module if it can be imported, else None (never raises)."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: F401

            _cupy = cupy
        except Exception:  # ImportError, or a broken CUDA install
            _cupy = None
    return _cupy


def get_array_module(*arrays):
    """``numpy`` or ``cupy``, whichever module the arrays belong to."""
    for a in arrays:
        data = getattr(a, "data", a) if not isinstance(a, np.ndarray) else a
        if isinstance(data, np.ndarray) or np.isscalar(data):
            continue
        if type(data).__module__.startswith("cupy"):
            return cupy_or_none()
    return np


def is_gpu_array(array):
    """True for a CuPy array (without importing CuPy)."""
    return not isinstance(array, np.ndarray) and type(array).__module__.startswith("cupy")


class Device:
    """A place for arrays: ``Device("cpu")`` (= ``cpu:0``), ``Device("cpu:1")``
    (a second, virtual, CPU device) or ``Device("cuda:1")``."""

    __slots__ = ("kind", "index")

    def __init__(self, spec="cpu"):
        if isinstance(spec, Device):
            self.kind, self.index = spec.kind, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string like 'cpu', 'cpu:1' or 'cuda:0', got {spec!r}")
        m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", spec.strip())
        if not m:
            raise ValueError(f"device: expected 'cpu', 'cpu:N', 'cuda' or 'cuda:N', got {spec!r}")
        self.kind = m.group(1)
        self.index = int(m.group(2) or 0)

    @property
    def is_cuda(self):
        return self.kind == "cuda"

    def __repr__(self):
        return f"device('{self}')"

    def __str__(self):
        # 'cpu' for the first CPU device, as PyTorch prints it; 'cpu:1', 'cuda:0', ...
        return "cpu" if (self.kind, self.index) == ("cpu", 0) else f"{self.kind}:{self.index}"

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = Device(other)
            except (TypeError, ValueError):
                return False
        return isinstance(other, Device) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self):
        return hash((self.kind, self.index))

    @property
    def xp(self):
        return np if self.kind == "cpu" else require_cupy(self)


CPU = Device("cpu")


def device(spec="cpu"):
    """``tn.device("cpu")``, ``tn.device("cpu:1")`` or ``tn.device("cuda:0")``."""
    return Device(spec)


def require_cupy(dev):
    """The cupy module, checked to be usable for CUDA device ``dev``."""
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError(
            f"device {dev}: CUDA devices need CuPy, which is not installed "
            "(see README: pip install -e '.[gpu-cuda12]' or '.[gpu-cuda13]', matching your CUDA)"
        )
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no GPU
        raise RuntimeError(f"device {dev}: CuPy is installed but no CUDA GPU is usable ({e})") from e
    if dev.index >= count:
        raise RuntimeError(f"device {dev}: only {count} CUDA device(s) present")
    return cp


def device_of_array(array, default=CPU):
    """The device a raw array is on: its GPU for a CuPy array; ``default``
    for a NumPy array, since host memory does not say which virtual CPU
    device it belongs to (a Tensor does: ``Tensor.device``)."""
    if is_gpu_array(array):
        return Device(f"cuda:{array.device.id}")
    return Device(default)


# ----------------------------------------------------------------------------
# Running work on a device: the device context, and per-tower streams
# ----------------------------------------------------------------------------

class device_guard:
    """``with device_guard(dev):`` makes ``dev`` the current CUDA device for
    the CuPy calls inside (allocations, kernels), keeping that device's
    current stream.  On a CPU device it does nothing.  ``Function.apply``
    enters it for every op, with the device of the op's inputs."""

    __slots__ = ("dev", "_ctx")

    def __init__(self, dev):
        self.dev, self._ctx = dev, None

    def __enter__(self):
        if self.dev is not None and self.dev.kind == "cuda":
            self._ctx = require_cupy(self.dev).cuda.Device(self.dev.index)
            self._ctx.__enter__()
        return self.dev

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None
        return False


_streams = {}


def stream_for(dev, lane=0):
    """The CUDA stream tinynet uses for ``lane`` on device ``dev`` (created on
    first use, on that device).  Each tower is a lane, so two towers on one
    GPU still get two streams and can overlap.

    The streams are *blocking* streams on purpose: CUDA orders them against
    the legacy default stream, where everything outside a tower runs (the
    crossings' concatenations and copies, the loss, the optimiser).  So a
    tower's work always sees finished inputs without explicit waits, and
    the towers overlap with each other between crossings."""
    dev = Device(dev)
    key = (dev.index, lane)
    if key not in _streams:
        cp = require_cupy(dev)
        with cp.cuda.Device(dev.index):
            _streams[key] = cp.cuda.Stream(non_blocking=False)
    return _streams[key]


class on_device:
    """``with on_device(dev, lane):`` makes ``dev`` and its lane's stream
    current for the CuPy calls inside; on a CPU device it does nothing.
    ``stream=`` uses a given stream instead of a lane's (backward runs an op
    on the stream its forward ran on)."""

    def __init__(self, dev, lane=0, stream=None):
        self.dev, self.lane, self.stream = Device(dev), lane, stream
        self._contexts = []

    def __enter__(self):
        if self.dev.kind == "cuda":
            cp = require_cupy(self.dev)
            stream = self.stream if self.stream is not None else stream_for(self.dev, self.lane)
            # device first: CuPy keeps one current stream per device
            self._contexts = [cp.cuda.Device(self.dev.index), stream]
            for c in self._contexts:
                c.__enter__()
        return self.dev

    def __exit__(self, *exc):
        for c in reversed(self._contexts):
            c.__exit__(*exc)
        self._contexts = []
        return False


def current_stream(dev):
    """The CuPy stream current on CUDA device ``dev`` now; None on a CPU device."""
    if dev.kind != "cuda":
        return None
    cp = require_cupy(dev)
    with cp.cuda.Device(dev.index):  # CuPy keeps a current stream per device
        return cp.cuda.get_current_stream()


def copy_to_device(array, src, dst):
    """An explicit copy of ``array`` from device ``src`` to device ``dst``.

    * same device: the array itself (ops never modify their inputs);
    * two CPU devices: a real copy, so the two devices never share memory,
      exactly as two GPUs would not (an in-place update on one must not be
      seen on the other);
    * host <-> GPU: ``cupy.asarray`` / ``cupy.asnumpy`` under the GPU's context;
    * GPU to GPU: a peer copy (``cudaMemcpyPeerAsync``) on the destination's
      current stream, ordered both ways by events:

      1. an event recorded on the *source's* stream (created on the source
         device: CUDA requires event and stream on one device) that the
         destination's stream waits for, so the copy reads finished data;
      2. the copy reads a contiguous source: a strided view (a channel slice
         of a concatenation's gradient) is first made contiguous on the
         source, never copied as raw bytes from the start of its buffer;
      3. an event recorded on the destination's stream after the copy, that
         the source's stream waits for, so the source's memory (returned to
         CuPy's per-stream pool when Python drops it) is not reused by later
         work on the source's stream before the copy has read it.

      No kernel ever reads another device's memory."""
    src, dst = Device(src), Device(dst)
    if src == dst:
        return array
    if src.kind == "cpu" and dst.kind == "cpu":
        return np.array(array, copy=True, order="C")
    if dst.kind == "cpu":
        cp = require_cupy(src)
        with cp.cuda.Device(src.index):
            return cp.asnumpy(array)
    cp = require_cupy(dst)
    if src.kind == "cpu":
        with cp.cuda.Device(dst.index):
            return cp.asarray(array)
    require_cupy(src)
    with cp.cuda.Device(src.index):
        src_stream = cp.cuda.get_current_stream()
        source = cp.ascontiguousarray(array)          # on the source device, its stream
        ready = cp.cuda.Event(disable_timing=True)    # created on the source device
        ready.record(src_stream)
    with cp.cuda.Device(dst.index):
        dst_stream = cp.cuda.get_current_stream()
        dst_stream.wait_event(ready)
        out = cp.empty(source.shape, source.dtype)
        out.data.copy_from_device_async(source.data, source.nbytes, dst_stream)
        done = cp.cuda.Event(disable_timing=True)     # created on the destination device
        done.record(dst_stream)
    src_stream.wait_event(done)  # the source's memory outlives the copy on its own stream
    return out


def tower_devices(device="cpu", spec=None):
    """The pair of devices AlexNet's two towers run on.

    ``device``: "cpu" -> (cpu:0, cpu:1), two virtual CPU devices, so the split
    runs on any machine with the same rules as on two GPUs; "cuda" -> read
    ``spec``, or the environment variable TINYNET_DEVICES, e.g. "0,1" (one
    tower per GPU) or "0,0" (both towers on GPU 0, each on its own stream).
    Without either, "0,1" if two GPUs are visible, else "0,0".  Checked up
    front: a malformed list or a missing GPU is a clear error here, not a
    crash mid-step."""
    import os

    if ":" in str(device):  # one device named: the towers would not be on it, so refuse it
        raise ValueError(f"two towers need two devices, but {device!r} names one: give 'cpu' (towers on "
                         f"cpu:0 and cpu:1) or 'cuda' (the GPUs of TINYNET_DEVICES, e.g. '0,1' or '2,2')")
    dev = Device(device)
    if dev.kind == "cpu":
        return (Device("cpu:0"), Device("cpu:1"))
    cp = require_cupy(dev)
    count = cp.cuda.runtime.getDeviceCount()
    spec = spec if spec is not None else os.environ.get("TINYNET_DEVICES")
    if spec is None:
        spec = "0,1" if count >= 2 else "0,0"
    parts = [p.strip() for p in str(spec).split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"TINYNET_DEVICES: expected two GPU indices like '0,1' or '0,0', got {spec!r}")
    indices = [int(p) for p in parts]
    for i in indices:
        if i >= count:
            raise ValueError(f"TINYNET_DEVICES={spec!r}: GPU {i} does not exist ({count} visible)")
    return (Device(f"cuda:{indices[0]}"), Device(f"cuda:{indices[1]}"))
