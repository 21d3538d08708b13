"""tinynet.nn: modules that hold parameters and call tinynet.functional.

A ``Module`` registers every ``Parameter`` and sub-``Module`` assigned to it
as an attribute, in order; ``named_parameters()`` walks them and gives the
dotted names (``conv1.weight``) that ``state_dict()`` uses.  Layer names,
arguments and weight layouts follow PyTorch, so weights move between the two.
"""

import math
from collections import OrderedDict

import numpy as np

from . import autograd as _autograd
from . import functional as F
from .autograd import Tensor, _share_versions_with_memory
from .backend import Device, copy_to_device, device_guard, device_of_array, is_gpu_array
from .random import default_generator, fill


class Parameter(Tensor):
    """A tensor that is a learnable weight of a Module (requires grad)."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)
        # tensors made later from this memory (tn.tensor(p.data)) share the version count
        _share_versions_with_memory(self)

    def __setstate__(self, state):
        """A copy (copy.deepcopy of a model) holds new memory: registered as __init__ does."""
        self.__dict__.update(state)
        _share_versions_with_memory(self)

    def __repr__(self):
        return "Parameter(" + super().__repr__()[len("tensor("):]


class Module:
    """Base class of layers and models: subclass, assign parameters and
    sub-modules in ``__init__``, and write ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        """A Parameter or Module registers under its name; one assigned again in place of one
        keeps its place in the order (which a Sequential runs its layers in, and parameters(),
        state_dict() and an optimiser's momentum buffers follow).  A parameter can be replaced
        only by a Parameter (or None, to remove it): anything else would still be used by
        forward but no longer trained or saved."""
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
        if any(isinstance(v, (Module, Parameter)) for v in items):
            raise TypeError(f"{type(self).__name__}: {name} holds layers or parameters in a plain "
                            f"{type(value).__name__}, where the model would not find them (not trained, "
                            f"saved or switched to eval); use tn.nn.ModuleList or tn.nn.Sequential")
        if name in self._parameters and not (value is None or isinstance(value, Parameter)):
            raise TypeError(f"{type(self).__name__}: {name} is a parameter; assign a tn.nn.Parameter "
                            f"(or None to remove it), not a {type(value).__name__}: it would no longer "
                            f"be trained or saved")
        for registry, kind in ((self._parameters, Parameter), (self._modules, Module)):
            if isinstance(value, kind):
                registry[name] = value  # a new name goes last; a name already there keeps its place
            else:
                registry.pop(name, None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        """`del module.name` removes a parameter or sub-module from the model too."""
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def forward(self, *args):  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__}.forward is not written")

    def __call__(self, *args, **kwargs):
        tracer = _autograd.get_tracer()
        if tracer is None:  # the usual case: no tinynet.trace() / summary() running
            return self.forward(*args, **kwargs)
        # tell the tracer which module the ops belong to ("conv1", "tower0.fc6")
        tracer.enter_module(self)
        output = None
        try:
            output = self.forward(*args, **kwargs)
            return output
        finally:
            tracer.exit_module(self, output)

    # ---- traversal ------------------------------------------------------------
    def named_modules(self, prefix="", _seen=None):
        """(dotted name, module) for this module and every sub-module, each
        module once (a module registered twice is reached by its first name)."""
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) for every parameter, each once: a module
        registered twice (``Sequential(lin, ReLU(), lin)``) shares its
        weights, so they are listed, counted and updated once, under the
        first name they were reached by (as PyTorch does)."""
        seen = set()
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return int(sum(p.size for p in self.parameters()))

    # ---- modes ----------------------------------------------------------------
    def train(self, mode=True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ---- weights --------------------------------------------------------------
    def state_dict(self):
        """name -> NumPy array (a copy on the host), in registration order."""
        out = OrderedDict()
        for name, p in self.named_parameters():
            data = p.numpy()
            out[name] = data.copy() if data is p.data else data
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters, in place and on each parameter's
        device (the Parameter objects stay: an optimiser built before keeps
        training them).  With ``strict`` every key must match; shapes must
        always match.  dtypes are converted to the parameter's."""
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        values = {}
        for name, p in own.items():  # every entry checked before any is copied: all or nothing
            if name not in state:
                continue
            value = state[name]
            value = value.data if isinstance(value, Tensor) else value
            if tuple(value.shape) != p.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name} has shape {tuple(value.shape)} "
                    f"in the state dict, the model expects {p.shape}"
                )
            if value.dtype.kind not in "fiu":  # complex would lose its imaginary part, text its meaning
                raise TypeError(f"{type(self).__name__}.load_state_dict: {name} has dtype {value.dtype} "
                                f"in the state dict; expected real numbers")
            values[name] = value
        for name, value in values.items():
            _copy_into(own[name], value)
        return self

    def to(self, device):
        """Move every parameter to ``device`` ('cpu', 'cpu:1', 'cuda:0'), in
        place: the Parameter objects stay the same (an optimiser built
        before keeps holding them; its state must then be moved too:
        build the optimiser after moving the model, as in PyTorch)."""
        dev = Device(device)
        for p in self.parameters():
            if p.device != dev:
                moved = p.to(dev)
                p.data, p._device, p.grad = moved.data, moved.device, None
                p._bump_version()
                _share_versions_with_memory(p)  # the new memory's tensors share p's count
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + ("\n)" if self._modules else ")")


