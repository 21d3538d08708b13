"""tinynet.summary(model, input_shape): a table of what every layer costs.

    import tinynet as tn
    from tinynet.models import AlexNet
    print(tn.summary(AlexNet(), input_shape=(3, 227, 227)))

prints two tables for ONE image (summary returns them as text; a REPL or notebook shows them
without print, and show=True prints them too):

1. one row per op, in the order they ran: output shape, the shape on each
   tower (for models split in towers, such as AlexNet), parameters,
   multiply-adds, and activation memory (bytes of the op's output);
2. one row per matrix-multiplying layer (convolution, linear): the im2col
   matrix, the weight matrix and the GEMM, per group and per tower.

Then the totals: parameters (AlexNet: 60,965,224), multiply-adds (AlexNet:
724,406,816, about 724 million per image forward), activation bytes, the
largest column matrix.

How: nothing is derived by hand.  The model runs one forward pass on a batch
of one image of zeros while a silent tracer (``tinynet.tracing.Tracer``)
records every op: its output shape, the parameters it read, and its
``describe()`` facts (GEMM shapes, multiply-adds).  So the table is right for
any model built from tinynet layers and ops, including ops called directly
through ``tinynet.functional`` inside a model's ``forward``.

The pass runs in evaluation mode (so dropout draws no random numbers) and
under ``no_grad`` (no graph is kept); the model's training/evaluation modes
are restored afterwards.  Counters a model keeps itself, such as
``TwoTowerAlexNet.traffic``, do count that pass.

Use ``collect_summary`` for the numbers as data (``tinynet.summary`` is the
function; import the module's other names with ``from tinynet.summary import ...``).
"""

import numbers
import sys

import numpy as np

from .autograd import Tensor, no_grad, set_tracer
from .nn import Module, Parameter
from .tracing import Tracer

__all__ = ["summary", "collect_summary", "format_summary"]


class _Recorder(Tracer):
    """A silent tracer that keeps one row per op (and per leaf module that
    ran no op at all, such as Dropout in evaluation mode)."""

    def __init__(self):
        super().__init__()
        self.rows = []
        self.op_counts = []      # ops run so far inside each module of module_stack
        self.seen_params = {}    # id(parameter) -> parameter, each counted once

    def enter_module(self, module):
        super().enter_module(module)
        self.op_counts.append(0)

    def exit_module(self, module, output):
        ran = self.op_counts.pop() if self.op_counts else 0
        if ran == 0 and not module._modules and isinstance(output, Tensor):
            # a leaf module that ran no op: still a layer of the model, so give it a row
            self.rows.append(dict(layer=self.current_module(), op=type(module).__name__ + "*",
                                  outputs=[tuple(output.shape)], nbytes=0, params=0, macs=0, info={}))
        if self.op_counts:
            self.op_counts[-1] += ran  # the parent ran these ops too
        super().exit_module(module, output)

    def on_forward(self, fn, inputs, outputs):
        if self.op_counts:
            self.op_counts[-1] += 1
        # parameters this op reads for the first time in the pass
        params = 0
        for t in inputs:
            if isinstance(t, Parameter) and id(t) not in self.seen_params:
                self.seen_params[id(t)] = t
                params += t.size
        info = fn.describe()
        self.rows.append(dict(
            layer=self.current_module(), op=type(fn).__name__,
            outputs=[tuple(o.shape) for o in outputs],
            nbytes=sum(o.size * o.dtype.itemsize for o in outputs),
            params=params, macs=info.get("macs", 0), info=info))


def _check_input_shape(input_shape):
    if (not isinstance(input_shape, (tuple, list)) or not input_shape
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                       for v in input_shape)):
        raise ValueError(
            "summary: input_shape must be a tuple of positive ints, one image without the batch "
            f"axis, e.g. (3, 227, 227); got {input_shape!r}")
    return tuple(int(v) for v in input_shape)


