"""AlexNet split across two devices, one tower each, as on the paper's two GPUs.

Each tower holds half the filters of every layer.  Tower t of a layer with C
filters holds filters [t*C/2 : (t+1)*C/2] (fc8 with an odd class count: tower
0 takes the extra one).  The towers compute independently except at the
layers that cross, conv3, fc6, fc7 and fc8, where each tower receives the
other tower's half of the input through an explicit device-to-device copy
(``CrossTower``); backward sends the gradient of that copy back the same way.

    tower 0 (device A)                          tower 1 (device B)
    conv1 48 -> pool                            conv1 48 -> pool
    conv2 128 (own 48) -> pool                  conv2 128 (own 48) -> pool
          \\________ both halves, 256 ch. ________/
    conv3 192 (all 256)                         conv3 192 (all 256)
    conv4 192 (own) -> conv5 128 (own) -> pool  conv4 192 (own) -> conv5 128 (own) -> pool
          \\________ both halves, 9216 ________/
    fc6 2048, fc7 2048 (each reads 4096), fc8 classes/2 (reads 4096)
    logits: tower 1's half is gathered onto tower 0

Because the two-tower net *is* the grouped net, ``state_dict()`` joins the
halves and returns exactly the single-device AlexNet's keys and shapes, so
checkpoints move freely between CPU, one GPU and two towers.  Dropout masks
are drawn for the whole layer and split, so even training steps compute the
same numbers as the single-device model.
"""

from collections import OrderedDict

import numpy as np

from .. import functional as F
from .. import nn
from ..autograd import Function
from ..backend import Device, copy_to_device, on_device
from ..ops.math import concat
from .alexnet import CONV_LAYERS, AlexNet, conv_act


class Traffic:
    """Bytes copied between towers, per direction of the pass."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.forward_bytes = 0
        self.backward_bytes = 0
        self.by_layer = OrderedDict()

    def add(self, layer, direction, nbytes):
        if direction == "forward":
            self.forward_bytes += nbytes
        else:
            self.backward_bytes += nbytes
        key = f"{layer} {direction}"
        self.by_layer[key] = self.by_layer.get(key, 0) + nbytes

    def __repr__(self):
        return f"Traffic(forward={self.forward_bytes:,} B, backward={self.backward_bytes:,} B)"


class CrossTower(Function):
    """Copy an activation to the other tower's device; backward copies its
    gradient back.  The only op allowed to cross devices (``crosses_devices``:
    its output lives on ``device``, its input where it came from).  Both
    directions are counted, also between two CPU devices, so the traffic a
    split costs can be measured anywhere."""

    crosses_devices = True

    def forward(self, x, device=None, layer="", traffic=None):
        self.target, self.layer, self.traffic = Device(device), layer, traffic
        traffic.add(layer, "forward", x.nbytes)
        return copy_to_device(x, self.device, self.target)  # self.device: where x is

    def backward(self, g):
        self.traffic.add(self.layer, "backward", g.nbytes)
        return copy_to_device(g, self.target, self.device)


def _halves(n):
    first = (n + 1) // 2
    return [(0, first), (first, n)]


class Tower(nn.Module):
    """One tower's layers: half the filters of each, on one device."""

    def __init__(self, num_classes_here, dtype):
        super().__init__()
        rng = np.random.default_rng(0)  # placeholder init, replaced by load_state_dict
        kw = dict(dtype=dtype, rng=rng)
        # (in channels seen by this tower's filters, filters held by this tower)
        self.conv1 = nn.Conv2d(3, 48, 11, stride=4, **kw)              # whole image
        self.conv2 = nn.Conv2d(48, 128, 5, padding=2, **kw)            # own tower
        self.conv3 = nn.Conv2d(256, 192, 3, padding=1, **kw)           # both towers
        self.conv4 = nn.Conv2d(192, 192, 3, padding=1, **kw)           # own tower
        self.conv5 = nn.Conv2d(192, 128, 3, padding=1, **kw)           # own tower
        self.fc6 = nn.Linear(9216, 2048, **kw)                         # both towers
        self.fc7 = nn.Linear(4096, 2048, **kw)                         # both towers
        self.fc8 = nn.Linear(4096, num_classes_here, **kw)             # both towers


