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

Devices.  Every tensor knows its device (``tensor.device``: ``cpu``, ``cpu:1``,
``cuda:0``...).  The device rule lives here, in two places: ``Function.apply``
runs each op under the device of its inputs (and refuses inputs from two
devices, naming both), and ``run_backward`` runs each op's backward, and
every gradient sum, under that op's device.  Outputs, gradients and
temporaries are therefore allocated where the inputs are; only an explicit
copy (``Tensor.to``, or an op that declares ``crosses_devices``) moves data.
"""

import contextlib
import heapq
import threading
import weakref

import numpy as np

from .backend import (CPU, Device, copy_to_device, current_stream, device_guard,
                      device_of_array, get_array_module, is_gpu_array, on_device, require_cupy)

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

    An op runs on the device of its tensor inputs; they must all be on one
    device.  The one kind of op that moves data sets ``crosses_devices =
    True`` and takes a ``device=`` parameter: its output lives there.
    """

    crosses_devices = False

    # The inputs whose optimiser update this op can apply in its backward, instead of returning
    # their gradient (Linear: its weight), and {input index: update} for those run_backward
    # handed one (see register_update_in_backward)
    updatable_inputs = ()
    updates = {}

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
        dev = _op_device(cls.__name__, inputs)
        tensors = [x if isinstance(x, Tensor) else _wrap_raw(cls.__name__, x, dev) for x in inputs]
        fn.needs_input_grad = tuple(t.requires_grad for t in tensors)
        fn.saved = ()
        fn.device = dev  # where forward (and later backward) runs
        with device_guard(dev):  # the op guard: everything forward allocates lands on dev
            raw = fn.forward(*[t.data for t in tensors], **params)
            # on a GPU, remember the stream this op ran on: its backward runs there too
            stream = current_stream(dev) if dev.kind == "cuda" else None

        multiple = isinstance(raw, tuple)
        outputs_data = raw if multiple else (raw,)
        out_dev = Device(params["device"]) if cls.crosses_devices else dev
        record = is_grad_enabled() and any(fn.needs_input_grad)
        outputs = tuple(Tensor(d, requires_grad=record, device=out_dev) for d in outputs_data)
        for out in outputs:  # a view of an input (reshape, transpose, slicing) shares its version count
            if getattr(out.data, "base", None) is None:  # owns its memory: a new array, no view
                continue
            for t in tensors:
                if _may_share_memory(out.data, t.data):
                    out._versions = t._versions
                    break
        if record:
            fn.stream = stream
            fn.inputs = tensors
            fn.input_versions = [t._version for t in tensors]
            fn.generation = max(t.generation for t in tensors) + 1
            fn.num_outputs = len(outputs)
            fn.output_meta = [(o.shape, o.dtype, o.device) for o in outputs]
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


def _op_device(opname, inputs):
    """The device an op runs on: the one device of its tensor inputs (raw
    CuPy arrays count with their GPU; numbers and NumPy arrays follow the
    tensors).  Two devices are refused, as PyTorch refuses them."""
    dev = None
    for x in inputs:
        if isinstance(x, Tensor):
            d = x._device
        elif is_gpu_array(x):
            d = device_of_array(x)
        else:
            continue
        if dev is None:
            dev = d
        elif d != dev:
            raise RuntimeError(
                f"{opname}: expected all tensors to be on the same device, but found at least two "
                f"devices, {dev} and {d}; move one with .to(device) first"
            )
    return CPU if dev is None else dev


def _wrap_raw(opname, x, dev):
    """A raw op input (number or array) as a tensor on the op's device."""
    if dev.kind == "cuda" and not is_gpu_array(x):
        if np.ndim(x) != 0:
            raise RuntimeError(
                f"{opname}: got a host (NumPy) array of shape {np.shape(x)} for an op on {dev}; "
                f"move it first, e.g. tn.tensor(x).to('{dev}')"
            )
        with device_guard(dev):
            return Tensor(require_cupy(dev).asarray(x), device=dev)
    return Tensor(x, device=dev)


