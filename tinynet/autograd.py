"""The autograd engine: ``Tensor``, ``Function`` and the backward pass.

How it works, in three sentences.  Every differentiable op is a small
``Function`` subclass with a ``forward`` on plain arrays and a ``backward``
that turns the gradient of its output into gradients of its inputs.  Calling
an op through ``Function.apply`` records the function as the *creator* of its
output tensor, which builds the graph as the program runs (define-by-run).
``Tensor.backward`` then visits the functions from the loss back to the
leaves, newest generation first, without recursion, summing gradients where a
tensor fed several ops.

Arrays may be NumPy or CuPy: nothing in this file assumes which.
"""

import contextlib
import heapq
import threading

import numpy as np

from .backend import current_stream_of, get_array_module, on_device

# ----------------------------------------------------------------------------
# Grad mode: ``with no_grad():`` runs ops without recording a graph.
# ----------------------------------------------------------------------------

_state = threading.local()
_no_context = contextlib.nullcontext()


def is_grad_enabled():
    """True when ops record the graph (the default)."""
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Context manager: ops inside it build no graph and save nothing for
    backward (evaluation, optimiser updates)."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


@contextlib.contextmanager
def enable_grad():
    """Context manager: turn graph recording back on inside ``no_grad``."""
    previous = is_grad_enabled()
    _state.grad_enabled = True
    try:
        yield
    finally:
        _state.grad_enabled = previous


# ----------------------------------------------------------------------------
# Tracing: a hook for tinynet.trace() and tinynet.summary().
# ----------------------------------------------------------------------------

# The active tracer, or None (the usual case).  When it is set, Function.apply
# calls ``_tracer.forward(fn, inputs, outputs)`` after every op, run_backward
# calls ``_tracer.backward(fn, grad_outputs, grad_inputs)`` after every op's
# backward, and nn.Module.__call__ tells it which module is running.  With no
# tracer the whole cost is one ``if _tracer is not None`` per op.  See
# tinynet/tracing.py for the tracers themselves.
_tracer = None


def set_tracer(tracer):
    """Install ``tracer`` (an object with the methods of
    ``tinynet.tracing.Tracer``), or None to switch tracing off.  Returns the
    previous tracer so that it can be put back.  One tracer for the whole
    process, not per thread: trace one computation at a time."""
    global _tracer
    previous = _tracer
    _tracer = tracer
    return previous


def get_tracer():
    """The active tracer, or None."""
    return _tracer


# ----------------------------------------------------------------------------
# Function: the op contract.
# ----------------------------------------------------------------------------


class Function:
    """Base class of every differentiable op.

    A subclass writes two methods:

    * ``forward(self, *arrays, **params)`` computes the output array(s) from
      input arrays and keeps what backward needs with
      ``self.save_for_backward(...)`` (so memory use stays visible);
    * ``backward(self, *grad_outputs)`` returns one gradient per array input
      (or ``None`` for an input that needs none).  ``self.needs_input_grad``
      says which inputs want one, so work for the others can be skipped.

    Positional arguments of ``apply`` are the differentiable inputs
    (tensors, arrays or Python numbers); keyword arguments are fixed
    parameters (stride, axis, ...) passed to ``forward`` unchanged.
    """

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def forward(self, *arrays, **params):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, *grad_outputs):  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self):
        """Facts about the last ``forward`` beyond the input and output
        shapes, as a dict, for ``tinynet.trace`` and ``tinynet.summary``.
        Most ops have none (an empty dict).  The matrix-multiplying ops give
        their GEMM shapes and multiply-adds: ``{"kind": "conv", "cols":
        (363, 3025), "weight_matrix": (96, 363), "gemm": (G, M, K, P),
        "macs": ..., ...}`` (``ops/conv.py``), ``"linear"``, ``"matmul"``;
        ``"pool"`` and ``"lrn"`` give their windows and constants."""
        return {}

    @classmethod
    def apply(cls, *inputs, **params):
        fn = cls()
        tensors = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
        fn.needs_input_grad = tuple(t.requires_grad for t in tensors)
        fn.saved = ()
        raw = fn.forward(*[t.data for t in tensors], **params)

        multiple = isinstance(raw, tuple)
        outputs_data = raw if multiple else (raw,)
        record = is_grad_enabled() and any(fn.needs_input_grad)
        outputs = tuple(Tensor(d, requires_grad=record) for d in outputs_data)
        if record:
            # on a GPU, remember the device and stream this op ran on: its backward runs there
            fn.place = current_stream_of(outputs_data[0])
            fn.inputs = tensors
            fn.generation = max(t.generation for t in tensors) + 1
            fn.num_outputs = len(outputs)
            fn.output_meta = [(o.shape, o.dtype) for o in outputs]
            for i, out in enumerate(outputs):
                out._creator = fn
                out._out_index = i
        else:
            fn.saved = ()  # nothing will call backward: drop saved arrays now
        if _tracer is not None:  # tinynet.trace() / summary() is watching
            _tracer.forward(fn, tensors, outputs)
        return outputs if multiple else outputs[0]

    def __repr__(self):
        return f"<{type(self).__name__} generation={getattr(self, 'generation', '-')}>"


