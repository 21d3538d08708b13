"""Local response normalisation across channels (AlexNet section 3.3).

Paper formula (the default here, as in Chainer):

    b[c] = a[c] / (k + alpha * sum_{c' in window(c)} a[c']^2) ** beta

with window(c) = channels c - size//2 .. c + (size-1)//2, clipped at 0 and
C-1 (no wrap), and the paper's k=2, size=5, alpha=1e-4, beta=0.75.

Caffe, PyTorch and ONNX divide alpha by ``size`` (and default k=1): pass
``alpha_over_size=True`` for that convention.  Paper alpha 1e-4 is Caffe
alpha 5e-4; Caffe's alpha 1e-4 with k=1 is paper alpha 2e-5.

    x: (N, C, H, W) -> y: (N, C, H, W)
"""

import numpy as np

from ..autograd import Function
from . import kernels_for


class LocalResponseNorm(Function):
    def forward(self, x, size=5, alpha=1e-4, beta=0.75, k=2.0):
        y, scale = kernels_for(x).lrn_forward(x, size, alpha, beta, k)
        self.params = (size, alpha, beta)
        self.save_for_backward(x, y, scale)
        return y

    def backward(self, gy):
        x, y, scale = self.saved
        size, alpha, beta = self.params
        return kernels_for(gy).lrn_backward(x, y, scale, gy, size, alpha, beta)


def local_response_norm_naive(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Reference LRN, one channel at a time, exactly the paper's sum."""
    N, C, H, W = x.shape
    y = np.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        s = k + alpha * (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / s ** beta
    return y
