"""tinynet: a from-scratch deep-learning engine for learning how
convolutional networks work, on NumPy (CPU) and CuPy (GPU).

    import tinynet as tn
    import tinynet.functional as F
    x = tn.tensor(images, requires_grad=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()

OpenBLAS (NumPy's BLAS) keeps its idle worker threads spinning for about 0.1 s
after every matrix product.  Between a training step's GEMMs tinynet runs its
own passes (im2col, Winograd's transforms, pooling, LRN) and its batches of small
products on every core, and a spinning worker takes a core from them.  So
importing tinynet asks OpenBLAS to let idle workers sleep at once
(OPENBLAS_THREAD_TIMEOUT=4, its smallest value; waking them costs microseconds
per GEMM).  OpenBLAS reads it once, when it loads: import tinynet before NumPy
(or set the variable in the environment).  On a 2-core AMD EPYC (Zen 5) spinning
idle threads made AlexNet's training steps 1.5 times as long at batch 8 and 1.3
times at batch 32 (benchmarks/blas_threads.py).  Imported after NumPy, with no
value in the environment, tinynet warns, and runs the products it would have
handed to OpenBLAS's threads on its own threads instead, one BLAS thread each
(cpu_kernels.matmul), so that OpenBLAS's stay asleep through its steps: NumPy
first then took 0.83-1.13 of the time of tinynet first, where it had taken
1.19-1.54 (batches 1, 8 and 32).  A value already in the environment is kept
(OPENBLAS_THREAD_TIMEOUT=28 is OpenBLAS's own default).

The CPU's loops (im2col, col2im, max-pool, LRN) come in two versions that give
the same bits: NumPy (tinynet/ops/cpu_kernels.py, the one to read) and compiled
C++ (kernels/cpu_loops.cpp, built with the C++ compiler on first use, faster).
``set_cpu_loops("numpy" or "compiled")`` or TINYNET_CPU_LOOPS chooses; the
default is "compiled", and without a compiler tinynet warns and runs NumPy's.
"""

import os as _os
import sys as _sys


def _openblas_loaded():
    """Whether an OpenBLAS is in this process already (NumPy imported before tinynet)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("openblas" in line.lower() for line in maps)
    except OSError:  # no /proc (macOS, Windows): NumPy brings its OpenBLAS when imported
        return "numpy" in _sys.modules


# what OpenBLAS read when it loaded, if it loaded before this line: the environment's value, or
# none (its default of 0.1 s)
_blas_timeout_seen = ("environment" if "OPENBLAS_THREAD_TIMEOUT" in _os.environ else
                      "default" if _openblas_loaded() else "tinynet")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import functional, nn, optim  # noqa: F401,E402
from .autograd import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: F401,E402
from .backend import Device, device, get_array_module  # noqa: F401,E402
from .ops.cpu_kernels import get_num_threads, reuse_freed_memory, set_num_threads  # noqa: F401,E402
from .ops.cpu_loops import get_cpu_loops, set_cpu_loops  # noqa: F401,E402
from .ops.math import concat, split  # noqa: F401,E402
from .random import get_rng_state, manual_seed, set_rng_state  # noqa: F401,E402
from .tracing import trace  # noqa: F401,E402  (with tn.trace(): ... prints every op)
from .profile import profile  # noqa: F401,E402  (with tn.profile() as p: ... ms per kind of work)
from .summary import summary  # noqa: F401,E402  (tn.summary(model, (3, 227, 227)))
from . import models  # noqa: F401,E402  (tn.models.AlexNet after a plain `import tinynet as tn`)

__version__ = "0.1.0"

from .ops import cpu_kernels as _cpu_kernels  # noqa: E402

_cpu_kernels.note_blas_timeout(_blas_timeout_seen)  # warns where OpenBLAS loaded first, with no value
