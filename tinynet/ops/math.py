"""Tensor arithmetic: elementwise ops with broadcasting, reductions, shape ops.

Each op is a ``Function`` with a forward on arrays and a backward that
returns one gradient per input.  Broadcasting in forward means summing in
backward: ``unbroadcast`` folds a gradient back to its input's shape.
"""

import builtins
import numbers

import numpy as np

from ..autograd import Function, Tensor
from ..backend import device_guard, get_array_module


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, so
    that it has ``shape`` again.  (3, 4) + (4,) -> the (4,) input receives
    grad.sum(axis=0)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def result_dtype(opname, a, b, true_divide=False):
    """The dtype of a binary op's result: tinynet's one dtype rule.

    * A number (Python or NumPy scalar) is *weak*: it takes the tensor's
      dtype if that is floating (float32 * 0.5 stays float32, and so does
      float32 ** np.float64(2)); with an integer tensor, a float number
      gives float64 (int * 0.5 -> 0.5, never a silent 0) and an integer
      number keeps the tensor's dtype.
    * Two tensors: the same dtype stays; an integer (or bool) one next to a
      floating one takes the floating dtype; two integer ones promote as
      NumPy does.  float32 with float64 is an error: that is usually a bug
      that silently doubles memory and time, so convert one explicitly.
    * True division of integers gives float64.
    """
    da = None if _is_number(a) else _dtype_of(a)
    db = None if _is_number(b) else _dtype_of(b)
    if da is None and db is None:
        dt = np.result_type(type(a), type(b))
    elif da is None or db is None:
        dt, number = (db, a) if da is None else (da, b)
        if dt.kind not in "f":
            if isinstance(number, (float, np.floating)):
                dt = np.dtype(np.float64)
            elif dt.kind == "b":
                dt = np.dtype(np.int64)
    elif da == db:
        dt = da
    elif da.kind == "f" and db.kind == "f":
        raise TypeError(
            f"{opname}: operands have different dtypes {da} and {db}; "
            "convert one explicitly (e.g. x.data.astype(np.float32))"
        )
    elif da.kind == "f" or db.kind == "f":
        dt = da if da.kind == "f" else db
    else:
        dt = np.result_type(da, db)
    dt = np.dtype(dt)
    if true_divide and dt.kind != "f":
        dt = np.dtype(np.float64)
    return dt


def _dtype_of(x):
    dtype = getattr(x, "dtype", None)  # a Tensor or an array
    return np.dtype(dtype) if dtype is not None else np.asarray(x).dtype


def _operands(opname, a, b, true_divide=False):
    """The two operands of a binary op as tensors of the result's dtype
    (``result_dtype``), on one device: a number becomes a 0-d tensor on the
    other operand's device."""
    dt = result_dtype(opname, a, b, true_divide)
    if _is_number(a):
        a = _scalar_like(a, b, dt)
    if _is_number(b):
        b = _scalar_like(b, a, dt)
    return _cast(a, dt), _cast(b, dt)


def _cast(x, dt):
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.dtype == dt:
        return x
    # only operands that need no gradient are cast (integers, or a float with
    # an integer one); a cast of a tensor that requires grad would cut the graph
    if x.requires_grad:
        raise TypeError(f"cannot convert a tensor that requires grad from {x.dtype} to {dt}")
    return Tensor(x.data.astype(dt), device=x.device)


def _is_number(x):
    """A Python or NumPy scalar number (a bool is not one)."""
    return isinstance(x, numbers.Number) and not isinstance(x, (bool, np.bool_))


def _scalar_like(value, other, dtype):
    """A 0-d tensor holding ``value`` with ``dtype``, on ``other``'s device
    (created there, under its device guard)."""
    dev = other.device if isinstance(other, Tensor) else None
    if dev is not None and dev.kind == "cuda":
        with device_guard(dev):
            return Tensor(dev.xp.asarray(value, dtype=dtype), device=dev)
    return Tensor(np.asarray(value, dtype=dtype), device=dev)


# ---- elementwise binary ------------------------------------------------------


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g * b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g / b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    """a ** p for a constant exponent p (a Python number: the result keeps
    a's dtype)."""

    def forward(self, a, exponent):
        self.save_for_backward(a)
        self.exponent = exponent
        return (a ** exponent).astype(a.dtype, copy=False)

    def backward(self, g):
        (a,) = self.saved
        p = self.exponent
        if p == 0:  # d(a**0)/da = 0 everywhere, also at a = 0 (never 0 * inf)
            return get_array_module(g).zeros_like(a)
        return (g * p * a ** (p - 1)).astype(a.dtype, copy=False)