class TwoTowerAlexNet(nn.Module):
    """AlexNet with every layer's filters split across ``towers``, a pair of
    devices such as ("cuda:0", "cuda:1"), ("cuda:0", "cuda:0"), ("cpu:0", "cpu:1")
    (two virtual CPU devices: the same rules as two GPUs) or ("cpu", "cpu").
    Other arguments as ``AlexNet``; the initial weights are exactly those of
    ``AlexNet`` with the same arguments and seed."""

    input_shape = AlexNet.input_shape

    def __init__(self, num_classes=1000, towers=("cpu:0", "cpu:1"), dtype=np.float32, **kwargs):
        super().__init__()
        if len(towers) != 2:
            raise ValueError(f"AlexNet: towers must be a pair of devices, got {towers!r}")
        self.devices = tuple(Device(d) for d in towers)
        for dev in self.devices:
            dev.xp  # fails now, with a clear message, if a CUDA device is not usable
        grouped = AlexNet(num_classes, dtype=dtype, **kwargs)  # the same initial weights
        self.num_classes = num_classes
        self.config = dict(grouped.config, towers=[str(d) for d in self.devices])
        self.lrn_params, self.act = grouped.lrn_params, grouped.act
        self.pool_kernel, self.pool_stride = grouped.pool_kernel, grouped.pool_stride
        self.dropout_p = grouped.drop6.p
        self.class_split = _halves(num_classes)
        self.tower0 = Tower(self.class_split[0][1] - self.class_split[0][0], dtype).to(self.devices[0])
        self.tower1 = Tower(self.class_split[1][1] - self.class_split[1][0], dtype).to(self.devices[1])
        self.traffic = Traffic()
        self.load_state_dict(grouped.state_dict())

    # ---- weights: the grouped model's names and layouts -------------------------
    def _splits(self, layer, n_out):
        return self.class_split if layer == "fc8" else _halves(n_out)

    def state_dict(self):
        out = OrderedDict()
        parts = (self.tower0.state_dict(), self.tower1.state_dict())
        for key in parts[0]:
            out[key] = np.concatenate([parts[0][key], parts[1][key]], axis=0)
        return out

    def load_state_dict(self, state, strict=True):
        expected = [f"{name}.{kind}" for name in [c[0] for c in CONV_LAYERS] + ["fc6", "fc7", "fc8"]
                    for kind in ("weight", "bias")]
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if strict and (missing or unexpected):
            raise KeyError(f"TwoTowerAlexNet.load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        halves = ({}, {})
        for key in expected:
            if key not in state:
                continue
            value = np.asarray(state[key].numpy() if hasattr(state[key], "numpy") else state[key])
            layer = key.split(".")[0]
            for t, (lo, hi) in enumerate(self._splits(layer, value.shape[0])):
                halves[t][key] = value[lo:hi]
        for t, tower in enumerate((self.tower0, self.tower1)):
            tower.load_state_dict(halves[t], strict=strict)  # in place, on the tower's device
        return self

    def to(self, device):
        raise RuntimeError("TwoTowerAlexNet: the towers' devices are fixed at construction "
                           "(towers=...); build a new model and load_state_dict to move it")

    # ---- forward -------------------------------------------------------------------
    def _cross(self, x, to_tower, layer):
        return CrossTower.apply(x, device=self.devices[to_tower], layer=layer, traffic=self.traffic)

    def _both_halves(self, halves, layer):
        """Each tower gets [tower 0's half, tower 1's half] along the channel axis."""
        return [concat([halves[0], self._cross(halves[1], 0, layer)], axis=1),
                concat([self._cross(halves[0], 1, layer), halves[1]], axis=1)]

    def _per_tower(self, fn, inputs):
        outs = []
        for t, tower in enumerate((self.tower0, self.tower1)):
            with on_device(self.devices[t], lane=t):  # this tower's own stream: towers overlap
                outs.append(fn(tower, inputs[t], t))
        return outs

    def _dropout(self, halves):
        if not self.training or self.dropout_p == 0:
            return halves
        n, width = halves[0].shape[0], halves[0].shape[1] + halves[1].shape[1]
        mask = F.dropout_mask((n, width), self.dropout_p, halves[0].dtype)  # one mask, as the grouped net
        cut = halves[0].shape[1]
        return [F.dropout(halves[0], self.dropout_p, mask=mask[:, :cut]),
                F.dropout(halves[1], self.dropout_p, mask=mask[:, cut:])]

    def forward(self, x):
        """x: (N, 3, 227, 227) on any device -> logits (N, num_classes) on tower 0's device."""
        act, pool = self.act, (lambda v: F.max_pool2d(v, self.pool_kernel, self.pool_stride))
        lrn = (lambda v: v) if self.config["lrn"] is False else (lambda v: F.local_response_norm(v, **self.lrn_params))
        if not hasattr(x, "data"):
            from ..autograd import Tensor

            x = Tensor(x)
        # the image goes to both towers (input, not cross-tower traffic)
        a = [x.to(self.devices[0]), x.to(self.devices[1])]
        a = self._per_tower(lambda T, v, t: pool(lrn(conv_act(act, T.conv1, v))), a)  # (N, 48, 27, 27) each
        a = self._per_tower(lambda T, v, t: pool(lrn(conv_act(act, T.conv2, v))), a)  # (N, 128, 13, 13)
        a = self._both_halves(a, "conv3")                                         # (N, 256, 13, 13) each
        a = self._per_tower(lambda T, v, t: conv_act(act, T.conv3, v), a)         # (N, 192, 13, 13)
        a = self._per_tower(lambda T, v, t: conv_act(act, T.conv4, v), a)         # (N, 192, 13, 13)
        a = self._per_tower(lambda T, v, t: F.flatten(pool(conv_act(act, T.conv5, v))), a)  # (N, 128*36)
        a = self._both_halves(a, "fc6")                                           # (N, 9216) each
        a = self._dropout(self._per_tower(lambda T, v, t: act(T.fc6(v)), a))      # (N, 2048)
        a = self._both_halves(a, "fc7")
        a = self._dropout(self._per_tower(lambda T, v, t: act(T.fc7(v)), a))
        a = self._both_halves(a, "fc8")
        a = self._per_tower(lambda T, v, t: T.fc8(v), a)                          # (N, classes/2)
        return concat([a[0], self._cross(a[1], 0, "logits")], axis=1)