def _may_share_memory(a, b):
    """Whether arrays a and b may lie over the same memory (their address ranges overlap:
    a cheap test, exact for views of one another)."""
    xp = get_array_module(a)
    if xp is not get_array_module(b):
        return False
    return bool(xp.may_share_memory(a, b))


def _guard(dev):
    """device_guard on a GPU; no work at all on the CPU (the hot path)."""
    return _no_context if dev.kind == "cpu" else device_guard(dev)


# ----------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------


# The version boxes of parameters, by the array that owns their memory: a tensor made later
# from a parameter's raw array (tn.tensor(p.data), p.data.T, an op given p.data) shares the
# parameter's box, so SGD.step or load_state_dict on p refuses its graph too.
# id(owner) -> (weak reference to the owner, the box)
_parameter_versions = {}


def _memory_owner(a):
    """The array at the end of a's chain of views (a itself if it owns its memory)."""
    while hasattr(getattr(a, "base", None), "shape"):
        a = a.base
    return a


def _registered_box(owner):
    """The version box registered for the array ``owner``, or None."""
    entry = _parameter_versions.get(id(owner))
    return entry[1] if entry is not None and entry[0]() is owner else None


def _share_versions_with_memory(t):
    """Make parameter ``t``'s version box the one of its memory: the box of an earlier
    parameter over the same memory, or its own, recorded for the tensors made from it later."""
    owner = _memory_owner(t.data)
    box = _registered_box(owner)
    if box is not None:
        t._versions = box
        return
    try:
        ref = weakref.ref(owner, lambda _, key=id(owner): _parameter_versions.pop(key, None))
    except TypeError:  # an array type without weak references: its tensors keep their own boxes
        return
    _parameter_versions[id(owner)] = (ref, t._versions)


