"""tinynet.functional: the ops as functions on tensors (names as PyTorch).

Each function checks its arguments (wrong ndim, channel mismatch, dtype
mixes...) and raises a ValueError/TypeError that names the function, the
argument, what was expected and what came; then it calls the op's
``Function.apply``, which records the graph for backward.

Shapes.  The axes always mean the same thing: N = images in the batch,
C = channels (colour planes at the input, feature maps after a conv),
H, W = rows and columns of pixels, O = filters (output channels), KH, KW =
kernel rows and columns, OH, OW = output rows and columns, K = classes,
G = groups.  Arrays are NCHW, as in Caffe and PyTorch.

    im2col        x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW)
    col2im        cols (C*KH*KW, N*OH*OW) -> (N, C, H, W)
    conv2d        x (N, C, H, W), weight (O, C/G, KH, KW), bias (O,) -> (N, O, OH, OW)
    max_pool2d    (N, C, H, W) -> (N, C, OH, OW)
    local_response_norm (N, C, H, W) -> same
    relu, tanh, dropout   any shape -> same
    linear        x (N, in), weight (out, in), bias (out,) -> (N, out)
    flatten       (N, C, H, W) -> (N, C*H*W)
    softmax, log_softmax  (N, K) -> (N, K) (any shape, along one axis)
    cross_entropy logits (N, K), labels (N,) ints -> scalar ()
    concat, split join / cut along one axis

with OH = (H + 2*padding - KH) // stride + 1 (floor, as Caffe), OW likewise.
Each op's naive twin (the definition as loops, the test oracle) sits beside
it in tinynet/ops/: conv2d_naive, max_pool2d_naive, local_response_norm_naive...
"""

import math
import numbers

import numpy as np

from .autograd import Function, Tensor, is_grad_enabled
from .backend import copy_to_device, device_guard, device_of_array, get_array_module, is_gpu_array
from .ops import activation, conv, linear as _linear, loss, lrn, pool
from .ops.conv import (conv_output_size, conv_workspace_peak, get_conv_algorithm, get_conv_workspace,  # noqa: F401
                       set_conv_algorithm, set_conv_keep_columns, set_conv_workspace)
from .ops.math import concat, split  # noqa: F401
from .random import default_generator

__all__ = [
    "im2col", "col2im", "conv2d", "max_pool2d", "local_response_norm", "relu", "tanh",
    "dropout", "dropout_mask", "dropout_rows", "linear", "flatten", "softmax", "log_softmax", "cross_entropy", "concat",
    "split", "set_conv_workspace", "get_conv_workspace", "set_conv_keep_columns", "conv_workspace_peak", "conv_output_size",
    "set_conv_algorithm", "get_conv_algorithm",
]


# ----------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------


def _as_tensor(fn, name, x, ndim=None):
    if not isinstance(x, Tensor):
        if isinstance(x, (np.ndarray, numbers.Number, list)) or get_array_module(x) is not np:
            x = Tensor(x)
        else:
            raise TypeError(f"{fn}: {name} must be a Tensor or array, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{fn}: {name} must have {ndim} dims, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must be float32 or float64, got dtype {x.dtype}")
    return x


def _same_dtype(fn, *named):
    first_name, first = named[0]
    for name, t in named[1:]:
        if t is not None and t.dtype != first.dtype:
            raise TypeError(
                f"{fn}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                "use one dtype (float32 for speed, float64 for gradient checks)"
            )


