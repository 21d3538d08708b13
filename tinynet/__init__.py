"""tinynet: a from-scratch deep-learning engine for learning how
convolutional networks work, on NumPy (CPU) and CuPy (GPU).

    import tinynet as tn
    import tinynet.functional as F
    x = tn.tensor(images, requires_grad=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()

OpenBLAS (NumPy's BLAS) keeps its idle worker threads spinning for about 0.1 s
after every matrix product.  Between a training step's GEMMs tinynet runs its
elementwise passes (im2col, col2im, pooling, LRN) on every core, and a spinning
worker takes a core from them: on 2 cores those passes ran up to 1.5x slower
and a whole AlexNet step about 12% slower.  So importing tinynet first asks
OpenBLAS to let idle workers sleep at once (OPENBLAS_THREAD_TIMEOUT=4, its
smallest value; waking them costs microseconds per GEMM).  It takes effect only
when tinynet is imported before NumPy loads OpenBLAS; a value already in the
environment is kept (OPENBLAS_THREAD_TIMEOUT=28 is OpenBLAS's own default).

The CPU's loops (im2col, col2im, max-pool, LRN) come in two versions that give
the same bits: NumPy (tinynet/ops/cpu_kernels.py, the one to read) and compiled
C++ (kernels/cpu_loops.cpp, built with the C++ compiler on first use, faster).
``set_cpu_loops("numpy" or "compiled")`` or TINYNET_CPU_LOOPS chooses; the
default is "compiled", and without a compiler tinynet warns and runs NumPy's.
"""

import os as _os

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
