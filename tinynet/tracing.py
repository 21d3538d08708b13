"""Tracing: watch every op run, forward and backward.

    import tinynet as tn
    with tn.trace():
        loss = F.cross_entropy(model(x), labels)
        loss.backward()

prints one line per op as the data flows forward, then one per op as the
gradients flow back, with the shapes going in and coming out.  For a
convolution it also prints the im2col matrix, the GEMM and the cost, the
numbers the popular AlexNet articles quote (conv1, one image):

    #1   conv1: Conv2d    (1, 3, 227, 227), conv1.weight (96, 3, 11, 11), conv1.bias (96,) -> (1, 96, 55, 55)
           im2col  x (1, 3, 227, 227) -> cols [363 x 3025]  (rows C*KH*KW = 3*11*11,
                   columns N*OH*OW = 1*55*55; 4.4 MB)
           GEMM    W [96 x 363] @ cols [363 x 3025] -> [96 x 3025] -> y (1, 96, 55, 55)
           cost    105,415,200 multiply-adds (210.8 MFLOP)

and, going back, the two GEMMs of the gradients and the col2im.  Op numbers
(#1) match between the forward and the backward lines; parameters are named
after their modules ("conv1.weight").

How it hooks into the engine (tinynet/autograd.py and tinynet/nn.py):

* ``autograd._tracer`` is a module variable, ``None`` unless a trace (or
  ``tinynet.summary``) is running.  ``Function.apply`` ends with
  ``if _tracer is not None: _tracer.forward(fn, inputs, outputs)`` and
  ``run_backward`` calls ``_tracer.backward(fn, grad_outputs, grad_inputs)``
  after each op's backward.  With tracing off the engine pays one ``if`` per
  op, nothing more.
* ``nn.Module.__call__`` calls ``enter_module`` / ``exit_module`` while a
  tracer is active, so an op can be named after the layer that ran it
  ("conv1"), and a parameter after its attribute ("conv1.weight").
* An op says more about itself through ``Function.describe()``, a dict of
  facts about its last forward: ``Conv2d`` gives its im2col and GEMM shapes,
  ``Linear`` and ``MatMul`` their GEMM, ``MaxPool2d`` its windows,
  ``LocalResponseNorm`` its constants.  The formatting lives here, so the ops
  stay small.

One tracer is active for the whole process (not per thread): trace one
computation at a time.  ``Tracer`` below is the base class;
``tinynet.summary`` uses a silent subclass that collects rows for its table.
"""

import contextlib
import sys

from . import autograd as _autograd

__all__ = ["Tracer", "PrintTracer", "trace", "format_shape", "describe_forward", "describe_backward"]


# ----------------------------------------------------------------------------
# Small formatting helpers
# ----------------------------------------------------------------------------


def format_shape(shape):
    """(1, 96, 55, 55) -> '(1, 96, 55, 55)'; () -> '()'.  Plain ints, no numpy types."""
    return "(" + ", ".join(str(int(v)) for v in shape) + ("," if len(shape) == 1 else "") + ")"


def _mat(rows, cols):
    """A matrix shape the way the articles write it: [363 x 3025]."""
    return f"[{rows} x {cols}]"


def _ops(n):
    return "1 op" if n == 1 else f"{n} ops"


def _megabytes(nbytes):
    """4392300 -> '4.4 MB' (decimal megabytes); small sizes in bytes."""
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes:,} bytes"


def _cost(macs):
    """'105,415,200 multiply-adds (210.8 MFLOP)': one multiply-add is 2 floating-point ops."""
    flops = 2 * macs
    return f"{macs:,} multiply-adds ({flops / 1e6:,.1f} MFLOP)" if flops >= 100_000 else \
        f"{macs:,} multiply-adds ({flops:,} FLOP)"


# ----------------------------------------------------------------------------
# What an op's describe() means, in words (one list of lines per direction)
# ----------------------------------------------------------------------------