def collect_summary(model, input_shape, towers=None):
    """Run ``model`` on one image of zeros and return the summary as data:

        dict(rows=[...], input_shape=(3, 227, 227), towers=2,
             params=..., model_params=..., macs=..., activation_bytes=...,
             max_col_bytes=..., max_col_layer="conv2")

    Each row is a dict: layer (module name, '' for the model's own forward),
    op (the Function's class name; a name ending in '*' is a leaf module that
    ran no op), outputs (shapes, batch axis included, batch = 1), nbytes
    (bytes of the outputs), params (parameters first read by this op), macs
    (multiply-adds) and info (the op's ``describe()`` dict).

    towers: how many towers each layer's filters are split over, for the
    per-tower columns; default ``getattr(model, "num_towers", 1)``
    (AlexNet says 2, as on the paper's two GPUs).
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: model must be a tinynet.nn.Module, got {type(model).__name__}")
    input_shape = _check_input_shape(input_shape)
    towers = getattr(model, "num_towers", 1) if towers is None else towers
    if not isinstance(towers, numbers.Integral) or isinstance(towers, bool) or towers < 1:
        raise ValueError(f"summary: towers must be a positive int, got {towers!r}")

    # one image of zeros, with the dtype and on the device of the first parameter
    params = model.parameters()
    dtype = params[0].dtype if params else np.float32
    x = Tensor(np.zeros((1,) + input_shape, dtype=dtype))
    if params:
        x = x.to(params[0].device)

    modes = [(m, m.training) for _, m in model.named_modules()]
    recorder = _Recorder()
    previous = set_tracer(recorder)
    try:
        model.eval()  # dropout: identity, no random numbers drawn
        with no_grad():
            model(x)
    finally:
        set_tracer(previous)
        for m, mode in modes:
            object.__setattr__(m, "training", mode)

    rows = recorder.rows
    convs = [r for r in rows if r["info"].get("kind") == "conv"]
    biggest = max(convs, key=lambda r: r["info"]["col_bytes"], default=None)
    return dict(
        rows=rows, input_shape=input_shape, towers=int(towers), dtype=np.dtype(dtype).name,
        params=sum(r["params"] for r in rows), model_params=model.num_parameters(),
        macs=sum(r["macs"] for r in rows),
        activation_bytes=sum(r["nbytes"] for r in rows),
        input_bytes=x.size * x.dtype.itemsize,
        max_col_bytes=biggest["info"]["col_bytes"] if biggest else 0,
        max_col_layer=(biggest["layer"] or biggest["op"]) if biggest else "",
        max_col_winograd=bool(biggest and biggest["info"].get("algorithm") == "winograd"),
        model_name=type(model).__name__)


# ----------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------


def _dims(shape):
    """(1, 96, 55, 55) -> '96x55x55' (the batch axis dropped: the table is per image)."""
    rest = shape[1:]
    return "x".join(str(v) for v in rest) if rest else "scalar"


def _halves(n, towers):
    """Split n filters over the towers as tinynet's towers do: the first towers
    take one more when n does not divide (fc8 with an odd class count)."""
    base, extra = divmod(n, towers)
    return [base + (1 if t < extra else 0) for t in range(towers)]


def _per_tower(shape, towers):
    """'2 x 48x55x55': the output shape on each tower (channels split)."""
    if len(shape) < 2:
        return "-"
    parts = _halves(shape[1], towers)
    rest = "".join(f"x{v}" for v in shape[2:])
    if len(set(parts)) == 1:
        return f"{towers} x {parts[0]}{rest}"
    return " + ".join(f"{p}{rest}" for p in parts)


def _mat(rows, cols):
    return f"[{rows} x {cols}]"


def _table(header, rows, right):
    """Plain-text table; columns in ``right`` are right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        out = []
        for i, cell in enumerate(cells):
            out.append(str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule] + [line(r) for r in rows]


def _gemm_row(r, towers):
    """One row of the GEMM table for a conv or linear op."""
    info, name = r["info"], r["layer"] or r["op"]
    if info["kind"] == "conv":
        G, Og, K, P = info["gemm"]
        O = G * Og
        cols = _mat(K, P).strip("[]") if G == 1 else f"{G} x ({K} x {P})"
        weights = f"{O} x {K}" if G == 1 else f"{G} x ({Og} x {K})"
        gemm = f"W {_mat(Og, K)} @ cols {_mat(K, P)}"
        col_bytes = f"{info['col_bytes']:,}"
        if towers == 1:
            tower = ""
        elif G == 1:   # every tower builds the whole column matrix and holds O/towers filters
            tower = f"{_mat(_halves(O, towers)[0], K)} @ {_mat(K, P)}"
        elif G % towers == 0:  # groups stay inside their tower: G/towers groups each
            each = G // towers
            tower = ("" if each == 1 else f"{each} x ") + f"{_mat(Og, K)} @ {_mat(K, P)}"
        else:
            tower = "-"
        split = "/".join(str(v) for v in _halves(O, towers)) + " filters" if towers > 1 else ""
        return [name, str(G), cols, col_bytes, weights, gemm, split, tower, f"{r['macs']:,}"]
    # linear: x (N x in) @ W^T (in x out); matmul: a (M x K) @ b (K x P)
    _, M, K, P = info["gemm"]
    if info["kind"] == "linear":
        weights, gemm = f"{P} x {K}", f"x {_mat(M, K)} @ W^T {_mat(K, P)}"
        split = "/".join(str(v) for v in _halves(P, towers)) + " outputs" if towers > 1 else ""
        tower = f"{_mat(M, K)} @ {_mat(K, _halves(P, towers)[0])}" if towers > 1 else ""
    else:
        weights, gemm, split, tower = "-", f"a {_mat(M, K)} @ b {_mat(K, P)}", "", ""
    return [name, "-", "-", "-", weights, gemm, split, tower, f"{r['macs']:,}"]


def _gflop(macs):
    """Two floating-point operations per multiply-add: 724,406,816 -> '1.45 GFLOP'."""
    flops = 2 * macs
    return f"{flops / 1e9:.2f} GFLOP" if flops >= 10**7 else f"{flops:,} FLOP"


