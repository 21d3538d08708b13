"""Convolution as im2col + GEMM, with groups; and its naive twin.

The idea (Caffe, cuda-convnet, Chainer): copy every receptive field of the
input into one column of a matrix, the *columns* ``cols``; then convolution
is one matrix product of the filters with the columns.

    x     : (N, C, H, W)                     the input images
    weight: (O, C/G, KH, KW)                 O filters in G groups
    cols  : (C*KH*KW, N*OH*OW)               row = (channel, ky, kx), column = (image, oy, ox)
    out   : (O, N*OH*OW) = weight.reshape(O, C*KH*KW) @ cols   -> transposed to (N, O, OH, OW)

With groups, the channel axis of ``cols`` and the filter axis of ``weight``
are each cut into G blocks, and one batched matmul does the G products:

    (G, O/G, N*OH*OW) = (G, O/G, C/G*KH*KW) @ (G, C/G*KH*KW, N*OH*OW)

The column matrix is (KH*KW / stride^2) times larger than the input: for
AlexNet's conv1 at batch 128 it would be 560 MB.  So the batch is processed
in chunks of images whose columns fit in a fixed workspace budget
(``set_conv_workspace``), as Caffe builds its columns one image at a time.
The results do not depend on the chunk size.

OH = (H + 2*ph - KH) // sh + 1 and OW likewise (floor rounding, as Caffe).
"""

import threading

import numpy as np

from ..autograd import Function, is_grad_enabled
from ..backend import get_array_module
from . import cpu_kernels

# ----------------------------------------------------------------------------
# Workspace budget for the column matrix
# ----------------------------------------------------------------------------

_workspace = {"bytes": 192 * 2**20, "peak": 0, "keep": 64 * 2**20}


def set_conv_workspace(nbytes):
    """Largest column matrix (plus its GEMM output) one convolution chunk may
    allocate, in bytes.  Default 192 MiB.  Returns the previous value."""
    if not isinstance(nbytes, (int, np.integer)) or nbytes <= 0:
        raise ValueError(f"set_conv_workspace: nbytes must be a positive int, got {nbytes!r}")
    old = _workspace["bytes"]
    _workspace["bytes"] = int(nbytes)
    return old


def set_conv_keep_columns(nbytes):
    """Largest column matrix (whole batch) a convolution may keep from forward
    for its backward instead of rebuilding it, in bytes; 0 always rebuilds.
    Default 64 MiB: at batch 32 AlexNet's conv3-conv5 keep theirs (about
    125 MB in all, saving one im2col each); conv1, conv2 and everything at
    batch 128 rebuild.  Returns the previous value."""
    if not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"set_conv_keep_columns: nbytes must be an int >= 0, got {nbytes!r}")
    old = _workspace["keep"]
    _workspace["keep"] = int(nbytes)
    return old


def conv_workspace_peak(reset=False):
    """Bytes of the largest column chunk allocated so far (for reports)."""
    peak = _workspace["peak"]
    if reset:
        _workspace["peak"] = 0
    return peak


_buffers = threading.local()