class Exp(Function):
    def forward(self, a):
        y = get_array_module(a).exp(a)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return g * y


class Log(Function):
    def forward(self, a):
        self.save_for_backward(a)
        return get_array_module(a).log(a)

    def backward(self, g):
        (a,) = self.saved
        return g / a


class MatMul(Function):
    """a @ b for 2-D operands: (M, K) @ (K, N) -> (M, N)."""

    def forward(self, a, b):
        self.save_for_backward(a, b)
        self.gemm = (1, a.shape[0], a.shape[1], b.shape[1])  # for describe()
        return a @ b

    def describe(self):
        """(M x K) @ (K x N): M*K*N multiply-adds (for tinynet.trace/summary)."""
        _, m, k, n = self.gemm
        return {"kind": "matmul", "gemm": self.gemm, "macs": m * k * n,
                "needs_input_grad": self.needs_input_grad}

    def backward(self, g):
        a, b = self.saved
        ga = g @ b.T if self.needs_input_grad[0] else None
        gb = a.T @ g if self.needs_input_grad[1] else None
        return ga, gb


# ---- reductions -----------------------------------------------------------------


def _normalize_axes(opname, axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    out = []
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, numbers.Integral):  # True would mean axis 1
            raise TypeError(f"{opname}: axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= ax < ndim:
            raise ValueError(f"{opname}: axis {ax} is out of range for a tensor with {ndim} dims")
        out.append(ax % ndim)
    return tuple(sorted(set(out)))


class Sum(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = _normalize_axes("sum", axis, a.ndim)
        self.keepdims = keepdims
        return a.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        xp = get_array_module(g)
        if not self.keepdims:
            g = xp.expand_dims(g, self.axes) if self.axes else g
        return xp.broadcast_to(g, self.shape)


class Mean(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = _normalize_axes("mean", axis, a.ndim)
        self.keepdims = keepdims
        self.count = int(np.prod([a.shape[i] for i in self.axes])) if self.axes else 1
        return a.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        xp = get_array_module(g)
        if not self.keepdims:
            g = xp.expand_dims(g, self.axes) if self.axes else g
        return xp.broadcast_to(g / self.count, self.shape)


# ---- shape ops -------------------------------------------------------------------


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(
                f"reshape: cannot reshape a tensor of shape {a.shape} ({a.size} elements) "
                f"into {tuple(shape)}"
            ) from None

    def backward(self, g):
        return g.reshape(self.shape)


class Transpose(Function):
    def forward(self, a, axes=None):
        if axes is not None and sorted(ax % a.ndim for ax in axes) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of {a.ndim} dims")
        self.axes = axes
        return a.transpose(axes)

    def backward(self, g):
        if self.axes is None:
            return g.transpose()
        inverse = np.argsort([ax % g.ndim for ax in self.axes])
        return g.transpose(tuple(int(i) for i in inverse))


class GetItem(Function):
    """a[index]: basic slicing, integer and boolean array indexing."""

    def forward(self, a, index=None):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, g):
        xp = get_array_module(g)
        grad = xp.zeros(self.shape, self.dtype)
        if _is_basic_index(self.index):
            grad[self.index] = g  # a view: no index repeats
        else:
            xp.add.at(grad, self.index, g)  # integer arrays may repeat an element
        return grad


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (slice, numbers.Integral, type(None), type(Ellipsis))) for i in items)


class Concat(Function):
    """Join tensors along one axis (the towers use it to meet)."""

    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.sizes = [a.shape[axis] for a in arrays]
        return get_array_module(*arrays).concatenate(arrays, axis=axis)

    def backward(self, g):
        bounds = np.cumsum(self.sizes)[:-1]
        return tuple(get_array_module(g).split(g, bounds, axis=self.axis))


class Split(Function):
    """Cut a tensor into pieces along one axis (the towers use it to part)."""

    def forward(self, a, sizes=None, axis=0):
        self.axis = axis
        bounds = np.cumsum(sizes)[:-1]
        return tuple(p for p in get_array_module(a).split(a, bounds, axis=axis))

    def backward(self, *grads):
        return get_array_module(grads[0]).concatenate(grads, axis=self.axis)