def _memory_versions(a):
    """A new tensor's version box: a parameter's, if ``a`` is its memory or a view of it,
    else a fresh one."""
    box = _registered_box(_memory_owner(a)) if _parameter_versions else None
    return [0] if box is None else box


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

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if device is None and isinstance(data, Tensor):
            device = data._device
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"tensor: only floating-point tensors can require grad, got dtype {self.data.dtype}"
            )
        self._device = _device_for(self.data, device)
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._creator = None
        self._out_index = 0
        # how many in-place changes the data has had (SGD.step, load_state_dict), in a box that
        # every tensor over the same memory shares: Tensor(t) of the same array, t.detach(), and
        # the outputs of ops that are views of an input (reshape, transpose, slicing: Function.apply)
        shared = isinstance(data, Tensor) and self.data is data.data
        self._versions = data._versions if shared else _memory_versions(self.data)

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
        """Where the data lives: ``cpu`` (= ``cpu:0``), ``cpu:1``, ``cuda:0``..."""
        return self._device

    @property
    def _version(self):
        return self._versions[0]

    def _bump_version(self):
        """Record an in-place change of ``data``: a graph that saved the old
        values, through this tensor or any other over the same memory,
        refuses to run backward (see run_backward)."""
        self._versions[0] += 1

    def __len__(self):
        return len(self.data)

    def __bool__(self):
        if self.size != 1:
            raise ValueError(
                f"Tensor: the truth value of a tensor with {self.size} elements is ambiguous "
                "(use .any() or .all() on .numpy())"
            )
        return bool(self.item())

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        if self._device != CPU:
            grad = f", device='{self._device}'" + grad
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
        """A new leaf tensor sharing this data (and device, and the count of
        in-place changes), cut from the graph."""
        return Tensor(self, device=self._device)

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
        with _guard(self._device):
            if grad is None:
                if self.size != 1:
                    raise RuntimeError(
                        f"Tensor.backward: grad can be omitted only for a tensor with one element, "
                        f"this one has shape {self.shape}; pass grad= of the same shape"
                    )
                grad = xp.ones_like(self.data)
            else:
                grad = grad.data if isinstance(grad, Tensor) else grad
                if is_gpu_array(grad) != is_gpu_array(self.data):
                    grad = copy_to_device(grad, device_of_array(grad), self._device)
                grad = _as_array(grad).copy()  # the caller's array is never handed out as a .grad
                if grad.shape != self.shape:
                    raise ValueError(
                        f"Tensor.backward: grad must have shape {self.shape}, got {grad.shape}"
                    )
                if grad.dtype != self.dtype:
                    grad = grad.astype(self.dtype)
            if self._creator is None:
                self._accumulate_leaf(grad, set())
                return
        run_backward(self, grad, retain_graph)

    def _accumulate_leaf(self, g, kept):
        """Add ``g`` into ``self.grad``.

        The first gradient is kept as it is when it owns its memory and no
        other leaf kept the same array in this pass (``kept``: ids of the
        arrays leaves kept uncopied in this pass); otherwise it is copied, as
        PyTorch's accumulate-grad does.  A kept array may still be on its way
        to other ops: ``a + b`` passes one array back to both a and b, and
        when b is not a leaf, b's creator reads that array later in the same
        pass.  So a kept ``.grad`` is never added to in place while the pass
        runs: the next gradient makes a new array, and the shared one stays
        as it was.  An array of the leaf's own (copied, or made by such a
        sum) takes later gradients in place.  After the pass every ``.grad``
        is a writeable array of its own: clipping or scaling it in place
        touches nothing else."""
        if isinstance(g, np.generic):
            g = np.asarray(g)
        if self.grad is None:
            owned = (g.flags.owndata and getattr(g.flags, "writeable", True)
                     and g.flags.c_contiguous and id(g) not in kept)
            self.grad = g if owned else g.copy()
            if owned:
                kept.add(id(g))
        elif id(self.grad) in kept:  # the kept array may be another op's gradient still
            total = self.grad.copy()
            total += g
            self.grad = total
        else:
            self.grad += g

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
        """This tensor on ``device`` ('cpu', 'cpu:1', 'cuda:0'): itself if it is
        there already, else an explicit copy (a new leaf: the copy is not part
        of the graph; the two-tower model's crossings are ops that are)."""
        dev = Device(device)
        if dev == self._device:
            return self
        if dev.kind == "cuda":
            require_cupy(dev)  # a clear error without CuPy or without that GPU
        return Tensor(copy_to_device(self.data, self._device, dev),
                      requires_grad=self.requires_grad, device=dev)


def _device_for(data, device):
    """The device of a new tensor holding ``data``: a CuPy array's own GPU (a
    ``device`` argument must agree); for host data ``device`` if given (a CPU
    device), else cpu:0."""
    if is_gpu_array(data):
        actual = device_of_array(data)
        if device is not None and Device(device) != actual:
            raise ValueError(f"tensor: the data is on {actual}, but device={device} was given")
        return actual
    if device is None:
        return CPU
    device = Device(device)
    if device.kind != "cpu":
        raise ValueError(f"tensor: host (NumPy) data cannot be tagged {device}; use .to('{device}')")
    return device


def _checked_grad(fn, i, tensor, g):
    """The gradient op ``fn`` returned for its input ``i``, checked against
    that input: same shape, same dtype, same device.  A mismatch is a bug in
    the op's backward, reported here rather than as a wrong number later."""
    if isinstance(g, np.generic):  # NumPy reductions of 0-d arrays give scalars
        g = np.asarray(g)
    name = type(fn).__name__
    if g.shape != tensor.shape:
        raise RuntimeError(
            f"{name}.backward: gradient shape {g.shape} does not match input {i}'s shape {tensor.shape}"
        )
    if g.dtype != tensor.dtype:
        raise RuntimeError(
            f"{name}.backward: gradient dtype {g.dtype} does not match input {i}'s dtype {tensor.dtype}"
        )
    on = device_of_array(g, default=tensor._device)
    if on != tensor._device or (tensor._device.kind == "cuda") != is_gpu_array(g):
        raise RuntimeError(
            f"{name}.backward: gradient for input {i} is on {on if is_gpu_array(g) else 'the host'}, "
            f"but that input is on {tensor._device}"
        )
    return g