def format_summary(s):
    """The text of ``summary`` from ``collect_summary``'s dict."""
    towers = s["towers"]
    lines = [f"{s['model_name']} on one input of shape {tuple(s['input_shape'])}: every number is "
             f"per image ({s['dtype']})", ""]

    # ---- table 1: one row per op --------------------------------------------------------
    header = ["#", "layer", "op", "output"] + (["per tower"] if towers > 1 else []) + [
        "params", "mult-adds", "activation bytes"]
    input_row = ["", "input", "", _dims((1,) + s["input_shape"])] + (
        ["whole image on each"] if towers > 1 else []) + ["", "", f"{s['input_bytes']:,}"]
    body = [input_row]
    for i, r in enumerate(s["rows"], 1):
        out = r["outputs"][0]
        shapes = ", ".join(_dims(o) for o in r["outputs"])
        row = [str(i), r["layer"], r["op"], shapes]
        if towers > 1:
            row.append(_per_tower(out, towers))
        row += [f"{r['params']:,}" if r["params"] else "",
                f"{r['macs']:,}" if r["macs"] else "",
                f"{r['nbytes']:,}" if r["nbytes"] else ""]
        body.append(row)
    n = len(header)
    lines += _table(header, body, right={0, n - 3, n - 2, n - 1})
    if any(r["op"].endswith("*") for r in s["rows"]):
        lines.append("* a layer that ran no op here (dropout is the identity in evaluation mode)")

    # ---- table 2: the GEMMs ---------------------------------------------------------------
    gemms = [r for r in s["rows"] if r["info"].get("kind") in ("conv", "linear", "matmul")]
    if gemms:
        lines += ["", "Convolutions and fully connected layers as matrix products (GEMM), per image:"]
        header = ["layer", "groups", "im2col cols", "col bytes", "weights W", "GEMM (per group)"]
        keep = list(range(6))
        if towers > 1:
            header += ["split over towers", "GEMM on each tower"]
            keep += [6, 7]
        header.append("mult-adds")
        keep.append(8)
        body = [[row[i] for i in keep] for row in (_gemm_row(r, towers) for r in gemms)]
        lines += _table(header, body, right={1, 3, len(header) - 1})
        lines.append("im2col cols: (C/G*KH*KW) x (OH*OW) per group, one column per output position; "
                     "W: one filter per row")
        for r in gemms:  # what the CPU ran instead, where it convolved by Winograd
            info = r["info"]
            if info.get("algorithm") == "winograd":
                EG, Og, Cg, T = info["winograd_gemm"]
                KH, KW = info["kernel"]
                m = info["block"]
                lines.append(f"{r['layer'] or r['op']} ran by Winograd's F({m}x{m}, {KH}x{KW}) here, not by "
                             f"the im2col product above (the convolution as written): {EG} products "
                             f"U {_mat(Og, Cg)} @ V {_mat(Cg, T)} (one per tile entry and group), "
                             f"V {info['tile_bytes']:,} bytes, {info['winograd_macs']:,} multiply-adds")

    # ---- totals ---------------------------------------------------------------------------
    params = f"{s['params']:,}"
    if s["params"] != s["model_params"]:
        params += f" used by this forward (the model holds {s['model_params']:,})"
    lines += [
        "",
        f"parameters        {params}",
        f"multiply-adds     {s['macs']:,} per image forward ({_gflop(s['macs'])}); "
        "a training step (forward + backward) costs about 3x that"
        + (" (the convolutions as written; those that ran by Winograd did fewer, above)"
           if any(r["info"].get("algorithm") == "winograd" for r in s["rows"]) else ""),
        f"activations       {s['activation_bytes']:,} bytes per image (every op's output, input not "
        "included; a training step keeps most of them for backward)",
    ]
    if s["max_col_bytes"]:
        ran = ("; it ran by Winograd here, which builds its tiles instead" if s.get("max_col_winograd")
               else "")
        lines.append(f"largest im2col    {s['max_col_bytes']:,} bytes per image ({s['max_col_layer']}{ran}); "
                     "tinynet builds the columns for a few images at a time (F.set_conv_workspace)")
    return "\n".join(lines)


class Summary(str):
    """The summary table as text.  Its repr is the table itself, so typing
    ``tn.summary(model)`` in a REPL or notebook shows it once, laid out;
    ``print(...)`` and string methods work as on any str."""

    def __repr__(self):
        return str(self)


def summary(model, input_shape=None, towers=None, file=None, show=False):
    """A table of ``model``'s layers for one input of ``input_shape``
    (without the batch axis, e.g. (3, 227, 227); default: the model's
    ``input_shape`` attribute, which AlexNet declares): output shapes,
    per-tower shapes, parameters, multiply-adds, im2col and GEMM shapes,
    activation bytes, and totals.  Returns a ``Summary`` (a str whose repr
    is the table), printing nothing unless asked.

    towers: towers per layer for the per-tower columns (default: the
    model's ``num_towers`` attribute, else 1).  file: a stream to print the
    table to as well; show=True: print it to sys.stdout.
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError(f"summary: {type(model).__name__} declares no input_shape; pass one "
                             "image's shape without the batch axis, e.g. (3, 227, 227)")
    text = Summary(format_summary(collect_summary(model, input_shape, towers)))
    if file is not None or show:
        print(text, file=file if file is not None else sys.stdout)
    return text
