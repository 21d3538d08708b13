"""Optimiser and learning-rate schedule as the AlexNet paper writes them.

SGD with momentum and weight decay, the paper's update rule (section 5):

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

Note the learning rate sits inside v (unlike PyTorch's SGD, which keeps
v = momentum * v + grad + weight_decay * w and steps w -= lr * v): the two
agree while lr is constant and differ for a few steps after lr changes.
"""

import math

import numpy as np

from .autograd import no_grad
from .backend import get_array_module
from .ops.cpu_kernels import parallel_chunks


def _check_params(params):
    params = list(params)
    if not params:
        raise ValueError("SGD: got an empty parameter list")
    for i, p in enumerate(params):
        if not getattr(p, "requires_grad", False):
            raise ValueError(f"SGD: parameter {i} (shape {getattr(p, 'shape', '?')}) does not require grad")
    return params


class SGD:
    """SGD(params, lr, momentum=0.9, weight_decay=5e-4), the paper's rule."""

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=5e-4):
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"SGD: {name} must be a finite number >= 0, got {v!r}")
        self.params = _check_params(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.velocity = [get_array_module(p.data).zeros_like(p.data) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @no_grad()
    def step(self):
        lr, m, wd = self.lr, self.momentum, self.weight_decay
        for p, v in zip(self.params, self.velocity):
            if p.grad is None:
                continue
            w, g = p.data, p.grad
            if get_array_module(w) is np and w.size > 1 << 20:
                # big layers (fc6: 38M weights): run the passes on cache-sized
                # pieces in parallel; same arithmetic, same result
                wf, gf, vf = w.reshape(-1), g.reshape(-1), v.reshape(-1)

                def update(i0, i1, wf=wf, gf=gf, vf=vf):
                    _update(wf[i0:i1], gf[i0:i1], vf[i0:i1], lr, m, wd)

                parallel_chunks(update, wf.size, wf.itemsize * 3, target_bytes=1 << 20)
            else:
                _update(w, g, v, lr, m, wd)

    def state_dict(self):
        return {
            "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "velocity": [v.copy() if isinstance(v, np.ndarray) else get_array_module(v).asnumpy(v)
                         for v in self.velocity],
        }

    def load_state_dict(self, state):
        vel = state["velocity"]
        if len(vel) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: {len(vel)} velocity buffers for {len(self.params)} parameters")
        for i, (p, v) in enumerate(zip(self.params, vel)):
            if tuple(v.shape) != p.shape:
                raise ValueError(f"SGD.load_state_dict: velocity {i} has shape {tuple(v.shape)}, parameter has {p.shape}")
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.velocity = [get_array_module(p.data).asarray(v, dtype=p.dtype).copy() for p, v in zip(self.params, vel)]


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