# Leaves whose optimiser applies its update during backward (optim.SGD(update_in_backward=True)):
# id(tensor) -> (weak reference to the tensor, its update).  By identity, not an attribute of the
# tensor: a copy of a model (copy.deepcopy) has new parameters, which nothing updates so.
_updates_in_backward = {}


def register_update_in_backward(t, update):
    """Let the op that takes leaf ``t`` apply ``update`` in its backward instead of returning
    t's gradient (None: no longer).  ``update`` has ``active`` (False once its optimiser is
    gone: then nothing is offered), ``pending`` (True from the time it is applied until the
    optimiser's next step()) and ``declined(reason)``, called when a backward delivers t's
    gradient instead.

    run_backward offers it to an op only where that cannot change a number: t is used once in
    the graph (no other input of any op in it lies over t's memory: the version count they
    share says so), its .grad is None (nothing to add to), and the graph is freed as it goes
    (retain_graph=False: no second backward through the same ops).  Otherwise t's gradient is
    delivered as usual and the optimiser's step() applies it.  A backward that reaches t while
    an update applied by an earlier one is pending (no step() between) is refused before any
    gradient is delivered: the two gradients can no longer be summed."""
    key = id(t)
    if update is None:
        _updates_in_backward.pop(key, None)
        return
    ref = weakref.ref(t, lambda _, key=key: _updates_in_backward.pop(key, None))
    _updates_in_backward[key] = (ref, update)


def update_in_backward_pending(t):
    """Whether a backward has applied t's optimiser update and its step() has not run since."""
    update = _update_of(t)
    return update is not None and update.pending


def _update_of(t):
    entry = _updates_in_backward.get(id(t))
    update = entry[1] if entry is not None and entry[0]() is t else None
    return update if update is not None and update.active else None


def _offer_updates(users, boxes, retain_graph):
    """Hand the registered leaves' updates to the one op that takes each (see
    register_update_in_backward); ``users``: leaf -> [(fn, index)], ``boxes``: id of a version
    box -> how many op inputs in the graph hold it."""
    for t, _ in users.values():  # refused before any op is handed an update
        if _update_of(t).pending:
            raise RuntimeError(
                f"Tensor.backward: a parameter of shape {t.shape} was already updated by an earlier "
                "backward (its optimiser updates it in backward) and its optimiser's step() has not "
                "run since; call step() after each backward, or build the optimiser with "
                "update_in_backward=False to add up the gradients of several backwards"
            )
    for t, places in users.values():
        if not any(i in fn.updatable_inputs for fn, i in places):
            continue  # no op here could apply it: backward delivers the gradient, as ever
        update = _update_of(t)
        if _registered_box(_memory_owner(t.data)) is not t._versions:
            update.declined("it is not an nn.Parameter, whose memory every tensor made from it shares a "
                            "version count with (so another tensor over it could go unseen)")
        elif retain_graph:
            update.declined("backward(retain_graph=True)")
        elif t.grad is not None:
            update.declined("its .grad already holds a gradient to add to")
        elif len(places) > 1 or boxes[id(t._versions)] > 1:
            update.declined("it is an input of more than one op in the graph, or shares its memory with one")
        else:
            fn, i = places[0]
            fn.updates = {**fn.updates, i: update}


