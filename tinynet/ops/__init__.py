"""Differentiable ops, one ``Function`` class each, with naive twins.

``kernels_for(x)`` picks the module holding the backend-specific loops:
``cpu_kernels`` (NumPy) or ``tinynet.cuda.kernels`` (CuPy + kernels/*.cu).
Both export the same functions with the same arguments.
"""

import numpy as np

from ..backend import get_array_module


def kernels_for(x):
    if get_array_module(x) is np:
        from . import cpu_kernels

        return cpu_kernels
    from ..cuda import kernels

    return kernels