# ---- user-facing functions --------------------------------------------------------


def add(a, b):
    return Add.apply(*_operands("add", a, b))


def sub(a, b):
    return Sub.apply(*_operands("sub", a, b))


def mul(a, b):
    return Mul.apply(*_operands("mul", a, b))


def div(a, b):
    return Div.apply(*_operands("div", a, b, true_divide=True))


def neg(a):
    return Neg.apply(a)


def pow(a, exponent):
    if not isinstance(exponent, numbers.Number) or isinstance(exponent, (bool, complex)):
        raise TypeError(f"pow: exponent must be a real number, got {type(exponent).__name__}")
    a = a if isinstance(a, Tensor) else Tensor(a)
    # a NumPy scalar exponent (np.float64(2)) must not promote a float32 tensor; any other
    # number that is no integer (Fraction(1, 2), Decimal("0.5")) is taken as the float it is
    exponent = exponent.item() if isinstance(exponent, np.generic) else exponent
    if not isinstance(exponent, numbers.Integral):
        exponent = float(exponent)
    if a.dtype.kind != "f" and isinstance(exponent, float):
        # the rule of the other ops: an integer tensor with a float number gives float64
        # (int ** -1.0 -> 0.5 and int ** 0.5 a square root, never a silent 0; int ** 2.0 is
        # float64 too); integer tensors never require grad
        with device_guard(a.device):
            a = Tensor(a.data.astype(np.float64), device=a.device)
    elif a.dtype.kind != "f" and exponent < 0:
        raise ValueError(f"pow: an integer tensor to a negative integer power ({exponent}) has no "
                         f"integer result; a float exponent ({float(exponent)}) gives float64")
    return Pow.apply(a, exponent=exponent)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def matmul(a, b):
    a, b = _operands("matmul", a, b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul: expected two 2-D tensors, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
    return MatMul.apply(a, b)


def sum(a, axis=None, keepdims=False):
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def reshape(a, shape):
    return Reshape.apply(a, shape=tuple(shape))


def transpose(a, axes=None):
    return Transpose.apply(a, axes=tuple(axes) if axes is not None else None)


def getitem(a, index):
    if isinstance(index, Tensor):
        index = index.data
    if isinstance(index, list):
        index = np.asarray(index)
    return GetItem.apply(a, index=index)


def concat(tensors, axis=0):
    """Join tensors of equal shape except along ``axis``.

    tensors: a list of tensors, e.g. two (N, 128, 13, 13) halves; the result
    has the common shape with axis ``axis`` the sum of theirs, here
    (N, 256, 13, 13) for axis=1 (channels: AlexNet's towers meeting at conv3).
    Backward cuts the gradient back into the pieces.
    """
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concat: expected at least one tensor, got none")
    first = tensors[0]
    ax = _normalize_axes("concat", axis, first.ndim)[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.dtype != first.dtype:
            raise TypeError(f"concat: tensor {i} has dtype {t.dtype}, tensor 0 has {first.dtype}")
        if t.ndim != first.ndim or any(
            t.shape[d] != first.shape[d] for d in range(first.ndim) if d != ax
        ):
            raise ValueError(
                f"concat: tensor {i} has shape {t.shape}, which does not match tensor 0's "
                f"{first.shape} outside axis {ax}"
            )
    return Concat.apply(*tensors, axis=ax)


def split(a, sizes, axis=0):
    """Cut ``a`` along ``axis``: ``sizes`` is the number of equal pieces or
    a list of piece lengths that add up to ``a.shape[axis]``.  Returns a
    tuple of tensors with a's shape except along ``axis``, e.g.
    split(x (N, 96, 55, 55), 2, axis=1) -> two (N, 48, 55, 55), one per tower.
    """
    ax = _normalize_axes("split", axis, a.ndim)[0]
    n = a.shape[ax]
    if isinstance(sizes, numbers.Integral):
        if sizes <= 0 or n % sizes:
            raise ValueError(f"split: cannot cut axis {ax} of length {n} into {sizes} equal pieces")
        sizes = [n // sizes] * sizes
    sizes = [int(s) for s in sizes]
    if builtins.sum(sizes) != n or any(s <= 0 for s in sizes):
        raise ValueError(f"split: sizes {sizes} must be positive and add up to {n} (axis {ax})")
    return Split.apply(a, sizes=sizes, axis=ax)