def _check_graph(root_fn):
    """Before any gradient is delivered: every function the walk can reach from ``root_fn``
    still holds its inputs (no earlier backward freed them) and finds them as forward left
    them (their version counts).  Checked during the walk instead, a refusal would come after
    some leaves had already had gradients added.  It follows every input that needs a gradient;
    the walk skips those a backward returns None for (no built-in op does), so for such an op
    this may refuse a part of the graph the walk would not have touched."""
    stack, seen = [root_fn], {id(root_fn)}
    users, boxes = {}, {}  # for _offer_updates: the registered leaves' users; uses of each version box
    while stack:
        fn = stack.pop()
        fn.__dict__.pop("updates", None)  # an offer from an earlier backward over this graph: withdrawn
        if fn.inputs is None:
            raise RuntimeError(
                f"Tensor.backward: part of the graph ({type(fn).__name__}) was already freed by "
                "an earlier backward(); use retain_graph=True there"
            )
        for i, (t, version) in enumerate(zip(fn.inputs, fn.input_versions)):
            if t._version != version:
                raise RuntimeError(
                    f"{type(fn).__name__}.backward: input {i} (shape {t.shape}) was modified in place "
                    f"after forward (version {version} -> {t._version}, e.g. by SGD.step or "
                    "load_state_dict, itself or a tensor over the same memory: a view, detach()); "
                    "its gradient would be computed from the new values. "
                    "Run forward again after changing weights"
                )
            creator = t._creator
            if fn.needs_input_grad[i] and creator is not None and id(creator) not in seen:
                seen.add(id(creator))
                stack.append(creator)
            if _updates_in_backward:
                boxes[id(t._versions)] = boxes.get(id(t._versions), 0) + 1
                if fn.needs_input_grad[i] and creator is None and _update_of(t) is not None:
                    users.setdefault(id(t), (t, []))[1].append((fn, i))
    return users, boxes


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
    kept = set()  # ids of the arrays leaves kept as their .grad, uncopied, in this pass

    def push(fn):
        if id(fn) not in seen:
            seen.add(id(fn))
            heapq.heappush(heap, (-fn.generation, id(fn), fn))

    def add_grad(fn, index, g):
        slots = grads.setdefault(fn, [None] * fn.num_outputs)
        slots[index] = g if slots[index] is None else slots[index] + g

    root_fn = root._creator
    users, boxes = _check_graph(root_fn)
    if users:
        _offer_updates(users, boxes, retain_graph)
    add_grad(root_fn, root._out_index, grad)
    push(root_fn)

    while heap:
        _, _, fn = heapq.heappop(heap)
        slots = grads.pop(fn)
        # the op guard again: backward runs on the op's device (on a GPU, on its forward's stream)
        with on_device(fn.device, stream=fn.stream) if fn.stream is not None else _guard(fn.device):
            if any(s is None for s in slots):  # an output nobody used: its grad is zero
                xp = get_array_module(next(s for s in slots if s is not None))
                slots = [
                    xp.zeros(shape, dtype) if s is None else s
                    for s, (shape, dtype, _) in zip(slots, fn.output_meta)
                ]
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
        for i, (tensor, g, needed) in enumerate(zip(fn.inputs, input_grads, fn.needs_input_grad)):
            if not needed or g is None:
                continue
            g = _checked_grad(fn, i, tensor, g)
            with _guard(tensor._device):  # sums land on the tensor's own device
                if tensor._creator is None:
                    tensor._accumulate_leaf(g, kept)
                else:
                    add_grad(tensor._creator, tensor._out_index, g)
                    push(tensor._creator)
        if not retain_graph:  # free what this function held, as soon as it is done
            fn.saved = ()
            fn.inputs = None


def tensor(data, requires_grad=False, dtype=None, device=None):
    """Make a leaf ``Tensor`` from an array, list or number, on ``device``
    (default: where the data is).  Host data given no device, or cpu:0, is
    held as it is (a NumPy array is not copied, as np.asarray would not);
    for any other device it is copied there, a virtual CPU device included:
    cpu:1 has memory of its own, as a second GPU would.

    float16 and complex are rejected; float32 stays float32 (the fast path);
    other floats become float64.
    """
    host_data = not isinstance(data, Tensor) and not is_gpu_array(data)
    if device is not None and host_data and Device(device).kind == "cpu":
        if Device(device) != CPU:
            data = np.array(data, copy=True)
        return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)
    t = Tensor(data, requires_grad=requires_grad, dtype=dtype)
    return t if device is None else t.to(device)


from .ops import math as _math  # noqa: E402  (operators above are defined there)
