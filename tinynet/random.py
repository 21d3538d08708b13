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


def fill(out, draw, rows_per_piece=None):
    """Fill the array ``out`` with ``draw(shape)`` (e.g. ``lambda s: rng.normal(0, 0.01, s)``)
    a piece of rows at a time, so that the float64 numbers NumPy draws never exist all at once:
    fc6's 37.7M weights drawn whole would be a 302 MB float64 temporary beside the float32
    weights, and that moment, not training, set the process's peak memory for inference.  A
    NumPy generator draws one number after another, so the pieces hold exactly the numbers one
    whole draw would.  Returns ``out``."""
    if out.ndim == 0 or out.size == 0:
        out[...] = draw(out.shape)
        return out
    row = out[0].size
    rows = rows_per_piece or max(1, 2**20 // row)  # about 8 MB of float64 per piece
    for i in range(0, out.shape[0], rows):
        piece = out[i:i + rows]
        piece[...] = draw(piece.shape)
    return out