def _is_int(value):
    """An int (NumPy's too), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(fn, name, value, minimum):
    if _is_int(value):
        value = (int(value), int(value))
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(_is_int(v) for v in value)):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in value):
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {tuple(value)}")
    return (int(value[0]), int(value[1]))


def _check_window(fn, x_shape, kernel, stride, padding):
    H, W = x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]
    if kernel[0] > H or kernel[1] > W:
        raise ValueError(
            f"{fn}: kernel {kernel} is larger than the padded input {H}x{W} "
            f"(input {x_shape[2]}x{x_shape[3]}, padding {padding})"
        )


# ----------------------------------------------------------------------------
# im2col / col2im as differentiable ops (for teaching; conv2d calls the kernels)
# ----------------------------------------------------------------------------


class _Im2Col(Function):
    def forward(self, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0)):
        self.args = (x.shape, kernel, stride, padding)
        return conv.im2col(x, kernel[0], kernel[1], stride, padding)

    def backward(self, g):
        x_shape, (kh, kw), stride, padding = self.args
        return conv.col2im(g, x_shape, kh, kw, stride, padding)


class _Col2Im(Function):
    def forward(self, cols, x_shape=None, kernel=(1, 1), stride=(1, 1), padding=(0, 0)):
        self.args = (kernel, stride, padding)
        return conv.col2im(cols, x_shape, kernel[0], kernel[1], stride, padding)

    def backward(self, g):
        (kh, kw), stride, padding = self.args
        return conv.im2col(g, kh, kw, stride, padding)


def im2col(x, kernel_size, stride=1, padding=0):
    """Unfold every receptive field of ``x`` into a column.

    x: (N, C, H, W) images -> cols: (C*KH*KW, N*OH*OW).
    A row of cols is one (channel c, kernel row ky, kernel column kx),
    index (c*KH + ky)*KW + kx; a column is one (image n, output row oy,
    output column ox), index (n*OH + oy)*OW + ox; the entry is the pixel
    x_padded[n, c, oy*SH + ky, ox*SW + kx] (0 in the padding).
    kernel_size, stride, padding: an int or a pair (rows, columns).
    AlexNet's conv1, one image: (1, 3, 227, 227), 11x11 stride 4 -> (363, 3025).
    Differentiable (backward = col2im).  Walkthrough: examples/im2col_walkthrough.py.
    """
    x = _as_tensor("im2col", "x", x, ndim=4)
    k = _pair("im2col", "kernel_size", kernel_size, 1)
    s = _pair("im2col", "stride", stride, 1)
    p = _pair("im2col", "padding", padding, 0)
    _check_window("im2col", x.shape, k, s, p)
    return _Im2Col.apply(x, kernel=k, stride=s, padding=p)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0):
    """Fold columns back into images, adding where windows overlap.

    cols: (C*KH*KW, N*OH*OW), laid out as im2col's output (row = channel and
    kernel offset, column = image and output position) -> (N, C, H, W),
    the ``input_shape`` (N, C, H, W) of the images the columns came from;
    values that fell into the padding are dropped.  The adjoint (transpose)
    of im2col, which is why it is the backward of im2col:
    col2im(im2col(x)) multiplies each pixel by the number of windows that
    contain it.
    """
    cols = _as_tensor("col2im", "cols", cols, ndim=2)
    if len(input_shape) != 4:
        raise ValueError(f"col2im: input_shape must be (N, C, H, W), got {input_shape}")
    N, C, H, W = (int(v) for v in input_shape)
    k = _pair("col2im", "kernel_size", kernel_size, 1)
    s = _pair("col2im", "stride", stride, 1)
    p = _pair("col2im", "padding", padding, 0)
    _check_window("col2im", input_shape, k, s, p)
    oh, ow = conv_output_size(H, k[0], s[0], p[0]), conv_output_size(W, k[1], s[1], p[1])
    expected = (C * k[0] * k[1], N * oh * ow)
    if cols.shape != expected:
        raise ValueError(f"col2im: cols must have shape {expected} for input {input_shape}, got {cols.shape}")
    return _Col2Im.apply(cols, x_shape=(N, C, H, W), kernel=k, stride=s, padding=p)


# ----------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1, relu=False):
    """2-D convolution (cross-correlation, as every framework) by im2col + GEMM.

    x: (N, C, H, W) images (N images, C input channels, H x W pixels);
    weight: (O, C/groups, KH, KW), O filters, each seeing C/groups channels
    through a KH x KW window; bias: (O,), one per filter, or None.
    Returns (N, O, OH, OW): one feature map per filter, with
    OH = (H + 2*padding - KH) // stride + 1 and OW likewise.
    stride, padding: an int or a pair (rows, columns).
    ``groups`` splits channels and filters into independent blocks: filters
    [g*O/G, (g+1)*O/G) see only channels [g*C/G, (g+1)*C/G) (AlexNet's conv2,
    conv4, conv5 use 2: one per tower).  Naive twin: tinynet.ops.conv.conv2d_naive.
    ``relu=True`` returns relu(conv2d(...)): the same numbers, the ReLU done in
    the pass that writes the convolution's output (see ops/conv.py), not in a
    pass of its own.
    """
    fn = "conv2d"
    x = _as_tensor(fn, "x", x, ndim=4)
    weight = _as_tensor(fn, "weight", weight, ndim=4)
    if bias is not None:
        bias = _as_tensor(fn, "bias", bias, ndim=1)
    _same_dtype(fn, ("x", x), ("weight", weight), ("bias", bias))
    s = _pair(fn, "stride", stride, 1)
    p = _pair(fn, "padding", padding, 0)
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive int, got {groups!r}")
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{fn}: relu must be True or False, got {relu!r}")
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    if 0 in weight.shape:
        raise ValueError(f"{fn}: weight (filters, channels per group, KH, KW) must have at least one "
                         f"of each, got shape {weight.shape}")
    if C % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the input channels C={C}")
    if O % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the filters O={O}")
    if Cg * groups != C:
        raise ValueError(
            f"{fn}: weight expects {Cg} channels per group x {groups} groups = {Cg * groups} "
            f"input channels, but x has C={C} (x {x.shape}, weight {weight.shape})"
        )
    if bias is not None and bias.shape != (O,):
        raise ValueError(f"{fn}: bias must have shape ({O},), got {bias.shape}")
    _check_window(fn, x.shape, (KH, KW), s, p)
    args = (x, weight) if bias is None else (x, weight, bias)
    return conv.Conv2d.apply(*args, stride=s, padding=p, groups=int(groups), relu=bool(relu))


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling; ``stride`` defaults to ``kernel_size``.  AlexNet uses
    kernel 3, stride 2: windows overlap by one pixel.

    x: (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*padding - K) // stride + 1:
    each channel of each image is pooled on its own (N and C unchanged),
    OH x OW windows per channel.  kernel_size, stride, padding: an int or a
    pair (rows, columns); padding counts as -infinity (it never wins).
    Gradient goes to the first maximum of each window (row-major) on ties.
    Naive twin: tinynet.ops.pool.max_pool2d_naive.
    """
    fn = "max_pool2d"
    x = _as_tensor(fn, "x", x, ndim=4)
    k = _pair(fn, "kernel_size", kernel_size, 1)
    s = k if stride is None else _pair(fn, "stride", stride, 1)
    p = _pair(fn, "padding", padding, 0)
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise ValueError(f"{fn}: padding {p} must be at most half the kernel {k}")
    _check_window(fn, x.shape, k, s, p)
    return pool.MaxPool2d.apply(x, kernel_size=k, stride=s, padding=p)


