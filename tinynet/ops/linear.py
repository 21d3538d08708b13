"""Fully connected layer: y = x @ weight.T + bias.

    x: (N, in_features); weight: (out_features, in_features) as PyTorch;
    bias: (out_features,); y: (N, out_features)
Backward: gx = gy @ weight; gw = gy.T @ x; gb = gy summed over the batch.
"""

from ..autograd import Function


class Linear(Function):
    def forward(self, x, weight, *bias):
        self.save_for_backward(x, weight)
        self.has_bias = bool(bias)
        # (N, out) = (N, in) @ (in, out)
        y = x @ weight.T
        if bias:
            y += bias[0]
        return y

    def backward(self, gy):
        x, weight = self.saved
        gx = gy @ weight if self.needs_input_grad[0] else None   # (N, in) = (N, out) @ (out, in)
        gw = gy.T @ x if self.needs_input_grad[1] else None      # (out, in) = (out, N) @ (N, in)
        if not self.has_bias:
            return gx, gw
        gb = gy.sum(axis=0) if self.needs_input_grad[2] else None
        return gx, gw, gb
