"""Fully connected layer: y = x @ weight.T + bias.

    x: (N, in_features); weight: (out_features, in_features) as PyTorch;
    bias: (out_features,); y: (N, out_features)
Backward: gx = gy @ weight; gw = gy.T @ x; gb = gy summed over the batch.
"""

from ..autograd import Function
from ..profile import section


class Linear(Function):
    def forward(self, x, weight, *bias):
        self.save_for_backward(x, weight)
        self.has_bias = bool(bias)
        self.x_shape, self.out_features = x.shape, weight.shape[0]  # for describe()
        # (N, out) = (N, in) @ (in, out)
        with section("GEMM"):
            y = x @ weight.T
        if bias:
            y += bias[0]
        return y

    def describe(self):
        """The GEMM of the last forward, for tinynet.trace and tinynet.summary:
        (N x in) @ (in x out), N * in * out multiply-adds."""
        (N, fan_in), fan_out = self.x_shape, self.out_features
        return {"kind": "linear", "gemm": (1, N, fan_in, fan_out), "weight_matrix": (fan_out, fan_in),
                "macs": N * fan_in * fan_out, "needs_input_grad": self.needs_input_grad}

    def backward(self, gy):
        x, weight = self.saved
        with section("GEMM"):
            gx = gy @ weight if self.needs_input_grad[0] else None   # (N, in) = (N, out) @ (out, in)
            gw = gy.T @ x if self.needs_input_grad[1] else None      # (out, in) = (out, N) @ (N, in)
        if not self.has_bias:
            return gx, gw
        gb = gy.sum(axis=0) if self.needs_input_grad[2] else None
        return gx, gw, gb
