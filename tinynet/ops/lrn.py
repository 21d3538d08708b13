"""Local response normalisation across channels (AlexNet section 3.3).

Paper formula (the default here, as in Chainer):

    b[c] = a[c] / (k + alpha * sum_{c' in window(c)} a[c']^2) ** beta

with window(c) = channels c - size//2 .. c + (size-1)//2, clipped at 0 and
C-1 (no wrap), and the paper's k=2, size=5, alpha=1e-4, beta=0.75.

Caffe, PyTorch and ONNX divide alpha by ``size`` (and default k=1): pass
``alpha_over_size=True`` for that convention.  Paper alpha 1e-4 is Caffe
alpha 5e-4; Caffe's alpha 1e-4 with k=1 is paper alpha 2e-5.

With ``groups=G`` the channels are cut into G blocks and each block is
normalised on its own (windows clipped at block edges): AlexNet's two
towers each normalise their own 48 (conv1) or 128 (conv2) channels, since
the other tower's channels live on the other GPU.  A free reshape does it:
(N, C, H, W) -> (N*G, C/G, H, W).

    x: (N, C, H, W) -> y: (N, C, H, W)
"""

import numpy as np

from ..autograd import Function
from . import kernels_for


class LocalResponseNorm(Function):
    """Keeps only its input: backward computes the window sums and y again (the
    kernels' lrn_backward), which costs less than writing them out in forward
    and reading them back."""

    def forward(self, x, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1):
        N, C, H, W = x.shape
        self.params = (size, alpha, beta, k, groups, x.shape)
        x = x.reshape(N * groups, C // groups, H, W)  # each group normalised on its own
        y = kernels_for(x).lrn_forward(x, size, alpha, beta, k)
        self.save_for_backward(x)
        return y.reshape(N, C, H, W)

    def describe(self):
        """The constants of the last forward (alpha as applied: the paper's
        convention), for tinynet.trace/summary."""
        size, alpha, beta, k, groups, _ = self.params
        return {"kind": "lrn", "size": size, "alpha": alpha, "beta": beta, "k": k, "groups": groups}

    def backward(self, gy):
        (x,) = self.saved
        size, alpha, beta, k, groups, shape = self.params
        gx = kernels_for(gy).lrn_backward(x, gy.reshape(x.shape), size, alpha, beta, k)
        return gx.reshape(shape)


def local_response_norm_naive(x, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1):
    """Reference LRN, one channel at a time, exactly the paper's sum."""
    N, C, H, W = x.shape
    y = np.empty_like(x)
    block = C // groups
    for c in range(C):
        first, last = (c // block) * block, (c // block) * block + block - 1  # c's group
        lo, hi = max(first, c - size // 2), min(last, c + (size - 1) // 2)
        s = k + alpha * (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / s ** beta
    return y
