"""Optimiser and learning-rate schedule as the AlexNet paper writes them.

SGD with momentum and weight decay, the paper's update rule (section 5):

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

Note the learning rate sits inside v (unlike PyTorch's SGD, which keeps
v = momentum * v + grad + weight_decay * w and steps w -= lr * v): the two
agree while lr is constant and differ for a few steps after lr changes.

``SGD(..., update_in_backward=True)`` applies the same rule, with the same
bits, to the fully connected layers' weights during backward, on the CPU at
batch 1-32: each weight's gradient is summed (its N products), used at once
and never stored, where the two steps would write fc6's 151 MB gradient and
read it back.  Those weights then have no ``.grad``; ``step()`` updates the
rest.  The training program uses it; data parallelism cannot (the gradients
are summed over the processes before any update).
"""

import math
import warnings
import weakref

import numpy as np

from .autograd import _may_share_memory, no_grad, register_update_in_backward
from .backend import copy_to_device, device_guard, device_of_array, is_gpu_array
from .ops import kernels_for, linear
from .profile import section


def _check_constants(where, lr, momentum, weight_decay):
    for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{where}: {name} must be a finite number >= 0, got {v!r}")


def _check_params(params):
    params = list(params)
    if not params:
        raise ValueError("SGD: got an empty parameter list")
    for i, p in enumerate(params):
        if not getattr(p, "requires_grad", False):
            raise ValueError(f"SGD: parameter {i} (shape {getattr(p, 'shape', '?')}) does not require grad")
        # one update per array: the same parameter twice, or two over the same memory (a view,
        # Parameter(other.data)), would move it twice as far
        j = next((k for k in range(i) if params[k] is p or _may_share_memory(params[k].data, p.data)), i)
        if j != i:
            raise ValueError(f"SGD: parameter {i} (shape {p.shape}) is parameter {j} again, or shares "
                             f"its memory; give each parameter once")
    return params


# From this many elements the CPU's loops update a parameter (one compiled pass, run in
# parallel) instead of _update's four NumPy passes; below it their call costs more than it
# saves.  Measured on this project's 2-core machine (float32, warm caches): 885K elements
# (conv3) 0.64 -> 0.31 ms, 442K (conv5) 0.25 -> 0.16, 307K (conv2) 0.17 -> 0.15,
# but 35K (conv1) 0.03 -> 0.11.
COMPILED_UPDATE_SIZE = 1 << 18


class SGD:
    """SGD(params, lr, momentum=0.9, weight_decay=5e-4), the paper's rule.

    ``update_in_backward=True``: a fully connected layer's weight is updated by its backward
    (see the module's docstring; ``UpdateInBackward``).  Then call step() after every
    backward, as the paper's loop does: a second backward before it is refused, since the
    first one's gradient is spent.  The update uses lr, momentum and weight decay as they are
    when backward runs (set lr before it, as the training program does), and those weights'
    gradients are never seen: clipping or inspecting gradients needs the option off.  The
    newest SGD built over a parameter decides: one built without the option takes it back."""

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=5e-4, update_in_backward=False):
        _check_constants("SGD", lr, momentum, weight_decay)
        self.params = _check_params(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.velocity = [_zeros_beside(p) for p in self.params]
        self.velocity_devices = [p.device for p in self.params]
        self.update_in_backward = bool(update_in_backward)
        self.in_backward = [UpdateInBackward(self, i) if update_in_backward else None
                            for i in range(len(self.params))]
        for p, update in zip(self.params, self.in_backward):
            register_update_in_backward(p, update)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @no_grad()
    def step(self):
        with section("SGD update"):
            self._step()

    def _step(self):
        lr, m, wd = self.lr, self.momentum, self.weight_decay
        for i, (p, v) in enumerate(zip(self.params, self.velocity)):
            update = self.in_backward[i]
            if update is not None and update.pending:  # backward updated it (and left no .grad)
                update.pending = False
                if p.grad is not None:  # a gradient beside the update: one of the two would be lost
                    raise RuntimeError(
                        f"SGD.step: parameter {i} (shape {p.shape}) was updated in backward and also holds "
                        "a .grad from elsewhere; the .grad was not applied")
                continue
            if p.grad is None:
                continue
            if p.device != self.velocity_devices[i]:
                raise RuntimeError(
                    f"SGD: parameter {i} is on {p.device} but its momentum buffer on "
                    f"{self.velocity_devices[i]}; move the model before building the optimiser"
                )
            w, g = p.data, p.grad
            with device_guard(p.device):  # each update runs on its parameter's device
                if not is_gpu_array(w) and w.size >= COMPILED_UPDATE_SIZE and w.flags.c_contiguous:
                    # big layers (fc6: 38M weights): the CPU's loops run the update in
                    # pieces in parallel; same arithmetic, same result.  Only
                    # for a C-contiguous weight: reshape(-1) of any other layout is a
                    # copy, and an update of a copy would be lost
                    g = np.ascontiguousarray(g).reshape(-1)  # a copy only if g is not contiguous
                    kernels_for(w).sgd_update(w.reshape(-1), g, v.reshape(-1), lr, m, wd)
                else:
                    _update(w, g, v, lr, m, wd)
            p._bump_version()

    def state_dict(self):
        return {
            "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "velocity": [v.copy() if isinstance(v, np.ndarray) else copy_to_device(v, device_of_array(v), "cpu")
                         for v in self.velocity],
        }

    def load_state_dict(self, state):
        vel = state["velocity"]
        if len(vel) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: {len(vel)} velocity buffers for {len(self.params)} parameters")
        for i, (p, v) in enumerate(zip(self.params, vel)):
            if tuple(v.shape) != p.shape:
                raise ValueError(f"SGD.load_state_dict: velocity {i} has shape {tuple(v.shape)}, parameter has {p.shape}")
        _check_constants("SGD.load_state_dict", state["lr"], state["momentum"], state["weight_decay"])
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.velocity = [_zeros_beside(p) for p in self.params]
        self.velocity_devices = [p.device for p in self.params]
        for buf, p, v in zip(self.velocity, self.params, vel):
            with device_guard(p.device):
                buf[...] = p.device.xp.asarray(v)  # host -> the parameter's device, its dtype


