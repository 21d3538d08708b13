"""tinynet.functional: the ops as functions on tensors (names as PyTorch).

Each function checks its arguments (wrong ndim, channel mismatch, dtype
mixes...) and raises a ValueError/TypeError that names the function, the
argument, what was expected and what came; then it calls the op's
``Function.apply``, which records the graph for backward.

Shapes, with N = batch, C = channels, H/W = height/width:
    conv2d        x (N, C, H, W), weight (O, C/groups, KH, KW) -> (N, O, OH, OW)
    max_pool2d    (N, C, H, W) -> (N, C, OH, OW)
    local_response_norm (N, C, H, W) -> same
    linear        x (N, in), weight (out, in) -> (N, out)
    cross_entropy logits (N, K), labels (N,) ints -> scalar
"""

import numbers

import numpy as np

from .autograd import Function, Tensor, is_grad_enabled
from .backend import get_array_module
from .ops import activation, conv, linear as _linear, loss, lrn, pool
from .ops.conv import conv_output_size, set_conv_workspace, conv_workspace_peak  # noqa: F401
from .ops.math import concat, split  # noqa: F401
from .random import default_generator

__all__ = [
    "im2col", "col2im", "conv2d", "max_pool2d", "local_response_norm", "relu", "tanh",
    "dropout", "dropout_mask", "linear", "flatten", "softmax", "log_softmax", "cross_entropy", "concat",
    "split", "set_conv_workspace", "conv_workspace_peak", "conv_output_size",
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


def _pair(fn, name, value, minimum):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value), int(value))
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
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

    x: (N, C, H, W) -> cols: (C*KH*KW, N*OH*OW).  Row (c, ky, kx) holds, for
    every image n and output position (oy, ox), the pixel
    x_padded[n, c, oy*SH + ky, ox*SW + kx].  Differentiable (backward = col2im).
    """
    x = _as_tensor("im2col", "x", x, ndim=4)
    k = _pair("im2col", "kernel_size", kernel_size, 1)
    s = _pair("im2col", "stride", stride, 1)
    p = _pair("im2col", "padding", padding, 0)
    _check_window("im2col", x.shape, k, s, p)
    return _Im2Col.apply(x, kernel=k, stride=s, padding=p)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0):
    """Fold columns back into images, adding where windows overlap.

    cols: (C*KH*KW, N*OH*OW) -> (N, C, H, W) = input_shape.  The adjoint of
    im2col: col2im(im2col(x)) multiplies each pixel by the number of windows
    that contain it.
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


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """2-D convolution (cross-correlation, as every framework) by im2col + GEMM.

    x: (N, C, H, W); weight: (O, C/groups, KH, KW); bias: (O,) or None
    returns (N, O, OH, OW) with OH = (H + 2*padding - KH) // stride + 1.
    ``groups`` splits channels and filters into independent blocks
    (AlexNet's conv2, conv4, conv5 use 2: one per tower).
    """
    fn = "conv2d"
    x = _as_tensor(fn, "x", x, ndim=4)
    weight = _as_tensor(fn, "weight", weight, ndim=4)
    if bias is not None:
        bias = _as_tensor(fn, "bias", bias, ndim=1)
    _same_dtype(fn, ("x", x), ("weight", weight), ("bias", bias))
    s = _pair(fn, "stride", stride, 1)
    p = _pair(fn, "padding", padding, 0)
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive int, got {groups!r}")
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
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
    return conv.Conv2d.apply(*args, stride=s, padding=p, groups=int(groups))


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling; ``stride`` defaults to ``kernel_size``.  AlexNet uses
    kernel 3, stride 2: windows overlap by one pixel.

    x: (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*padding - K) // stride + 1.
    Gradient goes to the first maximum of each window (row-major) on ties.
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


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=False, groups=1):
    """Local response normalisation across channels, the paper's formula:

        y[c] = x[c] / (k + alpha * sum_{c' in window(c)} x[c']^2) ** beta

    window(c) = c - size//2 .. c + (size-1)//2, clipped at the channel edges.
    Defaults are the paper's (size 5, alpha 1e-4, beta 0.75, k 2).
    ``alpha_over_size=True`` uses alpha/size instead (the Caffe/PyTorch
    convention; PyTorch's defaults are alpha=1e-4, k=1).
    ``groups=G`` normalises each block of C/G channels on its own (AlexNet's
    towers: the window never reaches into the other tower's channels).
    x: (N, C, H, W) -> same shape.
    """
    fn = "local_response_norm"
    x = _as_tensor(fn, "x", x, ndim=4)
    if not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"{fn}: size must be a positive int, got {size!r}")
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if not isinstance(v, numbers.Real) or v < 0:
            raise ValueError(f"{fn}: {name} must be a non-negative number, got {v!r}")
    if k == 0:
        raise ValueError(f"{fn}: k must be > 0 (with k = 0 a zero input divides by zero)")
    if not isinstance(groups, numbers.Integral) or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"{fn}: groups must be a positive int dividing the channels C={x.shape[1]}, got {groups!r}")
    a = float(alpha) / size if alpha_over_size else float(alpha)
    return lrn.LocalResponseNorm.apply(x, size=int(size), alpha=a, beta=float(beta), k=float(k),
                                       groups=int(groups))


