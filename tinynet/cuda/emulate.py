"""The CUDA kernels of ``kernels/*.cu`` run on the CPU, for tests and for learning.

The ``.cu`` files are compiled unchanged by the host C++ compiler (g++ or clang++)
through ``kernels/host/cuda_host.h``, which defines the CUDA built-ins they use,
and ``kernels/host/launcher.cpp``, which runs a grid as a loop over blocks and
threads.  The shared library is built on first use into a cache folder named by
a hash of the sources and flags, so it is rebuilt whenever a kernel changes:

    ~/.cache/tinynet/cuda-emulation/<hash>/kernels.so   (or $XDG_CACHE_HOME/...)

Two levels:

* ``launch(name, args, grid, block, order)``: one kernel launch, as
  ``cupy.RawKernel`` would make it: ``args`` are NumPy arrays (passed as
  pointers) and NumPy scalars of the kernel's exact types (np.int64 for
  ``long long``, np.int32 for ``int``, np.float32/np.float64).  ``order``
  says in which order the threads run: "forward", "reversed", "shuffled"
  (with ``seed``), or an explicit sequence of thread numbers (a subset runs
  only those threads).
* ``im2col``, ``col2im``, ``maxpool_forward``, ... : the same names and
  arguments as ``tinynet.cuda.kernels`` and ``tinynet.ops.cpu_kernels``,
  on NumPy arrays, launched as the GPU module launches them.

Set ``TINYNET_EMULATION_DEBUG=1`` to build without optimisation and with full
debug information, for stepping through a thread in gdb (see docs/tour).
"""

import ctypes
import os

import numpy as np

from .. import cbuild
from ..cbuild import compiler  # noqa: F401  (tests and docs ask emulate.compiler())
from .kernels import THREADS, Kernels, blocks_for, ctype_of, kernel_path
_SOURCES = ("host/cuda_host.h", "host/launcher.cpp", "im2col.cu", "lrn.cu", "maxpool.cu")
_libraries = {}


def _flags(sanitize):
    if os.environ.get("TINYNET_EMULATION_DEBUG"):
        flags = ["-O0", "-g3"]
    else:
        flags = ["-O2", "-g"]
    if sanitize:
        flags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    return ["-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra"] + flags


def build_folder(cxx, flags):
    """The cache folder for this compiler, these flags and these sources: named by a hash of
    all of them, so that any change to a kernel, the header or the launcher rebuilds."""
    return cbuild.build_folder("cuda-emulation", cxx, flags, _source_paths())


def _source_paths():
    return [kernel_path(name) for name in _SOURCES]


def library_path(sanitize=None):
    """Build the emulation library if needed and return its path.

    ``sanitize="address"`` builds it with AddressSanitizer (it can then only be
    loaded by a process started with libasan preloaded; see tests)."""
    return cbuild.build_library("cuda-emulation", "kernels", kernel_path("host/launcher.cpp"),
                                _source_paths(), _flags(sanitize))


def library(sanitize=None):
    """The loaded library (built on first use, then cached in this process)."""
    lib = _libraries.get(sanitize)
    if lib is None:
        lib = ctypes.CDLL(library_path(sanitize))
        lib.emu_signature.restype = ctypes.c_char_p
        lib.emu_signature.argtypes = [ctypes.c_char_p]
        lib.emu_thread_position.restype = None
        lib.emu_thread_position.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                            ctypes.c_longlong, ctypes.POINTER(ctypes.c_uint)]
        lib.emu_launch.restype = ctypes.c_int
        lib.emu_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                   ctypes.POINTER(ctypes.c_longlong), ctypes.c_longlong,
                                   ctypes.POINTER(ctypes.c_void_p)]
        _libraries[sanitize] = lib
    return lib


# a kernel argument letter -> the NumPy scalar type it must be given as
_SCALARS = {"i": (np.int32, ctypes.c_int), "q": (np.int64, ctypes.c_longlong),
            "f": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double)}


def _dim3(shape, what):
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    if not 1 <= len(shape) <= 3 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
        raise ValueError(f"launch: {what} must be 1 to 3 positive ints (x, y, z), got {shape!r}")
    return (ctypes.c_uint * 3)(*(tuple(int(s) for s in shape) + (1, 1))[:3])