class UpdateInBackward:
    """Parameter ``index`` of an SGD built with ``update_in_backward=True``.  Linear's backward
    asks whether it ``takes`` the weight gradient's factors (gy, x); where the CPU's loops sum
    that gradient at this batch, it does, and ``apply`` runs the paper's rule with each sum as it
    comes (the CPU loops' outer_sum_sgd, the same bits as outer_sum and then step()).
    Elsewhere (a GPU, a batch over 32, a weight that is not C-contiguous) backward returns the
    gradient as usual, for step().  autograd.register_update_in_backward says when backward
    offers it at all."""

    def __init__(self, optimizer, index):
        # a weak reference: autograd's registry holds this update, and through a strong one it
        # would keep the optimiser, its parameters and momentum (490 MB for AlexNet) alive
        self._optimizer, self.index = weakref.ref(optimizer), index
        self.pending = False     # applied by a backward, step() not yet run
        self.warned = False

    optimizer = property(lambda self: self._optimizer())
    active = property(lambda self: self._optimizer() is not None)  # its optimiser still exists

    def takes(self, gy, x):
        """Whether the CPU's fused loop runs for the weight gradient gy.T @ x: a CPU array at a
        batch whose weight gradient is a sum of outer products (linear.sums_outer_products),
        the weight and its momentum C-contiguous, one dtype."""
        opt, i = self.optimizer, self.index
        p, v = opt.params[i], opt.velocity[i]
        w = p.data
        return (linear.sums_outer_products(x) and isinstance(w, np.ndarray) and w.flags.c_contiguous
                and v.flags.c_contiguous and gy.dtype == x.dtype == w.dtype and p.device == opt.velocity_devices[i])

    def apply(self, gy, x):
        """The update, in place, with the gradient gy.T @ x (where ``takes`` says so)."""
        opt, i = self.optimizer, self.index
        p = opt.params[i]
        with section("weight gradient + SGD update (fused)"):
            kernels_for(p.data).outer_sum_sgd(gy, x, p.data, opt.velocity[i], opt.lr, opt.momentum, opt.weight_decay)
        p._bump_version()
        self.pending = True

    def declined(self, reason):
        """Backward delivers the gradient instead (said once per parameter): step() applies it."""
        if not self.warned:
            self.warned = True
            warnings.warn(f"SGD(update_in_backward=True): parameter {self.index} (shape "
                          f"{self.optimizer.params[self.index].shape}) is updated by step(), not in backward: "
                          f"{reason}", stacklevel=4)


def _zeros_beside(p):
    """A zero buffer for parameter ``p``: its shape and dtype, C-contiguous
    whatever p's layout, allocated on p's device."""
    with device_guard(p.device):
        return p.device.xp.zeros(p.shape, p.dtype)


def _update(w, g, v, lr, m, wd):
    """In place: v = m*v - wd*lr*w - lr*g; w += v."""
    v *= m
    v -= (wd * lr) * w
    v -= lr * g
    w += v


class ReduceLROnPlateau:
    """Divide the learning rate by ``1/factor`` (10) when the watched metric
    (validation error: lower is better) has not improved by more than
    ``threshold`` (relative) for ``patience`` evaluations; at most
    ``max_reductions`` times (3, as the paper)."""

    def __init__(self, optimizer, factor=0.1, patience=2, threshold=1e-3, max_reductions=3, mode="min"):
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        self.optimizer, self.factor, self.patience = optimizer, factor, int(patience)
        self.threshold, self.max_reductions, self.mode = threshold, int(max_reductions), mode
        self.best, self.bad_epochs, self.reductions = None, 0, 0

    def _improved(self, metric):
        if self.best is None:
            return True
        if self.mode == "min":
            return metric < self.best - abs(self.best) * self.threshold
        return metric > self.best + abs(self.best) * self.threshold

    def step(self, metric):
        """Report one evaluation; returns True if the rate was just reduced."""
        metric = float(metric)
        if self._improved(metric):
            self.best, self.bad_epochs = metric, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.reductions < self.max_reductions:
            self.optimizer.lr *= self.factor
            self.reductions += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions,
                "factor": self.factor, "patience": self.patience, "threshold": self.threshold,
                "max_reductions": self.max_reductions, "mode": self.mode}

    def load_state_dict(self, state):
        for key in ("best", "bad_epochs", "reductions", "factor", "patience", "threshold",
                    "max_reductions", "mode"):
            setattr(self, key, state[key])
