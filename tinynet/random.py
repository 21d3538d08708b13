"""tinynet's global random generator (dropout masks, weight init).

``manual_seed(s)`` makes runs repeatable.  Its state can be saved and
restored (``get_rng_state``/``set_rng_state``) so that a resumed training
run draws exactly the numbers an uninterrupted one would.
"""

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator (and, if a GPU is in use, CuPy's)."""
    global _generator
    _generator = np.random.default_rng(seed)
    from .backend import cupy_or_none

    cp = cupy_or_none()
    if cp is not None:
        try:
            cp.random.seed(seed)
        except Exception:  # CuPy present but no usable device
            pass
    return _generator


def default_generator():
    return _generator


def get_rng_state():
    """The global generator's state as a JSON-able dict."""
    return _generator.bit_generator.state


def set_rng_state(state):
    _generator.bit_generator.state = state
