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
    if dev.kind == "cpu":
        data = t.numpy()
    else:
        cp = require_cupy(dev)
        with cp.cuda.Device(dev.index):
            data = cp.asarray(t.data if isinstance(t.data, np.ndarray) else t.numpy())
    return Tensor(data, requires_grad=t.requires_grad)


# ----------------------------------------------------------------------------
# Running work on a device: the device context plus that device's own stream
# ----------------------------------------------------------------------------

_streams = {}


def stream_for(dev):
    """The non-blocking CUDA stream tinynet uses on device ``dev`` (one per
    device, created on first use), so that two towers' work can overlap."""
    dev = Device(dev)
    if dev.index not in _streams:
        cp = require_cupy(dev)
        with cp.cuda.Device(dev.index):
            _streams[dev.index] = cp.cuda.Stream(non_blocking=True)
    return _streams[dev.index]


class on_device:
    """``with on_device(dev):`` makes ``dev`` (and its stream) current for
    the CuPy calls inside; on the CPU it does nothing."""

    def __init__(self, dev):
        self.dev = Device(dev)
        self._contexts = []

    def __enter__(self):
        if self.dev.kind == "cuda":
            cp = require_cupy(self.dev)
            self._contexts = [cp.cuda.Device(self.dev.index), stream_for(self.dev)]
            for c in self._contexts:
                c.__enter__()
        return self.dev

    def __exit__(self, *exc):
        for c in reversed(self._contexts):
            c.__exit__(*exc)
        self._contexts = []
        return False


def copy_to_device(array, dev):
    """An explicit copy of ``array`` onto device ``dev``.

    GPU to GPU goes through ``cudaMemcpyPeerAsync`` on the destination's
    stream, after an event recorded on the source's stream (so the copy
    waits for the data to be ready, and no kernel ever reads the other
    device's memory).  CPU to CPU returns the array itself: tinynet's ops
    never modify their inputs, so sharing is safe."""
    dev = Device(dev)
    src = device_of(array)
    if src == dev:
        return array
    if dev.kind == "cpu":
        with on_device(src):
            return cupy_or_none().asnumpy(array, stream=stream_for(src))
    cp = require_cupy(dev)
    if src.kind == "cpu":
        with on_device(dev):
            return cp.asarray(array)
    ready = cp.cuda.Event(disable_timing=True)
    with on_device(src):
        ready.record(stream_for(src))
    with on_device(dev):
        stream = stream_for(dev)
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
