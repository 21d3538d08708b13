"""Array backends: NumPy on the CPU, CuPy on CUDA devices.

Layer code asks ``xp = get_array_module(x)`` and then writes ``xp.exp``,
``xp.matmul``... so one implementation serves both.  CuPy is optional:
importing tinynet never imports it unless a CUDA array or device is used.
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


class Device:
    """A place for arrays: ``Device("cpu")`` or ``Device("cuda:1")``."""

    def __init__(self, spec="cpu"):
        if isinstance(spec, Device):
            self.kind, self.index = spec.kind, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string like 'cpu' or 'cuda:0', got {spec!r}")
        m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", spec.strip())
        if not m:
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
        self.kind = m.group(1)
        self.index = int(m.group(2) or 0) if self.kind == "cuda" else None
        if self.kind == "cpu" and m.group(2) is not None:
            raise ValueError(f"device: 'cpu' takes no index, got {spec!r}")

    def __repr__(self):
        return f"device('{self}')"

    def __str__(self):
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    def __eq__(self, other):
        other = Device(other) if isinstance(other, str) else other
        return isinstance(other, Device) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self):
        return hash((self.kind, self.index))

    @property
    def xp(self):
        return np if self.kind == "cpu" else require_cupy(self)


def device(spec="cpu"):
    """``tn.device("cpu")`` or ``tn.device("cuda:0")``."""
    return Device(spec)


def require_cupy(dev):
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError(
            f"device {dev}: CUDA devices need CuPy, which is not installed "
            "(pip install -e .[gpu], i.e. a cupy-cuda12x/13x wheel matching your CUDA)"
        )
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no GPU
        raise RuntimeError(f"device {dev}: CuPy is installed but no CUDA GPU is usable ({e})") from e
    if dev.index >= count:
        raise RuntimeError(f"device {dev}: only {count} CUDA device(s) present")
    return cp


def device_of(array):
    """The Device an array lives on."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return Device("cpu")
    dev = getattr(array, "device", None)
    return Device(f"cuda:{dev.id}") if dev is not None else Device("cpu")


def to_device(t, dev):
    """Copy tensor ``t``'s data to device ``dev`` (a new leaf if it moved)."""
    from .autograd import Tensor

    dev = Device(dev)
    if t.device == dev:
        return t
    if dev.kind == "cuda":
        require_cupy(dev)  # a clear error without CuPy or without that GPU
    return Tensor(copy_to_device(t.data, dev), requires_grad=t.requires_grad)


# ----------------------------------------------------------------------------
# Running work on a device: the device context plus that device's own stream
# ----------------------------------------------------------------------------

_streams = {}


def stream_for(dev, lane=0):
    """The CUDA stream tinynet uses for ``lane`` on device ``dev`` (created on
    first use).  Each tower is a lane, so two towers on one GPU still get two
    streams and can overlap.

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
    current for the CuPy calls inside; on the CPU it does nothing.
    ``stream=`` uses a given stream instead of a lane's (backward runs an op
    on the stream its forward ran on)."""

    def __init__(self, dev, lane=0, stream=None):
        self.dev, self.lane, self.stream = Device(dev), lane, stream
        self._contexts = []

    def __enter__(self):
        if self.dev.kind == "cuda":
            cp = require_cupy(self.dev)
            stream = self.stream if self.stream is not None else stream_for(self.dev, self.lane)
            self._contexts = [cp.cuda.Device(self.dev.index), stream]
            for c in self._contexts:
                c.__enter__()
        return self.dev

    def __exit__(self, *exc):
        for c in reversed(self._contexts):
            c.__exit__(*exc)
        self._contexts = []
        return False


def current_stream_of(array):
    """(Device, the CuPy stream current now) for a GPU array; None on the CPU."""
    if isinstance(array, np.ndarray):
        return None
    cp = cupy_or_none()
    if cp is None or not isinstance(array, cp.ndarray):
        return None
    return Device(f"cuda:{array.device.id}"), cp.cuda.get_current_stream()


def copy_to_device(array, dev):
    """An explicit copy of ``array`` onto device ``dev``.

    GPU to GPU: ``cudaMemcpyPeerAsync`` (CuPy's ``copy_from_device_async``)
    on the destination's current stream, after an event recorded on the
    source's current stream, so the copy waits for the data and no kernel
    ever reads the other device's memory.  CPU to CPU returns the array
    itself: tinynet's ops never modify their inputs, so sharing is safe."""
    dev = Device(dev)
    src = device_of(array)
    if src == dev:
        return array
    cp = cupy_or_none()
    if dev.kind == "cpu":
        with cp.cuda.Device(src.index):
            return cp.asnumpy(array)
    cp = require_cupy(dev)
    if src.kind == "cpu":
        with cp.cuda.Device(dev.index):
            return cp.asarray(array)
    ready = cp.cuda.Event(disable_timing=True)
    with cp.cuda.Device(src.index):
        ready.record(cp.cuda.get_current_stream())
    with cp.cuda.Device(dev.index):
        stream = cp.cuda.get_current_stream()
        stream.wait_event(ready)
        out = cp.empty(array.shape, array.dtype)
        out.data.copy_from_device_async(array.data, array.nbytes, stream)
    return out


def tower_devices(device="cpu", spec=None):
    """The pair of devices AlexNet's two towers run on.

    ``device``: "cpu" -> ("cpu", "cpu"); "cuda" -> read ``spec``, or the
    environment variable TINYNET_DEVICES, e.g. "0,1" (one tower per GPU) or
    "0,0" (both towers on GPU 0, each on its own stream).  Without either,
    "0,1" if two GPUs are visible, else "0,0".  Checked up front: a malformed
    list or a missing GPU is a clear error here, not a crash mid-step."""
    import os

    dev = Device(device)
    if dev.kind == "cpu":
        return (Device("cpu"), Device("cpu"))
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