def _copy_into(p, value):
    """Copy host or device array ``value`` into parameter ``p`` in place, on
    p's device and in p's dtype: the Parameter object (held by optimisers)
    and its memory stay the same; graphs built before refuse backward."""
    dev = p.device
    with device_guard(dev):
        if dev.kind == "cuda":
            cp = dev.xp
            src = cp.asarray(value) if not is_gpu_array(value) else copy_to_device(
                value, device_of_array(value), dev)
            p.data[...] = src.astype(p.dtype, copy=False)
        else:
            host = value if not is_gpu_array(value) else copy_to_device(value, device_of_array(value), dev)
            np.copyto(p.data, np.asarray(host), casting="unsafe")
    p._bump_version()


def _uniform_init(shape, fan_in, dtype, rng):
    bound = 1.0 / math.sqrt(fan_in)
    return fill(np.empty(shape, dtype), lambda s: rng.uniform(-bound, bound, size=s))


def _check_positive_int(layer, name, v):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {v!r}")


class Conv2d(Module):
    """weight (out_channels, in_channels/groups, KH, KW), bias (out_channels,).
    Default init as PyTorch's (uniform +-1/sqrt(fan_in)); models set their own."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, dtype=np.float32, rng=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            _check_positive_int("Conv2d", name, v)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        kh, kw = F._pair("Conv2d", "kernel_size", kernel_size, 1)
        F._pair("Conv2d", "stride", stride, 1)  # refused here, not at the first forward
        F._pair("Conv2d", "padding", padding, 0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = (kh, kw), stride, padding, groups
        rng = default_generator() if rng is None else rng
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(_uniform_init((out_channels, in_channels // groups, kh, kw), fan_in, dtype, rng))
        self.bias = Parameter(_uniform_init((out_channels,), fan_in, dtype, rng)) if bias else None

    def forward(self, x, relu=False):
        """``relu=True``: relu(conv(x)) in one op (F.conv2d's ``relu``)."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups, relu=relu)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}")


class Linear(Module):
    """weight (out_features, in_features), bias (out_features,)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        _check_positive_int("Linear", "in_features", in_features)
        _check_positive_int("Linear", "out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        rng = default_generator() if rng is None else rng
        self.weight = Parameter(_uniform_init((out_features, in_features), in_features, dtype, rng))
        self.bias = Parameter(_uniform_init((out_features,), in_features, dtype, rng)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        F._pair("MaxPool2d", "kernel_size", kernel_size, 1)  # refused here, not at the first forward
        if stride is not None:
            F._pair("MaxPool2d", "stride", stride, 1)
        F._pair("MaxPool2d", "padding", padding, 0)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class LocalResponseNorm(Module):
    """Paper convention by default (k=2, alpha multiplies the raw window
    sum).  Note: PyTorch's ``LocalResponseNorm`` divides alpha by size and
    defaults k=1; ``alpha_over_size=True`` gives that convention."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=False, groups=1):
        super().__init__()
        F.check_lrn_constants("LocalResponseNorm", size, alpha, beta, k)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_over_size, self.groups = alpha_over_size, groups

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.alpha_over_size,
                                     self.groups)

    def extra_repr(self):
        conv = "alpha/size" if self.alpha_over_size else "paper"
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, {conv}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Dropout(Module):
    """Inverted dropout with probability p, active only in training mode."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p, self.rng = p, rng

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim)


class _Listed(Module):
    """A module whose sub-modules are also a list: len, indexing (a slice gives a list), iteration."""

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(_Listed):
    """Modules applied in order.  ``Sequential(a, b)`` names them '0', '1';
    ``Sequential(OrderedDict(conv1=..., relu1=...))`` uses the given names."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {name!r} is a {type(m).__name__}, not a Module")
            setattr(self, name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(_Listed):
    """Modules kept as a list, registered as '0', '1', ... so that the model finds their
    parameters (to train and save them) and switches them to eval; ``forward`` is the owner's
    to write.  ``ModuleList([a, b])``, ``append``, ``len``, indexing and iteration."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: item {len(self)} is a {type(module).__name__}, not a Module")
        setattr(self, str(len(self._modules)), module)
        return self