def check_lrn_constants(fn, size, alpha, beta, k):
    """Refuse an LRN window or constant that would give NaN, zeros or a division by zero."""
    if not _is_int(size) or size < 1:
        raise ValueError(f"{fn}: size must be a positive int, got {size!r}")
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{fn}: {name} must be a finite, non-negative number, got {v!r}")
    if k == 0:
        raise ValueError(f"{fn}: k must be > 0 (with k = 0 a zero input divides by zero)")


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=False, groups=1):
    """Local response normalisation across channels, the paper's formula:

        y[c] = x[c] / (k + alpha * sum_{c' in window(c)} x[c']^2) ** beta

    window(c) = c - size//2 .. c + (size-1)//2, clipped at the channel edges.
    Defaults are the paper's (size 5, alpha 1e-4, beta 0.75, k 2).
    ``alpha_over_size=True`` uses alpha/size instead (the Caffe/PyTorch
    convention; PyTorch's defaults are alpha=1e-4, k=1).
    ``groups=G`` normalises each block of C/G channels on its own (AlexNet's
    towers: the window never reaches into the other tower's channels).
    x: (N, C, H, W) -> same shape; the window runs along the channel axis C,
    separately for every image n and pixel (h, w).
    Naive twin: tinynet.ops.lrn.local_response_norm_naive.
    """
    fn = "local_response_norm"
    x = _as_tensor(fn, "x", x, ndim=4)
    check_lrn_constants(fn, size, alpha, beta, k)
    if not _is_int(groups) or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"{fn}: groups must be a positive int dividing the channels C={x.shape[1]}, got {groups!r}")
    a = float(alpha) / size if alpha_over_size else float(alpha)
    return lrn.LocalResponseNorm.apply(x, size=int(size), alpha=a, beta=float(beta), k=float(k),
                                       groups=int(groups))


def relu(x):
    """max(x, 0), elementwise.  x: any shape -> the same shape.
    Gradient 1 where x > 0, else 0 (0 at the kink x = 0)."""
    return activation.ReLU.apply(_as_tensor("relu", "x", x))


def tanh(x):
    """tanh(x), elementwise.  x: any shape -> the same shape (the paper's
    Figure 1 compares it with ReLU).  Gradient 1 - tanh(x)^2."""
    return activation.Tanh.apply(_as_tensor("tanh", "x", x))


# (start, total) while a dropout_rows block is active, else None: see dropout_rows.
_dropout_rows = None