def describe_forward(info):
    """Lines explaining an op's forward from its ``describe()`` dict
    (empty for ops that describe nothing)."""
    kind = info.get("kind")
    if kind == "conv" and info.get("algorithm") == "winograd":
        return _winograd_forward(info)
    if kind == "conv":
        N, C, H, W = info["input"]
        KH, KW = info["kernel"]
        _, O, OH, OW = info["output"]
        G, Og, K, P = info["gemm"]
        rows = C * KH * KW
        cols = f"cols {_mat(rows, P)}" + (f" = {G} groups x {_mat(K, P)}" if G > 1 else "")
        lines = [
            f"im2col  x {format_shape(info['input'])} -> {cols}  (rows C*KH*KW = {C}*{KH}*{KW}, "
            f"columns N*OH*OW = {N}*{OH}*{OW}; {_megabytes(info['col_bytes'])})",
        ]
        product = f"W {_mat(Og, K)} @ cols {_mat(K, P)} -> {_mat(Og, P)}"
        if G > 1:
            lines.append(f"GEMM    {G} groups, each: {product}; together {_mat(O, P)} "
                         f"-> y {format_shape(info['output'])}")
        else:
            lines.append(f"GEMM    {product} -> y {format_shape(info['output'])}")
        if info.get("relu"):
            lines.append("ReLU    max(y, 0), in the pass that writes y (F.conv2d(relu=True))")
        lines.append(f"cost    {_cost(info['macs'])}")
        return lines
    if kind == "linear":
        _, N, fan_in, fan_out = info["gemm"]
        return [f"GEMM    x {_mat(N, fan_in)} @ W^T {_mat(fan_in, fan_out)} -> {_mat(N, fan_out)}"
                f"  (W = weight {format_shape(info['weight_matrix'])})",
                f"cost    {_cost(info['macs'])}"]
    if kind == "matmul":
        _, M, K, P = info["gemm"]
        return [f"GEMM    a {_mat(M, K)} @ b {_mat(K, P)} -> {_mat(M, P)}",
                f"cost    {_cost(info['macs'])}"]
    if kind == "pool":
        (kh, kw), (sh, sw) = info["kernel"], info["stride"]
        overlap = "overlapping: neighbouring windows share pixels" if info["overlapping"] else "no overlap"
        return [f"windows {kh}x{kw}, stride {sh}x{sw} ({overlap})"]
    if kind == "lrn":
        groups = f", {info['groups']} groups normalised apart" if info["groups"] > 1 else ""
        return [f"LRN     {info['size']} channels, k={info['k']:g}, alpha={info['alpha']:g} x sum of "
                f"squares (paper convention), beta={info['beta']:g}{groups}"]
    return []


def _winograd_forward(info):
    """A 3x3 or 5x5, stride-1 convolution the CPU ran by Winograd's F(2x2, 3x3) or F(4x4, 5x5)
    (ops/conv.py)."""
    N, C, _, _ = info["input"]
    _, O, OH, OW = info["output"]
    EG, Og, Cg, T = info["winograd_gemm"]
    m, a = info["block"], info["side"]  # the sides of the output block a tile makes and of the tile
    E = a * a  # its entries, one product per entry and group
    th, tw = info["tiles"]
    groups = f"{EG // E} groups x " if EG > E else ""
    lines = [f"tiles   x {format_shape(info['input'])} -> V {_mat(E * C, T)}  (B^T d B of every {a}x{a} input "
             f"tile: {E} rows per channel, a column per {m}x{m} output block, N*TH*TW = {N}*{th}*{tw}; "
             f"{_megabytes(info['tile_bytes'])})",
             f"GEMM    {E} tile entries x {groups}U {_mat(Og, Cg)} @ V {_mat(Cg, T)} -> {_mat(Og, T)}"
             f"  (U = G g G^T of the filters)",
             f"tiles   A^T M A of every tile -> y {format_shape(info['output'])}" +
             (", then max(y, 0) in the same pass" if info.get("relu") else "")]
    lines.append(f"cost    {_cost(info['winograd_macs'])}; im2col's product: {_cost(info['macs'])}")
    return lines


def _winograd_backward(info, need):
    """Backward of a Winograd convolution: the same maps transposed."""
    _, Og, Cg, T = info["winograd_gemm"]
    m, E = info["block"], info["side"] ** 2  # the output block's side, a tile's entries
    lines = [f"tiles   Z = A gY A^T of every {m}x{m} output block -> Z {_mat(E * info['output'][1], T)}"]
    if len(need) > 1 and need[1]:
        lines.append(f"GEMM    grad U = Z {_mat(Og, T)} @ V^T {_mat(T, Cg)} per tile entry; grad W = G^T (grad U) G")
    if need and need[0]:
        lines.append(f"GEMM    grad V = U^T {_mat(Cg, Og)} @ Z {_mat(Og, T)} per tile entry")
        lines.append(f"tiles   B (grad V) B^T of every tile, added back onto its pixels -> grad x "
                     f"{format_shape(info['input'])}")
    if len(need) > 2 and need[2]:
        lines.append(f"sum     grad bias = the sum of every block's Z entry (1, 1), its {m * m} gradients' sum")
    products = int(bool(need and need[0])) + int(len(need) > 1 and bool(need[1]))
    lines.append(f"cost    {_cost(info['winograd_macs'] * products)}; im2col's products: "
                 f"{_cost(info['macs'] * products)}")
    return lines


