"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012), exactly as the paper.

Input 3x227x227 (the paper's "224" does not divide: (224-11)/4+1 = 54.25).
Two towers, as on the paper's two GTX 580s: every layer's filters are split
in halves, tower 0 holding filters [0:C/2] and tower 1 [C/2:C].  The towers
exchange activations only at conv3, fc6, fc7 and fc8:

    layer  filters  per tower  kernel/stride/pad  sees                       out
    conv1    96        48       11 / 4 / 0         the whole image (both)     96x55x55 -> pool 27
    conv2   256       128        5 / 1 / 2         own tower (48 channels)    256x27x27 -> pool 13
    conv3   384       192        3 / 1 / 1         BOTH towers (256 ch.)      384x13x13
    conv4   384       192        3 / 1 / 1         own tower (192)            384x13x13
    conv5   256       128        3 / 1 / 1         own tower (192)            256x13x13 -> pool 6
    fc6    4096      2048        -                 BOTH towers (9216)
    fc7    4096      2048        -                 BOTH towers (4096)
    fc8    classes   classes/2   -                 BOTH towers (4096)

On one device the two towers *are* a grouped network: "own tower only" is a
convolution with groups=2, and "both towers" is an ordinary layer.  The
grouped weight (out, in/groups, kh, kw) is the two towers' weights stacked
along ``out``.  60,965,224 parameters at 1000 classes.

LRN normalises within each tower (``groups=2``): the paper's towers could not
see each other's channels, and cuda-convnet's two-GPU model has one LRN layer
per tower.  Caffe's single-GPU bvlc_alexnet instead lets the window run across
all 96 (256) channels; the two differ only for the two channels on each side
of the tower boundary.

Initialisation (paper, section 5): weights ~ N(0, 0.01); biases 1 in conv2,
conv4, conv5, fc6, fc7 (so that the ReLUs start with positive inputs) and 0
elsewhere.  With bias 1 the loss can sit at ln(classes) for a long time, so
Caffe's reproduction uses 0.1: ``bias_init="caffe"``.
"""

import numpy as np

from .. import functional as F
from .. import nn
from ..random import default_generator, fill

# (name, in_channels, out_channels, kernel, stride, padding, groups); groups=2: own tower only
CONV_LAYERS = [
    ("conv1", 3, 96, 11, 4, 0, 1),
    ("conv2", 96, 256, 5, 1, 2, 2),
    ("conv3", 256, 384, 3, 1, 1, 1),
    ("conv4", 384, 384, 3, 1, 1, 2),
    ("conv5", 384, 256, 3, 1, 1, 2),
]
FC_LAYERS = [("fc6", 256 * 6 * 6, 4096), ("fc7", 4096, 4096)]  # fc8: 4096 -> num_classes
ACROSS_TOWERS = ("conv3", "fc6", "fc7", "fc8")  # layers that read both towers' activations
ONES_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")
BIAS_INITS = {"paper": 1.0, "caffe": 0.1, "zero": 0.0}


class AlexNet(nn.Module):
    """AlexNet(num_classes=1000).

    Options (defaults are the paper's):
      bias_init   "paper" (1), "caffe" (0.1) or "zero": bias of conv2, conv4, conv5, fc6, fc7
      weight_std  std of the N(0, std) weights: a number, or a dict layer -> std
      dropout     probability for fc6 and fc7 outputs (0.5)
      lrn         None: the paper's LRN (size 5, alpha 1e-4, beta 0.75, k 2); a dict(size, alpha,
                  beta, k) in the paper's convention; or False for no LRN
      activation  "relu" or "tanh" (for the paper's Figure 1 experiment)
      pool        (kernel, stride): (3, 2) overlapping; (2, 2) for the non-overlapping ablation
      seed        a seed or numpy Generator for the initial weights (default: tinynet's)
      towers      a pair of devices, e.g. ("cuda:0", "cuda:1"): build the two-tower model
                  (``TwoTowerAlexNet``, models/towers.py) instead of the grouped one
    """

    # the paper's two GPUs: every layer's filters are split in halves over two
    # towers (tinynet.summary shows each layer's share per tower)
    num_towers = 2
    input_shape = (3, 227, 227)  # one image, as tn.summary(model) assumes

    def __new__(cls, *args, towers=None, **kwargs):
        # AlexNet(..., towers=(a, b)) builds the split model; its weights and
        # state_dict are those of this grouped model
        if towers is not None and cls is AlexNet:
            from .towers import TwoTowerAlexNet

            return TwoTowerAlexNet(*args, towers=towers, **kwargs)
        return super().__new__(cls)

    def __init__(self, num_classes=1000, bias_init="paper", weight_std=0.01, dropout=0.5,
                 lrn=None, activation="relu", pool=(3, 2), seed=None, dtype=np.float32, towers=None):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"AlexNet: num_classes must be an int >= 2, got {num_classes!r}")
        if bias_init not in BIAS_INITS:
            raise ValueError(f"AlexNet: bias_init must be one of {sorted(BIAS_INITS)}, got {bias_init!r}")
        if activation not in ("relu", "tanh"):
            raise ValueError(f"AlexNet: activation must be 'relu' or 'tanh', got {activation!r}")
        self.num_classes = num_classes
        self.config = dict(num_classes=num_classes, bias_init=bias_init, weight_std=weight_std,
                           dropout=dropout, lrn=lrn, activation=activation, pool=tuple(pool))
        if not (lrn is None or lrn is False or isinstance(lrn, dict)):
            raise TypeError(f"AlexNet: lrn must be None (the paper's), a dict(size, alpha, beta, k) "
                            f"or False (no LRN), got {lrn!r}")
        self.lrn_params = dict(size=5, alpha=1e-4, beta=0.75, k=2.0) if lrn is None else lrn
        self.act = F.relu if activation == "relu" else F.tanh
        self.pool_kernel, self.pool_stride = pool

        # the layers' own default init is overwritten by reset_parameters below; a throwaway
        # generator keeps it from consuming tinynet's global one (dropout draws from that)
        placeholder = np.random.default_rng(0)
        for name, cin, cout, k, s, p, g in CONV_LAYERS:
            setattr(self, name, nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g, dtype=dtype, rng=placeholder))
        for name, fin, fout in FC_LAYERS:
            setattr(self, name, nn.Linear(fin, fout, dtype=dtype, rng=placeholder))
        self.fc8 = nn.Linear(4096, num_classes, dtype=dtype, rng=placeholder)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        self.reset_parameters(bias_init, weight_std, seed)

    def reset_parameters(self, bias_init="paper", weight_std=0.01, seed=None):
        """Weights ~ N(0, std); biases 0, or BIAS_INITS[bias_init] in ONES_BIAS layers.  In
        place: a graph built before refuses backward, as after any change of the weights."""
        if bias_init not in BIAS_INITS:  # before any layer is drawn again
            raise ValueError(f"AlexNet: bias_init must be one of {sorted(BIAS_INITS)}, got {bias_init!r}")
        rng = seed if isinstance(seed, np.random.Generator) else (
            default_generator() if seed is None else np.random.default_rng(seed))
        for name in [c[0] for c in CONV_LAYERS] + ["fc6", "fc7", "fc8"]:
            layer = getattr(self, name)
            std = weight_std.get(name, 0.01) if isinstance(weight_std, dict) else weight_std
            fill(layer.weight.data, lambda shape: rng.normal(0.0, std, shape))
            layer.bias.data[...] = BIAS_INITS[bias_init] if name in ONES_BIAS else 0.0
            layer.weight._bump_version()
            layer.bias._bump_version()

    def _pool(self, x):
        return F.max_pool2d(x, self.pool_kernel, self.pool_stride)

    def _lrn(self, x):
        if self.config["lrn"] is False:
            return x
        # groups=2: each tower normalises its own channels, as on the paper's two GPUs
        return F.local_response_norm(x, groups=2, **self.lrn_params)

    def features(self, x):
        """x: (N, 3, 227, 227) -> (N, 256, 6, 6).  Comments give the towers."""
        act = self.act
        # conv1: both towers see the whole image; tower t holds filters [48t : 48t+48]
        x = self._pool(self._lrn(conv_act(act, self.conv1, x)))   # (N, 96, 27, 27)
        # conv2: groups=2, each tower's 128 filters read only its own 48 channels
        x = self._pool(self._lrn(conv_act(act, self.conv2, x)))   # (N, 256, 13, 13)
        # conv3: the towers cross; each of the 384 filters reads all 256 channels
        x = conv_act(act, self.conv3, x)                          # (N, 384, 13, 13)
        # conv4, conv5: groups=2 again, each tower on its own 192 channels
        x = conv_act(act, self.conv4, x)                          # (N, 384, 13, 13)
        x = self._pool(conv_act(act, self.conv5, x))              # (N, 256, 6, 6)
        return x

    def classifier(self, x):
        """x: (N, 9216) -> logits (N, num_classes).  Every fc layer reads both towers."""
        x = self.drop6(self.act(self.fc6(x)))              # (N, 4096)
        x = self.drop7(self.act(self.fc7(x)))              # (N, 4096)
        return self.fc8(x)                                 # (N, num_classes)

    def forward(self, x):
        """x: (N, 3, 227, 227) float -> logits (N, num_classes)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"AlexNet: expected input (N, 3, H, W), got shape {tuple(x.shape)}")
        x = self.features(x)
        if x.shape[1:] != (256, 6, 6):
            raise ValueError(
                f"AlexNet: the input size gives {tuple(x.shape[1:])} after conv5's pool; fc6 expects "
                "(256, 6, 6), i.e. a 227x227 input (224 gives 54x54 after conv1, not 55x55)"
            )
        return self.classifier(F.flatten(x))


def conv_act(act, conv, x):
    """act(conv(x)).  A ReLU is done by the convolution itself, in the pass that
    writes its output (``F.conv2d(relu=True)``, ops/conv.py): the same numbers as
    F.relu(conv(x)), two passes over the activations fewer each way."""
    if act is F.relu:
        return conv(x, relu=True)
    return act(conv(x))


def he_weight_std(model, last="fc8", last_std=0.01):
    """Per-layer weight std sqrt(2 / fan_in) (He et al. 2015) for every layer of ``model``,
    keyed by layer name, with ``last_std`` for the output layer (small logits: the loss
    starts at ln(classes)).  Pass it as ``reset_parameters(weight_std=...)``.  Keeps
    activations at about unit scale through ReLUs, where N(0, 0.01) shrinks them."""
    stds = {}
    for name, p in model.named_parameters():
        if name.endswith(".weight"):
            stds[name.split(".")[0]] = float(np.sqrt(2.0 / np.prod(p.shape[1:])))
    stds[last] = last_std
    return stds

