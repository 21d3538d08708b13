"""Elementwise nonlinearities and dropout.

ReLU: y = max(x, 0); dy/dx = 1 where x > 0, else 0 (0 at the kink).
Tanh: y = tanh(x); dy/dx = 1 - y^2 (for the paper's Figure 1 comparison).
Dropout (inverted): in training y = x * mask / (1 - p) with mask ~ Bernoulli(1 - p);
at evaluation y = x.  Same expectation as the paper's "multiply by 0.5 at test time".
"""

from ..autograd import Function
from ..backend import get_array_module


class ReLU(Function):
    def forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, 0)
        self.save_for_backward(y)  # y > 0 exactly where x > 0
        return y

    def backward(self, gy):
        (y,) = self.saved
        return gy * (y > 0)


class Tanh(Function):
    def forward(self, x):
        y = get_array_module(x).tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return gy * (1 - y * y)


class Dropout(Function):
    """The mask (already scaled by 1/(1-p)) is drawn by the caller and
    passed in, so the random stream is explicit and reproducible."""

    def forward(self, x, mask=None):
        self.save_for_backward(mask)
        return x * mask

    def backward(self, gy):
        (mask,) = self.saved
        return gy * mask


def relu_naive(x):
    return x * (x > 0)
