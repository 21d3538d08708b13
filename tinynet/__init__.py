"""tinynet: a from-scratch deep-learning engine for learning how
convolutional networks work, on NumPy (CPU) and CuPy (GPU).

    import tinynet as tn
    import tinynet.functional as F
    x = tn.tensor(images, requires_grad=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
"""

from . import functional, nn, optim  # noqa: F401
from .autograd import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: F401
from .backend import Device, device, get_array_module  # noqa: F401
from .ops.cpu_kernels import get_num_threads, reuse_freed_memory, set_num_threads  # noqa: F401
from .ops.math import concat, split  # noqa: F401
from .random import get_rng_state, manual_seed, set_rng_state  # noqa: F401
from .tracing import trace  # noqa: F401  (with tn.trace(): ... prints every op)
from .profile import profile  # noqa: F401  (with tn.profile() as p: ... ms per kind of work)
from .summary import summary  # noqa: F401,E402  (tn.summary(model, (3, 227, 227)))
from . import models  # noqa: F401,E402  (tn.models.AlexNet after a plain `import tinynet as tn`)

__version__ = "0.1.0"