def describe_backward(info):
    """Lines explaining an op's backward (the GEMMs that give its input
    gradients) from its ``describe()`` dict."""
    kind = info.get("kind")
    need = info.get("needs_input_grad", ())
    if kind == "conv" and info.get("algorithm") == "winograd":
        return _winograd_backward(info, need)
    if kind == "conv":
        G, Og, K, P = info["gemm"]
        each = f"{G} groups, each: " if G > 1 else ""
        lines, macs = [], 0
        if len(need) > 1 and need[1]:
            where = ("columns kept from the forward" if info.get("columns_kept")
                     else "columns rebuilt by im2col, too big to keep from the forward")
            lines.append(f"GEMM    grad W = {each}gY {_mat(Og, P)} @ cols^T {_mat(P, K)} -> {_mat(Og, K)}"
                         f"  ({where})")
            macs += info["macs"]
        if need and need[0]:
            lines.append(f"GEMM    grad cols = {each}W^T {_mat(K, Og)} @ gY {_mat(Og, P)} -> {_mat(K, P)}")
            lines.append(f"col2im  grad cols {_mat(G * K, P)} -> grad x {format_shape(info['input'])}"
                         "  (a pixel in several windows receives the sum of their gradients)")
            macs += info["macs"]
        elif need:
            lines.append("        (no grad x: the input needs none, so no grad cols and no col2im)")
        if len(need) > 2 and need[2]:
            lines.append("sum     grad bias = gY summed over images and positions")
        lines.append(f"cost    {_cost(macs)}")
        return lines
    if kind == "linear":
        _, N, fan_in, fan_out = info["gemm"]
        lines, macs = [], 0
        if need and need[0]:
            lines.append(f"GEMM    grad x = gY {_mat(N, fan_out)} @ W {_mat(fan_out, fan_in)} -> {_mat(N, fan_in)}")
            macs += info["macs"]
        if len(need) > 1 and need[1]:
            lines.append(f"GEMM    grad W = gY^T {_mat(fan_out, N)} @ x {_mat(N, fan_in)} -> {_mat(fan_out, fan_in)}")
            macs += info["macs"]
        lines.append(f"cost    {_cost(macs)}")
        return lines
    if kind == "matmul":
        _, M, K, P = info["gemm"]
        lines, macs = [], 0
        if need and need[0]:
            lines.append(f"GEMM    grad a = g {_mat(M, P)} @ b^T {_mat(P, K)} -> {_mat(M, K)}")
            macs += info["macs"]
        if len(need) > 1 and need[1]:
            lines.append(f"GEMM    grad b = a^T {_mat(K, M)} @ g {_mat(M, P)} -> {_mat(K, P)}")
            macs += info["macs"]
        lines.append(f"cost    {_cost(macs)}")
        return lines
    if kind == "pool":
        extra = "; where windows overlap, a pixel's gradients add" if info["overlapping"] else ""
        return ["each window's gradient goes to the position of its maximum (the first one on ties)" + extra]
    return []


def backward_macs(info):
    """Multiply-adds of an op's backward: one GEMM as big as the forward's
    for each input gradient computed (x and W; the bias costs no GEMM)."""
    need = info.get("needs_input_grad", ())
    if info.get("kind") not in ("conv", "linear", "matmul"):
        return 0
    return info["macs"] * sum(1 for flag in need[:2] if flag)


# ----------------------------------------------------------------------------
# The tracers
# ----------------------------------------------------------------------------


class Tracer:
    """Base class of tracers: follows which module is running and numbers
    the ops; prints nothing.  Subclasses override ``on_forward`` and
    ``on_backward``.

    The engine calls (see the module docstring):
        enter_module(module) / exit_module(module, output)   from nn.Module.__call__
        forward(fn, inputs, outputs)                         from Function.apply
        backward(fn, grad_outputs, grad_inputs)              from run_backward
    ``inputs``/``outputs`` are Tensors; ``grad_outputs``/``grad_inputs`` are
    arrays (``None`` for an input that needs no gradient).
    """

    def __init__(self):
        self.module_stack = []   # the modules whose forward is running, outermost first
        self.module_names = {}   # id(module) -> dotted name, "" for the outermost model
        self.param_names = {}    # id(parameter) -> dotted name such as "conv1.weight"
        self.op_count = 0

    # ---- modules ----------------------------------------------------------------
    def enter_module(self, module):
        if not self.module_stack and id(module) not in self.module_names:
            # the outermost module: learn the names of everything inside it
            for name, m in module.named_modules():
                self.module_names.setdefault(id(m), name)
            for name, p in module.named_parameters():
                self.param_names.setdefault(id(p), name)
        self.module_stack.append(module)

    def exit_module(self, module, output):
        if self.module_stack:  # empty if the trace began inside this module's forward
            self.module_stack.pop()

    def current_module(self):
        """Dotted name of the innermost running module: 'conv1', 'tower0.fc6';
        '' when the op runs in the outermost model's own forward or outside
        any module."""
        if not self.module_stack:
            return ""
        module = self.module_stack[-1]
        return self.module_names.get(id(module), type(module).__name__)

    # ---- ops ----------------------------------------------------------------------
    def forward(self, fn, inputs, outputs):
        self.op_count += 1
        fn.trace_index = self.op_count          # so that backward can say "#12"
        fn.trace_module = self.current_module()
        self.on_forward(fn, inputs, outputs)

    def backward(self, fn, grad_outputs, grad_inputs):
        self.on_backward(fn, grad_outputs, grad_inputs)

    def on_forward(self, fn, inputs, outputs):
        pass

    def on_backward(self, fn, grad_outputs, grad_inputs):
        pass

    def finish(self):
        """Called once when the trace ends."""