def thread_position(grid, block, t):
    """Where thread number ``t`` of a launch sits: ((blockIdx.x, .y, .z), (threadIdx.x, .y, .z)),
    as the launcher sets them (x fastest, then y, then z)."""
    grid3, block3 = _dim3(grid, "grid"), _dim3(block, "block")
    if not 0 <= t < np.prod(list(grid3), dtype=np.int64) * np.prod(list(block3), dtype=np.int64):
        raise ValueError(f"thread_position: thread {t} is not in a grid of {tuple(grid3)} blocks of "
                         f"{tuple(block3)} threads")
    out = (ctypes.c_uint * 6)()
    library().emu_thread_position(grid3, block3, t, out)
    return tuple(out[:3]), tuple(out[3:])


def thread_order(order, threads, seed=0):
    """Thread numbers 0 .. threads-1 in the order named ("forward", "reversed",
    "shuffled" with ``seed``), or the given sequence, checked."""
    if isinstance(order, str):
        if order == "forward":
            return None  # the launcher's own loop
        if order == "reversed":
            return np.arange(threads - 1, -1, -1, dtype=np.int64)
        if order == "shuffled":
            return np.random.default_rng(seed).permutation(threads).astype(np.int64)
        raise ValueError(f"launch: order must be 'forward', 'reversed', 'shuffled' or a sequence of "
                         f"thread numbers, got {order!r}")
    ids = np.ascontiguousarray(order, dtype=np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= threads):
        raise ValueError(f"launch: thread numbers must lie in [0, {threads}) for this grid, "
                         f"got {ids.min()} .. {ids.max()}")
    return ids


def launch(name, args, grid, block, order="forward", seed=0, sanitize=None):
    """Run kernel ``name`` (e.g. "im2col_kernel<float>") over ``grid`` blocks of
    ``block`` threads on the CPU, the threads one after another in ``order``.

    ``args`` as for CuPy: C-contiguous NumPy arrays for pointers, NumPy scalars of
    the exact C types for the rest; a mismatch is refused before the kernel runs."""
    lib = library(sanitize)
    signature = lib.emu_signature(name.encode())
    if signature is None:
        raise ValueError(f"launch: no kernel named {name!r} in kernels/*.cu")
    signature = signature.decode()
    if len(args) != len(signature):
        raise ValueError(f"launch: {name} takes {len(signature)} arguments, got {len(args)}")
    keep, pointers = [], (ctypes.c_void_p * len(args))()
    for i, (letter, a) in enumerate(zip(signature, args)):
        if letter == "p":
            if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
                raise TypeError(f"launch: {name} argument {i} must be a C-contiguous NumPy array, "
                                f"got {type(a).__name__}")
            value = ctypes.c_void_p(a.ctypes.data)
        else:
            want, ctype = _SCALARS[letter]
            if type(a) is not want:
                raise TypeError(f"launch: {name} argument {i} must be {want.__name__}, got {type(a).__name__}")
            value = ctype(a.item())
        keep.append(value)
        pointers[i] = ctypes.cast(ctypes.pointer(value), ctypes.c_void_p)
    grid3, block3 = _dim3(grid, "grid"), _dim3(block, "block")
    threads = int(np.prod(list(grid3), dtype=np.int64) * np.prod(list(block3), dtype=np.int64))
    ids = thread_order(order, threads, seed)
    ids_ptr = None if ids is None else ids.ctypes.data_as(ctypes.POINTER(ctypes.c_longlong))
    rc = lib.emu_launch(name.encode(), grid3, block3, ids_ptr, 0 if ids is None else ids.size, pointers)
    if rc != 0:
        raise RuntimeError(f"launch: {name} failed in the launcher (code {rc})")


# ----------------------------------------------------------------------------
# The twins of tinynet.cuda.kernels, on NumPy arrays
# ----------------------------------------------------------------------------

def _run_emulated(filename, name, dtype, total, args):
    """One launch on the emulated grid, as tinynet.cuda.kernels launches it on a GPU (all the
    kernels are in one library, so the file name is not needed)."""
    launch(f"{name}<{ctype_of(dtype)}>", args, (blocks_for(total),), (THREADS,))


# The same names and arguments as tinynet.cuda.kernels, on NumPy arrays: the same host code
# (tinynet.cuda.kernels.Kernels), launched on the emulated grid.
_emulated = Kernels(lambda: np, _run_emulated)
im2col, col2im = _emulated.im2col, _emulated.col2im
maxpool_forward, maxpool_backward = _emulated.maxpool_forward, _emulated.maxpool_backward
lrn_forward, lrn_backward = _emulated.lrn_forward, _emulated.lrn_backward
