"""Softmax, log-softmax and the cross-entropy loss.

All subtract the row maximum before exponentiating, so large logits never
overflow: softmax(z) = softmax(z - max(z)).

    logits: (N, K) for N samples and K classes; labels: (N,) ints in [0, K)
    cross_entropy = -mean_n log_softmax(logits)[n, labels[n]]
    its gradient  = (softmax(logits) - onehot(labels)) / N

An empty batch (N = 0) has loss 0 and an empty gradient: the sum over no
samples, divided by max(N, 1).  In data-parallel training the last, smaller
global batch may leave a rank with no samples; that rank still runs the step
and its parameters' gradients come out zero, so it adds nothing to the
all-reduced sum (the mean of an empty batch, 0/0, would be NaN and poison
every rank).
"""

import numpy as np

from ..autograd import Function
from ..backend import get_array_module


def _log_softmax(z, axis):
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    def forward(self, z, axis=-1):
        y = _log_softmax(z, axis)
        self.axis = axis
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        xp = get_array_module(y)
        return gy - xp.exp(y) * gy.sum(axis=self.axis, keepdims=True)


class Softmax(Function):
    def forward(self, z, axis=-1):
        y = get_array_module(z).exp(_log_softmax(z, axis))
        self.axis = axis
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class CrossEntropy(Function):
    """Fused log-softmax + negative log-likelihood, mean over the batch."""

    def forward(self, logits, labels=None):
        xp = get_array_module(logits)
        logp = _log_softmax(logits, axis=1)
        n = logits.shape[0]
        # a copy of the labels (N integers): the caller's array, refilled with the next batch
        # before backward, would give the gradient of other labels than the loss's
        self.save_for_backward(logp, labels.copy())
        return -logp[xp.arange(n), labels].sum() / max(n, 1)

    def backward(self, g):
        logp, labels = self.saved
        xp = get_array_module(logp)
        n = logp.shape[0]
        grad = xp.exp(logp)                 # softmax
        grad[xp.arange(n), labels] -= 1     # minus one-hot
        grad *= g / max(n, 1)
        return grad


def cross_entropy_naive(logits, labels):
    """Reference: per-sample loops with the textbook formula."""
    total = 0.0
    for z, t in zip(logits, labels):
        z = z - z.max()
        total += -(z[t] - np.log(np.exp(z).sum()))
    return total / len(labels)
