"""Max pooling with overlapping windows (AlexNet: 3x3, stride 2).

    x: (N, C, H, W) -> y: (N, C, OH, OW), OH = (H + 2*pad - KH) // SH + 1

Backward sends each output's gradient to the position of its window that
held the maximum; where windows overlap (stride < kernel) an input pixel
can collect gradient from several outputs, and those add.  On ties the
first maximum in row-major window order (top-most, then left-most) wins;
padding (-inf) never does: a window whose real pixels are all -inf sends its
gradient to the first of them, as PyTorch does.
Forward records where each window's maximum sits (argmax, int32, an index
into the input plane), so backward is one scatter of the gradient; it costs
4 bytes per output: at stride 2, about a quarter of a float32 input's bytes.
When no backward will run (``no_grad``, or an input that needs no gradient:
inference), forward finds the maxima only: on the CPU, AlexNet's three pools
took 0.53 ms instead of 0.63 at batch 1 and 5.4 instead of 6.8 at batch 32.
"""

import numpy as np

from ..autograd import Function, is_grad_enabled
from ..backend import get_array_module
from . import kernels_for


class MaxPool2d(Function):
    def forward(self, x, kernel_size=(3, 3), stride=(2, 2), padding=(0, 0)):
        xp = get_array_module(x)
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        if ph or pw:  # pad with -inf so padding never wins
            xpad = xp.full(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), -xp.inf, x.dtype)
            xpad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
        else:
            xpad = x
        oh = (xpad.shape[2] - kh) // sh + 1
        ow = (xpad.shape[3] - kw) // sw + 1
        if xpad.shape[2] * xpad.shape[3] > np.iinfo(np.int32).max:  # argmax is an int32 place in a plane
            raise ValueError(f"max_pool2d: a padded plane of {xpad.shape[2]}x{xpad.shape[3]} pixels has more "
                             f"places than an int32 argmax can name ({np.iinfo(np.int32).max})")
        backward = is_grad_enabled() and self.needs_input_grad[0]  # will anything read argmax?
        y, argmax = kernels_for(x).maxpool_forward(xpad, kh, kw, sh, sw, oh, ow, with_argmax=backward)
        if backward and (ph or pw):
            # only a window whose real pixels are all -inf can have chosen its padding (which
            # comes first in row-major order): it takes its first real pixel instead
            lost = y == -xp.inf
            if lost.any():
                ky, kx, real = (xp.asarray(a) for a in first_real_offsets(x.shape[2:], kernel_size, stride, padding))
                oy, ox = xp.arange(oh)[:, None], xp.arange(ow)[None, :]
                first = ((oy * sh + ky) * xpad.shape[3] + ox * sw + kx).astype(np.int32)
                argmax = xp.where(lost & real, first, argmax)
        self.save_for_backward(argmax)
        self.geometry = (xpad.shape, kh, kw, sh, sw, ph, pw)
        return y

    def describe(self):
        """Window geometry of the last forward (for tinynet.trace/summary)."""
        _, kh, kw, sh, sw, ph, pw = self.geometry
        return {"kind": "pool", "kernel": (kh, kw), "stride": (sh, sw), "padding": (ph, pw),
                "overlapping": kh > sh or kw > sw}

    def backward(self, gy):
        (argmax,) = self.saved
        xpad_shape, kh, kw, sh, sw, ph, pw = self.geometry
        gx = kernels_for(gy).maxpool_backward(argmax, gy, xpad_shape, kh, kw, sh, sw)
        if ph or pw:  # the padding's gradient is dropped
            gx = gx[:, :, ph:xpad_shape[2] - ph, pw:xpad_shape[3] - pw]
        return gx


def first_real_offsets(size, kernel_size, stride, padding):
    """For each window (oy, ox) over a padded (H, W) plane: the offset (ky, kx) of its first
    pixel that is no padding, in row-major order, and whether it has one; three (OH, OW)
    arrays (NumPy)."""
    (H, W), (kh, kw), (sh, sw), (ph, pw) = size, kernel_size, stride, padding
    oh, ow = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    top, left = np.arange(oh)[:, None] * sh, np.arange(ow)[None, :] * sw   # window corners
    ky, kx = np.maximum(ph - top, 0), np.maximum(pw - left, 0)
    real = (ky < kh) & (top + ky < ph + H) & (kx < kw) & (left + kx < pw + W)
    return np.broadcast_to(ky, (oh, ow)), np.broadcast_to(kx, (oh, ow)), real


def max_pool2d_naive(x, kernel_size, stride, padding=(0, 0)):
    """Reference max pooling by loops over output positions.
    Returns (y, argmax) with argmax the first maximum's row-major position."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    N, C, H, W = xpad.shape
    oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
    y = np.empty((N, C, oh, ow), x.dtype)
    arg = np.empty((N, C, oh, ow), np.int64)
    ky, kx, real = first_real_offsets(x.shape[2:], kernel_size, stride, padding)
    for i in range(oh):
        for j in range(ow):
            win = xpad[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(N, C, -1)
            arg[:, :, i, j] = win.argmax(axis=2)  # np.argmax returns the first maximum
            y[:, :, i, j] = win.max(axis=2)
            if real[i, j]:  # all real pixels -inf: the first of them, not the padding before it
                arg[:, :, i, j][y[:, :, i, j] == -np.inf] = ky[i, j] * kw + kx[i, j]
    return y, arg


def max_pool2d_backward_naive(x, gy, kernel_size, stride, padding=(0, 0)):
    """Reference gradient: each output adds its gradient at its argmax."""
    (_, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    _, arg = max_pool2d_naive(x, kernel_size, stride, padding)
    N, C, H, W = x.shape
    gx = np.zeros((N, C, H + 2 * ph, W + 2 * pw), gy.dtype)
    for i in range(gy.shape[2]):
        for j in range(gy.shape[3]):
            ky, kx = np.divmod(arg[:, :, i, j], kw)
            n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
            np.add.at(gx, (n, c, i * sh + ky, j * sw + kx), gy[:, :, i, j])
    return gx[:, :, ph:ph + H, pw:pw + W]
