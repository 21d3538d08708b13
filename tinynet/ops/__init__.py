"""Differentiable ops, one ``Function`` class each, with naive twins.

``kernels_for(x)`` picks the module holding the backend-specific loops.  On
the CPU: ``cpu_loops`` (kernels/cpu_loops.cpp, compiled on first use) or
``cpu_kernels`` (NumPy), as ``tinynet.set_cpu_loops`` says; both give the
same bits (the exceptions: cpu_loops's docstring).  On a GPU: ``tinynet.cuda.kernels`` (CuPy + kernels/*.cu).  All
three export the same functions with the same arguments.
"""

import numpy as np

from ..backend import get_array_module


def kernels_for(x):
    if get_array_module(x) is np:
        from .cpu_loops import cpu_module

        return cpu_module()
    from ..cuda import kernels

    return kernels
