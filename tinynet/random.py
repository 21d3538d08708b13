"""tinynet's global random generator (dropout masks, weight init).

``manual_seed(s)`` makes runs repeatable.  Its state can be saved and
restored (``get_rng_state``/``set_rng_state``) so that a resumed training
run draws exactly the numbers an uninterrupted one would.

All of tinynet's random numbers are drawn on the host, from this one NumPy
generator, even for GPU tensors (dropout masks are copied to the device).
So seeding never touches CuPy: seeding CuPy's generator would create a CUDA
context (hundreds of MB of GPU memory) on GPU 0 in every process, CPU runs
and every MPI rank included.
"""

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator (the only one tinynet draws from)."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator():
    return _generator


def get_rng_state():
    """The global generator's state as a JSON-able dict."""
    return _generator.bit_generator.state


def set_rng_state(state):
    _generator.bit_generator.state = state
