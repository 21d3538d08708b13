"""Fully connected layer: y = x @ weight.T + bias.

    x: (N, in_features); weight: (out_features, in_features) as PyTorch;
    bias: (out_features,); y: (N, out_features)
Backward: gx = gy @ weight; gw = gy.T @ x; gb = gy summed over the batch.

On the CPU a small batch takes other routes to the same products
(``forward_gemm`` and ``weight_grad_gemm``): OpenBLAS, NumPy's BLAS, is slow
at these shapes.  At batch 1-4 the forward is a matrix-vector product per
image, and up to batch 32 the weight gradient a sum of outer products, each
summed in an order of its own (the CPU loops' ``matvec`` and ``outer_sum``):
their numbers differ from OpenBLAS's by rounding only.
"""

import numpy as np

from ..autograd import Function
from ..backend import get_array_module
from ..profile import section
from . import kernels_for
from .cpu_kernels import matmul, rows_matmul

# The GEMMs that carry the weight matrix (fc6: 4096 x 9216, 151 MB), for a small batch on the
# CPU, measured on this project's 2-core machine by benchmarks/fc_blocks.py
# (results/fc_blocks_cpu.md):
# - batch 2 to 64, the forward: OpenBLAS runs it faster as a loop over blocks of WEIGHT_ROWS
#   rows of the weight, y.T = W @ x.T block by block: fc6's forward at batch 32 44 -> 31 ms,
#   at batch 8 22 -> 16 ms; no gain from batch 128 on.  Each output is still one whole dot
#   product: the values are the GEMM's, to its rounding order.
# - batch 1: the forward is a matrix-vector product, whose time is that of reading the weight
#   once: the CPU loops' matvec (kernels/cpu_loops.cpp, 4 rows read side by side) reads fc6's
#   at a plain read's speed, 4.3-4.4 ms against 4.7-5.1 for OpenBLAS's sgemv, and a batch-1
#   inference pass took 0.95-0.97 of the time (benchmarks/batch1.py shows the layers).  Its
#   sums run in an order of its own, which cpu_kernels.matvec (NumPy) follows to the bit; they
#   differ from OpenBLAS's by rounding only.  At batch 2-4 the same loop takes each block of 4
#   rows from memory once for all the vectors: fc6 at batch 2 6.5 ms against 10.7 by blocks of
#   rows, at batch 4 7.4 against 9.9; at batch 8 13.3 against 13.4, so no further.
# - batch 1 to 32, the weight gradient: the sum of N outer products it is, written once (the
#   CPU loops' outer_sum: each entry's N products added in order, the same bits as its NumPy
#   twin cpu_kernels.outer_sum).  Its time is that of writing gw, where OpenBLAS clears gw and
#   then adds the product into it: fc6 at batch 8 6.4 ms against 14.8 for the rows shared
#   between the threads below, batch 16 11.7 against 17.3, batch 32 18.0 against 22.3; fc7 at
#   batch 8 3.6 against 8.0; at batch 1 6.2 against 12.4 for np.multiply; no gain at 48 and 64.
#   Where the arithmetic is slower (a 2-core Zen 4 EPYC), its multiplies and adds rather than
#   its writes set the time at batch 16 and 32: its AVX-512 build took 0.81 and 0.77 of the
#   AVX2 build's time there (see the clones in kernels/cpu_loops.cpp).
# - batch 33 to 64, the weight gradient: the rows of gw shared between tinynet's threads, one
#   BLAS thread each (cpu_kernels.rows_matmul), where OpenBLAS's own two threads ran it no
#   faster than one: fc6 at batch 32 26 -> 22 ms, at batch 8 40 -> 13.
# (Interleaved, with freed memory kept for reuse.)
# SMALL_BATCH_ROUTES = False takes the single products everywhere (the benchmark compares).
WEIGHT_ROWS = 512
SMALL_BATCH = range(2, 65)
MATVEC_BATCH = range(1, 5)
OUTER_SUM_BATCH = range(1, 33)
SMALL_BATCH_ROUTES = True


def small_batch_cpu(x):
    """Whether the small-batch routes may run for x: a CPU array, and SMALL_BATCH_ROUTES."""
    return SMALL_BATCH_ROUTES and get_array_module(x) is np


def _by_row_blocks(a, b):
    """a @ b, WEIGHT_ROWS rows of a (and of the result) per product."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    for i in range(0, a.shape[0], WEIGHT_ROWS):
        matmul(a[i:i + WEIGHT_ROWS], b, out=out[i:i + WEIGHT_ROWS])
    return out


def forward_gemm(x, weight):
    """x @ weight.T, on the CPU for batch 1-4 as the matrix-vector products it is (the CPU
    loops' ``matvec``), and for batch 5-64 as (weight @ x.T).T, WEIGHT_ROWS rows of the
    weight at a time."""
    if small_batch_cpu(x) and x.shape[0] in MATVEC_BATCH:
        return kernels_for(x).matvec(weight, x)
    if small_batch_cpu(x) and x.shape[0] in SMALL_BATCH:
        return np.ascontiguousarray(_by_row_blocks(weight, x.T).T)
    return matmul(x, weight.T)


def sums_outer_products(x):
    """Whether the weight gradient for input x is the CPU loops' sum of outer products
    (outer_sum): a CPU array at batch 1-32 (OUTER_SUM_BATCH)."""
    return small_batch_cpu(x) and x.shape[0] in OUTER_SUM_BATCH


def weight_grad_gemm(gy, x):
    """gy.T @ x, on the CPU for batch 1-32 as the sum of outer products it is (the CPU loops'
    ``outer_sum``), and for batch 33-64 its rows shared between the threads."""
    if sums_outer_products(x):
        return kernels_for(x).outer_sum(gy, x)
    if small_batch_cpu(x) and x.shape[0] in SMALL_BATCH:
        return rows_matmul(gy.T, x)
    return matmul(gy.T, x)


class Linear(Function):
    updatable_inputs = (1,)  # the weight: see backward

    def forward(self, x, weight, *bias):
        self.save_for_backward(x, weight)
        self.has_bias = bool(bias)
        self.x_shape, self.out_features = x.shape, weight.shape[0]  # for describe()
        # (N, out) = (N, in) @ (in, out)
        with section("GEMM"):
            y = forward_gemm(x, weight)
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
        # an optimiser that updates the weight in backward (SGD(update_in_backward=True)), where
        # it can at this batch, takes gw as it is summed and never stores it
        update = self.updates.get(1)
        if update is not None and not update.takes(gy, x):
            update = None
        with section("GEMM"):
            gx = matmul(gy, weight) if self.needs_input_grad[0] else None   # (N, in) = (N, out) @ (out, in)
            gw = weight_grad_gemm(gy, x) if self.needs_input_grad[1] and update is None else None  # (out, in)
        if update is not None:
            update.apply(gy, x)  # after gx, which needs the weight as forward used it
        if not self.has_bias:
            return gx, gw
        gb = gy.sum(axis=0) if self.needs_input_grad[2] else None
        return gx, gw, gb