class dropout_rows:
    """``with F.dropout_rows(start, total):`` -- masks for rows of a larger batch.

    Data-parallel training (tinynet.distributed) gives each of n ranks rows
    start..start+N-1 of a global batch of ``total`` samples.  Inside this block
    ``dropout_mask`` draws the mask for the WHOLE global batch, shape
    (total, ...), from the (seeded, identical on every rank) generator and
    returns this rank's N rows.  So every sample gets the mask it would get in
    a single process with the global batch, whatever n is, and the generators
    of all ranks stay in step (each draws the same numbers).  The first axis of
    every masked tensor must be the batch axis (true for Dropout in AlexNet:
    (N, 4096)).  Cost: each rank draws total/N times more random numbers than it
    uses (the mask is as big as an fc layer's output; small next to the layer).

    ``start`` int >= 0, ``total`` int >= 1.  Blocks do not nest.
    """

    def __init__(self, start, total):
        if not (isinstance(start, numbers.Integral) and isinstance(total, numbers.Integral)
                and 0 <= start < total):
            raise ValueError(f"dropout_rows: need ints 0 <= start < total, got start={start!r}, "
                             f"total={total!r}")
        self.rows = (int(start), int(total))

    def __enter__(self):
        global _dropout_rows
        if _dropout_rows is not None:
            raise RuntimeError("dropout_rows: blocks do not nest")
        _dropout_rows = self.rows
        return self

    def __exit__(self, *exc):
        global _dropout_rows
        _dropout_rows = None
        return False


def dropout_mask(shape, p, dtype, rng=None):
    """The scaled keep-mask of inverted dropout: 1/(1-p) with probability
    1-p, else 0; a NumPy array drawn from ``rng`` (default: tinynet's global
    generator).  Drawn on the host even for GPU tensors (it is only as big as
    an fc layer's output), so that ``tn.manual_seed`` fixes it everywhere and
    a resumed run draws the same masks.  Inside ``dropout_rows(start, total)``
    the mask of the whole global batch is drawn and rows start..start+N-1
    returned (N = shape[0])."""
    rng = default_generator() if rng is None else rng
    shape = tuple(shape)
    if _dropout_rows is not None:
        start, total = _dropout_rows
        if not shape or start + shape[0] > total:
            raise ValueError(f"dropout_mask: inside dropout_rows(start={start}, total={total}) the "
                             f"first axis is the batch, but a mask of shape {shape} starting at row "
                             f"{start} does not fit in a global batch of {total}")
        draw = (total,) + shape[1:]                 # the whole global batch's mask ...
    else:
        draw = shape
    mask = (rng.random(draw, dtype=np.dtype(dtype)) >= p).astype(dtype)
    mask *= 1.0 / (1.0 - p)
    if _dropout_rows is not None:
        mask = mask[start:start + shape[0]].copy()  # ... of which this rank keeps its own rows
    return mask


def dropout(x, p=0.5, training=True, rng=None, mask=None):
    """Inverted dropout: in training, zero each element with probability p
    and scale the survivors by 1/(1-p); identity when not training.

    ``rng``: a numpy.random.Generator for the mask (default: tinynet's
    global generator, seeded by ``tn.manual_seed``).  ``mask``: a ready mask
    from ``dropout_mask`` instead (the two-tower model draws one mask for
    both towers, as the single-device model does).
    x: any shape, e.g. (N, 4096) -> the same shape; mask: the shape of x.
    """
    fn = "dropout"
    x = _as_tensor(fn, "x", x)
    if not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"{fn}: p must be in [0, 1), got {p!r}")
    if not training or p == 0:
        return x
    given = mask is not None
    if mask is None:
        mask = dropout_mask(x.shape, p, x.dtype, rng)
    elif tuple(mask.shape) != x.shape:
        raise ValueError(f"{fn}: mask must have the shape of x {x.shape}, got {tuple(mask.shape)}")
    elif mask.dtype != x.dtype:  # a mask of another dtype would change the activations' dtype
        raise TypeError(f"{fn}: mask must have the dtype of x ({x.dtype}), got {mask.dtype}; "
                        f"dropout_mask(shape, p, x.dtype) draws one")
    if isinstance(mask, Tensor) and mask.device != x.device:  # as any op refuses two devices
        raise RuntimeError(f"{fn}: the mask is on {mask.device} but x on {x.device}; move one with .to(device)")
    mask = mask.data if isinstance(mask, Tensor) else mask
    with device_guard(x.device):  # a host mask goes to x's GPU, not to the current one
        if given and is_grad_enabled():  # the caller's mask, changed before backward, would
            mask = x.device.xp.array(mask, copy=True)   # change the gradient: a copy is kept
        elif x.device.kind == "cuda":
            mask = x.device.xp.asarray(mask)
        if not is_grad_enabled():
            return Tensor(x.data * mask, device=x.device)
    return activation.Dropout.apply(x, mask=mask)


