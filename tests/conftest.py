import contextlib
import os
import subprocess
import sys

import tinynet  # noqa: F401  before NumPy, as every script does (tinynet/__init__.py)
import numpy as np
import pytest
from hypothesis import settings

import tinynet.functional as F
from tinynet.ops import cpu_kernels
from tinynet.cbuild import compiler
from tinynet.ops.cpu_loops import set_cpu_loops

# Two hypothesis profiles, chosen by HYPOTHESIS_PROFILE:
#   ci (default)  the same 25 examples every run (derandomized): heavy ops draw few examples,
#                 and the whole suite stays within a few minutes on 2 cores;
#   explore       fresh random examples every run, 400 per test: run it now and then, e.g.
#                 HYPOTHESIS_PROFILE=explore python -m pytest -q tests/test_conv.py
#                 (a failure prints the example and a @reproduce_failure blob).
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=400, deadline=None, derandomize=False,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The code paths of the convolution, pooling and LRN kernels (see conv_path).
PATHS = ["whole", "chunked", "threaded", "numpy"]


@contextlib.contextmanager
def conv_path(path):
    """Run the ops inside down one of their code paths, whatever the batch size.

    "whole":    the whole batch in one column chunk, the convolution keeps forward's columns
                for backward, every pass runs on the calling thread (what small batches meet);
    "chunked":  one image per column chunk (a workspace budget of 1 byte) and columns rebuilt
                in backward (none kept), on the calling thread;
    "threaded": the whole batch in one column chunk, columns rebuilt in backward, and im2col,
                col2im, pooling and LRN cut into one-image pieces on 3 threads;
    "numpy":    as "whole", with the NumPy loops (ops.cpu_kernels) in place of the compiled
                ones (ops.cpu_loops), which the other three run (when a C++ compiler is here).
    Training at batch 128 combines the last two: chunks of many images, each cut into pieces
    for the threads.  The previous settings come back on exit.
    """
    if path not in PATHS:
        raise ValueError(f"conv_path: path must be one of {PATHS}, got {path!r}")
    old_threads = cpu_kernels.get_num_threads()
    # the compiled loops need a C++ compiler; without one every path runs the NumPy loops
    old_loops = set_cpu_loops("numpy" if path == "numpy" or compiler() is None else "compiled")
    old_budget = F.set_conv_workspace(1 if path == "chunked" else 2**30)
    old_keep = F.set_conv_keep_columns(2**30 if path in ("whole", "numpy") else 0)
    old_chunk = cpu_kernels.set_chunk_bytes(1 if path == "threaded" else 2**30)
    cpu_kernels.set_num_threads(3 if path == "threaded" else 1)
    try:
        yield
    finally:
        F.set_conv_workspace(old_budget)
        F.set_conv_keep_columns(old_keep)
        cpu_kernels.set_chunk_bytes(old_chunk)
        cpu_kernels.set_num_threads(old_threads)
        set_cpu_loops(old_loops)


def shuffled_linspace(shape, rng, lo=-1.0, hi=1.0):
    """Distinct values in random order: no ties for max-pool, no zeros for ReLU."""
    n = int(np.prod(shape))
    values = np.linspace(lo, hi, n) + (hi - lo) / (4 * max(n, 1))  # keeps 0 out of the grid
    return rng.permutation(values).reshape(shape)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def image_tree(root, counts, classes, size, mark, seed):
    """root/<split>/<class>/<i>.png for each split in ``counts`` (split -> images per class):
    random RGB noise of ``size`` (h, w) whose channel ``c`` (the class's index) is set to
    ``mark``, so every class has a colour cast of its own.  Returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                pixels[..., c] = mark
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def load_example(name):
    """examples/<name>.py imported as a module (the examples are scripts, not a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def asan_runtime(cxx):
    """The path of compiler ``cxx``'s AddressSanitizer runtime (libasan), or None."""
    try:
        out = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def run_under_asan(script, cxx, **env):
    """Run the test file ``script`` as a program, in a process with the AddressSanitizer runtime
    of compiler ``cxx`` preloaded (the test is skipped if there is none), with ``env`` added to
    its environment; it must print "every access in bounds".  Every heap buffer then has
    poisoned memory right before and after it, so one element read or written out of bounds
    aborts that process with a report, which the failure shows."""
    runtime = asan_runtime(cxx) if cxx else None
    if runtime is None:
        pytest.skip(f"{cxx or 'no C++ compiler'}: no AddressSanitizer runtime (libasan), so out-of-bounds "
                    "reads that do not reach an output are not checked here")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # the process builds the sanitized library first: 5-6 minutes of one core on a 2-core Zen 4
    # EPYC, before the loops run at all, so the limit leaves room for a slow machine
    out = subprocess.run([sys.executable, os.path.abspath(script)], capture_output=True, text=True, timeout=1800,
                         cwd=root, env={**os.environ, "PYTHONPATH": path, "LD_PRELOAD": runtime,
                                        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", **env})
    report = "\n".join(line for line in out.stderr.splitlines() if not line.startswith("  0x"))[-4000:]
    assert out.returncode == 0 and "every access in bounds" in out.stdout, report