def relu(x):
    """max(x, 0), elementwise; any shape."""
    return activation.ReLU.apply(_as_tensor("relu", "x", x))


def tanh(x):
    """tanh(x), elementwise; any shape."""
    return activation.Tanh.apply(_as_tensor("tanh", "x", x))


def dropout_mask(shape, p, dtype, rng=None):
    """The scaled keep-mask of inverted dropout: 1/(1-p) with probability
    1-p, else 0; a NumPy array drawn from ``rng`` (default: tinynet's global
    generator).  Drawn on the host even for GPU tensors (it is only as big as
    an fc layer's output), so that ``tn.manual_seed`` fixes it everywhere and
    a resumed run draws the same masks."""
    rng = default_generator() if rng is None else rng
    mask = (rng.random(shape, dtype=np.dtype(dtype)) >= p).astype(dtype)
    mask *= 1.0 / (1.0 - p)
    return mask


def dropout(x, p=0.5, training=True, rng=None, mask=None):
    """Inverted dropout: in training, zero each element with probability p
    and scale the survivors by 1/(1-p); identity when not training.

    ``rng``: a numpy.random.Generator for the mask (default: tinynet's
    global generator, seeded by ``tn.manual_seed``).  ``mask``: a ready mask
    from ``dropout_mask`` instead (the two-tower model draws one mask for
    both towers, as the single-device model does).  Any shape.
    """
    fn = "dropout"
    x = _as_tensor(fn, "x", x)
    if not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"{fn}: p must be in [0, 1), got {p!r}")
    if not training or p == 0:
        return x
    if mask is None:
        mask = dropout_mask(x.shape, p, x.dtype, rng)
    elif tuple(mask.shape) != x.shape:
        raise ValueError(f"{fn}: mask must have the shape of x {x.shape}, got {tuple(mask.shape)}")
    xp = get_array_module(x.data)
    if xp is not np:
        mask = xp.asarray(mask)
    if not is_grad_enabled():
        return Tensor(x.data * mask)
    return activation.Dropout.apply(x, mask=mask)


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias.  x: (N, in); weight: (out, in); bias: (out,)."""
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
    """Merge the dims from ``start_dim`` on: (N, C, H, W) -> (N, C*H*W)."""
    x = _as_tensor("flatten", "x", x)
    if not 0 <= start_dim < max(x.ndim, 1):
        raise ValueError(f"flatten: start_dim must be in [0, {x.ndim}), got {start_dim}")
    return x.reshape(x.shape[:start_dim] + (-1,))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    x = _as_tensor("softmax", "x", x)
    return loss.Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    """log(softmax(x)) along ``axis``, computed stably."""
    x = _as_tensor("log_softmax", "x", x)
    return loss.LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, labels):
    """Mean negative log-likelihood of integer labels under softmax(logits).

    logits: (N, K) float; labels: (N,) integers in [0, K).  Returns a scalar.
    """
    fn = "cross_entropy"
    logits = _as_tensor(fn, "logits", logits, ndim=2)
    lab = labels.data if isinstance(labels, Tensor) else labels
    xp = get_array_module(logits.data)
    lab = xp.asarray(lab)
    if lab.ndim != 1 or lab.shape[0] != logits.shape[0]:
        raise ValueError(f"{fn}: labels must have shape ({logits.shape[0]},), got {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{fn}: labels must be integers, got dtype {lab.dtype}")
    if lab.size:
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(
                f"{fn}: labels must be in [0, {logits.shape[1]}) for {logits.shape[1]} classes, "
                f"got values in [{lo}, {hi}]"
            )
    else:
        raise ValueError(f"{fn}: empty batch (0 samples)")
    return loss.CrossEntropy.apply(logits, labels=lab)