def linear(x, weight, bias=None):
    """Fully connected layer: y = x @ weight.T + bias.

    x: (N, in), N samples of ``in`` features; weight: (out, in), one row per
    output unit (PyTorch's layout); bias: (out,) or None.  Returns (N, out).
    AlexNet's fc6: (N, 9216) @ (9216, 4096) -> (N, 4096).
    """
    fn = "linear"
    x = _as_tensor(fn, "x", x, ndim=2)
    weight = _as_tensor(fn, "weight", weight, ndim=2)
    if bias is not None:
        bias = _as_tensor(fn, "bias", bias, ndim=1)
    _same_dtype(fn, ("x", x), ("weight", weight), ("bias", bias))
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{fn}: x has {x.shape[1]} features but weight {weight.shape} expects {weight.shape[1]}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"{fn}: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    args = (x, weight) if bias is None else (x, weight, bias)
    return _linear.Linear.apply(*args)


def flatten(x, start_dim=1):
    """Merge the dims from ``start_dim`` on: (N, C, H, W) -> (N, C*H*W).

    The default start_dim=1 keeps the batch axis N; the new axis runs over
    channels first, then rows, then columns (C-order), so feature
    c*H*W + h*W + w is x[n, c, h, w].  AlexNet: (N, 256, 6, 6) -> (N, 9216).
    A view: no copy, and backward is a reshape back.
    """
    x = _as_tensor("flatten", "x", x)
    if not _is_int(start_dim) or not 0 <= start_dim < max(x.ndim, 1):
        raise ValueError(f"flatten: start_dim must be an int in [0, {x.ndim}), got {start_dim!r}")
    # the merged length spelled out, not -1: NumPy cannot infer it for an empty batch (N = 0)
    return x.reshape(x.shape[:start_dim] + (int(np.prod(x.shape[start_dim:])),))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably (the row
    maximum is subtracted first).  x: (N, K) logits, N samples and K
    classes -> (N, K) probabilities, each row summing to 1 (any shape works,
    normalised along ``axis``)."""
    x = _as_tensor("softmax", "x", x)
    return loss.Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    """log(softmax(x)) along ``axis``, computed stably.
    x: (N, K) logits -> (N, K) log-probabilities (any shape, along ``axis``)."""
    x = _as_tensor("log_softmax", "x", x)
    return loss.LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, labels):
    """Mean negative log-likelihood of integer labels under softmax(logits).

    logits: (N, K) float, one row of K class scores per sample;
    labels: (N,) integers in [0, K), the true class of each sample.
    Returns a scalar tensor (shape ()): -mean_n log softmax(logits)[n, labels[n]].
    Its gradient w.r.t. logits is (softmax(logits) - onehot(labels)) / N.
    An empty batch (N = 0, e.g. a data-parallel rank left without samples)
    gives 0 and a zero gradient, so that rank adds nothing to the all-reduce.
    Naive twin: tinynet.ops.loss.cross_entropy_naive.
    """
    fn = "cross_entropy"
    logits = _as_tensor(fn, "logits", logits, ndim=2)
    lab = labels.data if isinstance(labels, Tensor) else labels
    xp = get_array_module(logits.data)
    if isinstance(labels, Tensor) or is_gpu_array(lab):  # explicit copy from wherever they are
        src = labels.device if isinstance(labels, Tensor) else device_of_array(lab)
        lab = copy_to_device(lab, src, logits.device)
    with device_guard(logits.device):  # host labels go to the logits' device
        lab = xp.asarray(lab)
    if lab.ndim != 1 or lab.shape[0] != logits.shape[0]:
        raise ValueError(f"{fn}: labels must have shape ({logits.shape[0]},), got {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{fn}: labels must be integers, got dtype {lab.dtype}")
    if logits.shape[1] == 0:
        raise ValueError(f"{fn}: logits must have at least one class, got shape {logits.shape}")
    if lab.size:  # an empty batch is allowed: loss 0, zero gradient (see ops/loss.py)
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(
                f"{fn}: labels must be in [0, {logits.shape[1]}) for {logits.shape[1]} classes, "
                f"got values in [{lo}, {hi}]"
            )
    return loss.CrossEntropy.apply(logits, labels=lab)