def _scratch(name, shape, dtype, xp):
    """A reusable CPU buffer for one role (columns, their gradient, the GEMM
    output), grown when needed and kept between calls, so that big arrays
    are not allocated (and page-faulted) afresh for every layer and step.
    Per thread, so that two towers on two CPU threads never share one.
    On the GPU, CuPy's memory pool already does this: plain allocation."""
    if xp is not np:
        return xp.empty(shape, dtype)
    size = int(np.prod(shape))
    store = getattr(_buffers, "arrays", None)
    if store is None:
        store = _buffers.arrays = {}
    key = (name, np.dtype(dtype).str)
    buf = store.get(key)
    if buf is None or buf.size < size:
        buf = store[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def release_workspace():
    """Free this thread's reusable convolution buffers."""
    _buffers.arrays = {}


def conv_output_size(size, kernel, stride, padding):
    """Output length along one axis: (size + 2*padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _chunk_images(n, per_image_bytes, budget=None):
    """How many images one chunk may hold within the workspace budget."""
    budget = _workspace["bytes"] if budget is None else budget
    return int(max(1, min(n, budget // max(per_image_bytes, 1))))


# ----------------------------------------------------------------------------
# im2col / col2im
# ----------------------------------------------------------------------------


def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), out=None):
    """Copy every (KH, KW) receptive field of ``x`` into a column.

    x:    (N, C, H, W)
    returns cols: (C*KH*KW, N*OH*OW).  Row index = (c*KH + ky)*KW + kx,
          column index = (n*OH + oy)*OW + ox; value = x_padded[n, c, oy*sh + ky, ox*sw + kx].

    ``out``, if given, is a buffer of that shape to fill (saves an allocation).
    On the CPU this loops over the KH*KW kernel offsets; each offset copies
    one strided slice of the whole input (no loop over pixels or images).
    """
    xp = get_array_module(x)
    if xp is not np:
        from ..cuda import kernels as cuda_kernels

        return cuda_kernels.im2col(x, kh, kw, stride, padding, out)
    return cpu_kernels.im2col(x, kh, kw, stride, padding, out)


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), out=None):
    """The adjoint of ``im2col``: add every column back onto the pixels it
    was copied from.  Where windows overlap, a pixel receives the sum of
    all the columns that saw it; that is exactly the gradient of im2col.

    cols: (C*KH*KW, N*OH*OW) -> returns (N, C, H, W) with x_shape = (N, C, H, W).
    ``out``, if given, is an (N, C, H, W) array to write the result into.
    """
    xp = get_array_module(cols)
    if xp is not np:
        from ..cuda import kernels as cuda_kernels

        return cuda_kernels.col2im(cols, x_shape, kh, kw, stride, padding, out)
    return cpu_kernels.col2im(cols, x_shape, kh, kw, stride, padding, out)


# ----------------------------------------------------------------------------
# The fast convolution
# ----------------------------------------------------------------------------


class Conv2d(Function):
    """y = conv(x, weight) + bias through im2col + GEMM, the batch in chunks.

    x: (N, C, H, W); weight: (O, C/G, KH, KW); bias: (O,) or absent;
    y: (N, O, OH, OW).
    Saves x and weight.  Backward rebuilds the columns chunk by chunk (memory
    over time, as Caffe), except when the whole batch's columns fit the small
    keep budget (``set_conv_keep_columns``): then forward's are kept.
    """

    def forward(self, x, weight, *bias, stride=(1, 1), padding=(0, 0), groups=1):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        O, Cg, KH, KW = weight.shape
        G = groups
        OH = conv_output_size(H, KH, stride[0], padding[0])
        OW = conv_output_size(W, KW, stride[1], padding[1])
        self.geometry = (KH, KW, stride, padding, G, OH, OW)
        self.shapes = (x.shape, weight.shape, x.itemsize)  # for describe()
        self.has_bias = bool(bias)
        self.save_for_backward(x, weight)
        # keep the columns for backward if they are small enough (and backward will come)
        cols_bytes = C * KH * KW * N * OH * OW * x.itemsize
        keep = (is_grad_enabled() and any(self.needs_input_grad)
                and cols_bytes <= min(_workspace["keep"], _workspace["bytes"]))
        self.kept_columns = keep  # for describe(): backward reuses them, or rebuilds them

        w_groups = weight.reshape(G, O // G, Cg * KH * KW)  # (G, O/G, C/G*KH*KW)
        y = xp.empty((N, O, OH * OW), dtype=x.dtype)
        for n0, n1, cols in self._column_chunks(x, fresh=keep):
            if keep:
                self.save_for_backward(x, weight, cols)
            n = n1 - n0
            # (G, O/G, n*OH*OW) = (G, O/G, C/G*KH*KW) @ (G, C/G*KH*KW, n*OH*OW)
            prod = _scratch("prod", (G, O // G, n * OH * OW), x.dtype, xp)
            xp.matmul(w_groups, cols.reshape(G, Cg * KH * KW, -1), out=prod)
            # (O, n, OH*OW) -> (n, O, OH*OW), adding the bias in the same pass
            prod = prod.reshape(O, n, OH * OW).transpose(1, 0, 2)
            if bias:
                xp.add(prod, bias[0][None, :, None], out=y[n0:n1])
            else:
                y[n0:n1] = prod
        return y.reshape(N, O, OH, OW)

    def _column_chunks(self, x, fresh=False):
        """Yield (n0, n1, cols) for chunks of images x[n0:n1] whose columns
        fit the workspace.  cols: (C*KH*KW, (n1-n0)*OH*OW).

        ``fresh``: the whole batch in one chunk, in a new array (not the
        shared scratch buffer), to be kept for backward.  In backward, kept
        columns are used as they are."""
        KH, KW, stride, padding, G, OH, OW = self.geometry
        N, C = x.shape[:2]
        xp = get_array_module(x)
        if len(self.saved) == 3:  # backward, columns kept from forward
            yield 0, N, self.saved[2]
            return
        if fresh:
            yield 0, N, im2col(x, KH, KW, stride, padding)
            return
        per_image = (C * KH * KW + self.saved[1].shape[0]) * OH * OW * x.itemsize
        step = _chunk_images(N, per_image)
        _workspace["peak"] = max(_workspace["peak"], step * per_image)
        for n0 in range(0, N, step):
            n1 = min(N, n0 + step)
            buf = _scratch("cols", (C * KH * KW, (n1 - n0) * OH * OW), x.dtype, xp)
            yield n0, n1, im2col(x[n0:n1], KH, KW, stride, padding, out=buf)

    def describe(self):
        """The im2col and GEMM shapes of the last forward (whole batch), for
        tinynet.trace and tinynet.summary.  With K = C/G*KH*KW (one group's
        rows of the column matrix) and P = N*OH*OW (one column per output
        position of every image):

            cols          (C*KH*KW, P)        the im2col matrix
            weight_matrix (O, C/G*KH*KW)      the filters, one per row
            gemm          (G, O/G, K, P)      G products (O/G x K) @ (K x P)
            macs          G * O/G * K * P     multiply-adds (bias adds not counted)
            col_bytes     bytes of the whole column matrix (the forward builds it
                          in chunks of images, see set_conv_workspace)
            columns_kept  True if forward kept the columns for backward (they fit
                          set_conv_keep_columns), False if backward rebuilds them
        """
        (N, C, H, W), (O, Cg, KH, KW), itemsize = self.shapes
        _, _, stride, padding, G, OH, OW = self.geometry
        K, P = Cg * KH * KW, N * OH * OW
        return {
            "kind": "conv", "input": (N, C, H, W), "kernel": (KH, KW), "stride": stride,
            "padding": padding, "groups": G, "output": (N, O, OH, OW),
            "cols": (C * KH * KW, P), "weight_matrix": (O, K), "gemm": (G, O // G, K, P),
            "macs": G * (O // G) * K * P, "col_bytes": C * KH * KW * P * itemsize,
            "needs_input_grad": self.needs_input_grad,
            "columns_kept": getattr(self, "kept_columns", False),
        }

    def backward(self, gy):
        xp = get_array_module(gy)
        x, weight = self.saved[:2]
        KH, KW, stride, padding, G, OH, OW = self.geometry
        N, C, H, W = x.shape
        O, Cg = weight.shape[:2]
        need_x, need_w = self.needs_input_grad[0], self.needs_input_grad[1]
        gy = gy.reshape(N, O, OH * OW)

        gx = xp.empty_like(x) if need_x else None
        gw = xp.zeros((G, O // G, Cg * KH * KW), dtype=weight.dtype) if need_w else None
        w_groups_t = weight.reshape(G, O // G, Cg * KH * KW).transpose(0, 2, 1)
        for n0, n1, cols in self._column_chunks(x):
            n = n1 - n0
            # gradient rows per filter: (n, O, OH*OW) -> (G, O/G, n*OH*OW)
            g_rows = _scratch("prod", (O, n, OH * OW), gy.dtype, xp)
            g_rows[...] = gy[n0:n1].transpose(1, 0, 2)
            g_rows = g_rows.reshape(G, O // G, n * OH * OW)
            if need_w:
                # (G, O/G, C/G*KH*KW) += (G, O/G, n*OH*OW) @ (G, n*OH*OW, C/G*KH*KW)
                gw += xp.matmul(g_rows, cols.reshape(G, Cg * KH * KW, -1).transpose(0, 2, 1))
            if need_x:
                # (G, C/G*KH*KW, n*OH*OW) = (G, C/G*KH*KW, O/G) @ (G, O/G, n*OH*OW)
                gcols = _scratch("gcols", (G, Cg * KH * KW, n * OH * OW), gy.dtype, xp)
                xp.matmul(w_groups_t, g_rows, out=gcols)
                col2im(gcols.reshape(C * KH * KW, n * OH * OW), (n, C, H, W), KH, KW, stride, padding,
                       out=gx[n0:n1])
        grads = [gx, gw.reshape(weight.shape) if need_w else None]
        if self.has_bias:
            grads.append(gy.sum(axis=(0, 2)) if self.needs_input_grad[2] else None)
        return tuple(grads)


# ----------------------------------------------------------------------------
# The naive twin: loops over output positions, the definition read literally
# ----------------------------------------------------------------------------


def conv2d_naive(x, weight, bias=None, stride=(1, 1), padding=(0, 0), groups=1):
    """Reference convolution by its definition (slow; for tests and reading).

    y[n, o, i, j] = bias[o] + sum over c in o's group, ky, kx of
                    weight[o, c, ky, kx] * x_padded[n, g*C/G + c, i*sh + ky, j*sw + kx]
    x: (N, C, H, W) ndarray; weight: (O, C/G, KH, KW); returns (N, O, OH, OW).
    """
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH, OW = conv_output_size(H, KH, sh, ph), conv_output_size(W, KW, sw, pw)
    y = np.zeros((N, O, OH, OW), dtype=x.dtype)
    Og = O // groups
    for g in range(groups):
        xg = xp_[:, g * Cg:(g + 1) * Cg]
        wg = weight[g * Og:(g + 1) * Og]
        for i in range(OH):
            for j in range(OW):
                patch = xg[:, :, i * sh:i * sh + KH, j * sw:j * sw + KW]  # (N, C/G, KH, KW)
                y[:, g * Og:(g + 1) * Og, i, j] = np.einsum("nckl,ockl->no", patch, wg)
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv2d_backward_naive(x, weight, gy, stride=(1, 1), padding=(0, 0), groups=1):
    """Reference gradients (gx, gw, gb) of conv2d_naive, by the same loops:
    every output position sends its gradient back to the patch and the
    filter that made it."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gx_pad = np.zeros_like(xp_)
    gw = np.zeros_like(weight)
    OH, OW = gy.shape[2:]
    Og = O // groups
    for g in range(groups):
        cs, os_ = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for i in range(OH):
            for j in range(OW):
                rows, cols = slice(i * sh, i * sh + KH), slice(j * sw, j * sw + KW)
                g_ij = gy[:, os_, i, j]  # (N, O/G)
                gw[os_] += np.einsum("no,nckl->ockl", g_ij, xp_[:, cs, rows, cols])
                gx_pad[:, cs, rows, cols] += np.einsum("no,ockl->nckl", g_ij, weight[os_])
    gx = gx_pad[:, :, ph:ph + H, pw:pw + W]
    return gx, gw, gy.sum(axis=(0, 2, 3))