# ----------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------


def _as_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    xp = get_array_module(data)
    if xp is np:
        arr = np.asarray(data, dtype=dtype)
        if arr.dtype == np.float16 or arr.dtype.kind == "c":
            raise TypeError(f"tensor: dtype {arr.dtype} is not supported; use float32 or float64")
        if dtype is None and arr.dtype.kind == "f" and arr.dtype != np.float32:
            arr = arr.astype(np.float64) if arr.dtype != np.float64 else arr
        return arr
    return xp.asarray(data, dtype=dtype)


class Tensor:
    """An n-dimensional array with an optional gradient.

    ``data`` is the NumPy (or CuPy) array; ``grad`` is filled by
    ``backward()`` for tensors that require grad and were not produced by an op
    (the leaves: parameters and inputs).  ``_creator`` is the ``Function`` that
    produced this tensor, ``None`` for a leaf.
    """

    __array_priority__ = 1000  # ndarray (op) Tensor -> Tensor's reflected op

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"tensor: only floating-point tensors can require grad, got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._creator = None
        self._out_index = 0

    # ---- array-like properties -------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    @property
    def generation(self):
        return self._creator.generation if self._creator is not None else 0

    @property
    def is_leaf(self):
        return self._creator is None

    @property
    def device(self):
        from .backend import device_of

        return device_of(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.numpy(), precision=4, threshold=20, prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad})"

    def numpy(self):
        """The data as a NumPy array (copied from the GPU if needed)."""
        xp = get_array_module(self.data)
        return self.data if xp is np else xp.asnumpy(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"Tensor.item: expected a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def detach(self):
        """A new leaf tensor sharing this data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag=True):
        if flag and self.dtype.kind != "f":
            raise TypeError(f"Tensor.requires_grad_: dtype {self.dtype} cannot require grad")
        self.requires_grad = bool(flag)
        return self

    # ---- backward ---------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Compute gradients of this tensor with respect to every leaf that
        requires grad, and add them into those leaves' ``.grad``.

        ``grad``: the gradient of some scalar loss w.r.t. this tensor, same
        shape; may be omitted only when this tensor has one element.
        The graph is freed as it is walked unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "Tensor.backward: this tensor does not require grad (no input of the ops "
                "that made it requires grad, or it was computed under no_grad())"
            )
        xp = get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"Tensor.backward: grad can be omitted only for a tensor with one element, "
                    f"this one has shape {self.shape}; pass grad= of the same shape"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = _as_array(grad)
            if grad.shape != self.shape:
                raise ValueError(
                    f"Tensor.backward: grad must have shape {self.shape}, got {grad.shape}"
                )
            if grad.dtype != self.dtype:
                grad = grad.astype(self.dtype)
        if self._creator is None:
            self._accumulate_leaf(grad)
            return
        run_backward(self, grad, retain_graph)

    def _accumulate_leaf(self, g):
        # out of place: g may be an array that an op passed straight through
        self.grad = g if self.grad is None else self.grad + g

    # ---- operators (implemented in tinynet.ops.math) ------------------------
    def __add__(self, other):
        return _math.add(self, other)

    def __radd__(self, other):
        return _math.add(other, self)

    def __sub__(self, other):
        return _math.sub(self, other)

    def __rsub__(self, other):
        return _math.sub(other, self)

    def __mul__(self, other):
        return _math.mul(self, other)

    def __rmul__(self, other):
        return _math.mul(other, self)

    def __truediv__(self, other):
        return _math.div(self, other)

    def __rtruediv__(self, other):
        return _math.div(other, self)

    def __matmul__(self, other):
        return _math.matmul(self, other)

    def __rmatmul__(self, other):
        return _math.matmul(other, self)

    def __neg__(self):
        return _math.neg(self)

    def __pow__(self, exponent):
        return _math.pow(self, exponent)

    def __getitem__(self, index):
        return _math.getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        return _math.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _math.mean(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _math.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _math.transpose(self, axes or None)

    @property
    def T(self):
        return _math.transpose(self, None)

    def exp(self):
        return _math.exp(self)

    def log(self):
        return _math.log(self)

    def to(self, device):
        from .backend import to_device

        return to_device(self, device)


def run_backward(root, grad, retain_graph=False):
    """Walk the graph behind ``root`` and deliver gradients to the leaves.

    Functions are taken from a heap keyed by generation, highest first.  A
    function's generation is one more than its newest input's, so every
    consumer of a tensor is handled before that tensor's creator: by the time
    a function runs, the gradients of all its outputs are complete.  No
    recursion, so a chain of any length works.
    """
    # grads[fn] is a list with one slot per output of fn
    grads = {}
    heap = []
    seen = set()

    def push(fn):
        if id(fn) not in seen:
            seen.add(id(fn))
            heapq.heappush(heap, (-fn.generation, id(fn), fn))

    def add_grad(fn, index, g):
        slots = grads.setdefault(fn, [None] * fn.num_outputs)
        slots[index] = g if slots[index] is None else slots[index] + g

    root_fn = root._creator
    add_grad(root_fn, root._out_index, grad)
    push(root_fn)

    while heap:
        _, _, fn = heapq.heappop(heap)
        if fn.inputs is None:
            raise RuntimeError(
                f"Tensor.backward: part of the graph ({type(fn).__name__}) was already freed by "
                "an earlier backward(); use retain_graph=True there"
            )
        slots = grads.pop(fn)
        if any(s is None for s in slots):  # an output nobody used: its grad is zero
            xp = get_array_module(next(s for s in slots if s is not None))
            slots = [
                xp.zeros(shape, dtype) if s is None else s
                for s, (shape, dtype) in zip(slots, fn.output_meta)
            ]
        place = getattr(fn, "place", None)
        with on_device(place[0], stream=place[1]) if place else _no_context:  # GPU: same device, same stream
            input_grads = fn.backward(*slots)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        if _tracer is not None:  # tinynet.trace() is watching
            _tracer.backward(fn, slots, input_grads)
        if len(input_grads) != len(fn.inputs):
            raise RuntimeError(
                f"{type(fn).__name__}.backward returned {len(input_grads)} gradients "
                f"for {len(fn.inputs)} inputs"
            )
        for tensor, g, needed in zip(fn.inputs, input_grads, fn.needs_input_grad):
            if not needed or g is None:
                continue
            if g.shape != tensor.shape:
                raise RuntimeError(
                    f"{type(fn).__name__}.backward: gradient shape {g.shape} does not match "
                    f"input shape {tensor.shape}"
                )
            if tensor._creator is None:
                tensor._accumulate_leaf(g)
            else:
                add_grad(tensor._creator, tensor._out_index, g)
                push(tensor._creator)
        if not retain_graph:  # free what this function held, as soon as it is done
            fn.saved = ()
            fn.inputs = None


def tensor(data, requires_grad=False, dtype=None):
    """Make a leaf ``Tensor`` from an array, list or number.

    float16 and complex are rejected; float32 stays float32 (the fast path);
    other floats become float64.
    """
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


from .ops import math as _math  # noqa: E402  (operators above are defined there)