class PrintTracer(Tracer):
    """Prints each op as it runs (what ``tinynet.trace()`` installs).

    file: where to print (default: sys.stdout at the time of printing).
    details: also print the lines of ``describe_forward``/``describe_backward``
    (im2col, GEMM, cost, pooling windows).
    """

    def __init__(self, file=None, details=True):
        super().__init__()
        self.file, self.details = file, details
        self.phase = None
        self.forward_ops = self.backward_ops = 0
        self.forward_macs = self.backward_macs = 0
        self.saw_winograd = False  # a convolution ran by Winograd: the totals count it as written

    def _print(self, text):
        print(text, file=self.file if self.file is not None else sys.stdout)

    def _label(self, fn):
        index = getattr(fn, "trace_index", None)  # None: the op ran before the trace began
        module = getattr(fn, "trace_module", "")
        name = type(fn).__name__
        head = f"#{index}" if index is not None else "#?"
        return f"{head:<5}{(module + ': ' + name) if module else name:<28}"

    def _input_name(self, tensor):
        name = self.param_names.get(id(tensor))
        return f"{name} {format_shape(tensor.shape)}" if name else format_shape(tensor.shape)

    def _switch_phase(self, phase):
        if self.phase != phase:
            order = "oldest op first" if phase == "forward" else "newest op first, gradients flow back"
            self._print(f"-- tinynet.trace: {phase} ({order}) --")
            self.phase = phase

    def on_forward(self, fn, inputs, outputs):
        self._switch_phase("forward")
        info = fn.describe()
        self.forward_ops += 1
        self.forward_macs += info.get("macs", 0)
        self.saw_winograd = self.saw_winograd or info.get("algorithm") == "winograd"
        ins = ", ".join(self._input_name(t) for t in inputs)
        outs = ", ".join(format_shape(t.shape) for t in outputs)
        self._print(f"{self._label(fn)} {ins} -> {outs}")
        if self.details:
            for line in describe_forward(info):
                self._print("       " + line)

    def on_backward(self, fn, grad_outputs, grad_inputs):
        self._switch_phase("backward")
        info = fn.describe()
        self.backward_ops += 1
        self.backward_macs += backward_macs(info)
        gout = ", ".join(format_shape(g.shape) for g in grad_outputs)
        # name the gradients of parameters ("conv1.weight (96, 3, 11, 11)"); "-" for an
        # input that needs no gradient (the image, the labels)
        inputs = fn.inputs if fn.inputs is not None else [None] * len(grad_inputs)
        gin = ", ".join("-" if g is None else
                        (self.param_names[id(t)] + " " if id(t) in self.param_names else "")
                        + format_shape(g.shape)
                        for t, g in zip(inputs, grad_inputs))
        self._print(f"{self._label(fn)} grad out {gout} -> grad in {gin}")
        if self.details:
            for line in describe_backward(info):
                self._print("       " + line)

    def finish(self):
        line = f"-- tinynet.trace: {_ops(self.forward_ops)} forward, {self.forward_macs:,} multiply-adds"
        if self.backward_ops:
            line += f"; {_ops(self.backward_ops)} backward, {self.backward_macs:,} multiply-adds"
        if self.saw_winograd:  # what a learner adds up from the cost lines is less: say why
            line += (" (the convolutions as written, by im2col; those that ran by Winograd did "
                     "fewer, as their cost lines say)")
        self._print(line + " --")


@contextlib.contextmanager
def trace(file=None, details=True):
    """Print every op that runs inside the ``with`` block, forward and
    backward, with its shapes (and for convolutions the im2col and GEMM
    shapes and cost).

        with tn.trace():
            loss = F.cross_entropy(model(x), labels)
            loss.backward()

    file: a text stream to print to (default sys.stdout).  details=False
    prints one line per op only.  Yields the ``PrintTracer``, whose
    ``forward_macs`` / ``backward_macs`` count the multiply-adds seen.
    Tracing slows nothing down when it is off; while it is on, every op
    prints, so trace one step, not a training run.
    """
    tracer = PrintTracer(file, details)
    previous = _autograd.set_tracer(tracer)
    try:
        yield tracer
    finally:
        _autograd.set_tracer(previous)
        tracer.finish()
