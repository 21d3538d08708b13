"""Where a training step's time goes, by kind of work.

    with tn.profile() as prof:
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
    print(prof.table())

gives milliseconds per kind: the GEMMs, im2col, col2im, the layout passes
around a convolution's GEMM (transposes, bias), each other op (LRN, max-pool,
ReLU, dropout, linear's GEMMs, the loss), the SGD update, and what is left
(Python glue, allocation, gradient sums).  It answers "how far is this step
from the time of its GEMMs alone, and what is the rest?".

How it measures, without slowing an ordinary run:

* On a GPU an op returns once its kernels are queued, not done: give
  ``tn.profile(sync=...)`` a function that waits for the devices (the
  benchmark passes one that synchronizes every GPU holding the model), and
  it is called before every clock reading, so each op is charged its own
  kernels.  That slows the step a little (no overlap between ops), so take
  the wall time of unprofiled steps from elsewhere.

* Ops are timed through the tracing hooks (``tinynet/tracing.py``): the time
  from one hook call to the next is charged to the op whose hook ends it.
  Forward: an op's forward plus the argument checks before it; backward: an
  op's backward plus the gradient sums before it.
* Inside an op, ``section("gemm")`` blocks (convolution, linear, SGD) time
  their part; that time is moved from the op's line to the section's line,
  so the lines add up to the total and never count anything twice.  With no
  profile running a section costs one ``if``.
"""

import contextlib
import time
from collections import OrderedDict

from . import autograd as _autograd
from .tracing import Tracer

_profiler = None  # the running Profiler, or None


@contextlib.contextmanager
def section(name):
    """Time the block as ``name`` when a profile is running (else nothing)."""
    prof = _profiler
    if prof is None:
        yield
        return
    t0 = prof.clock()
    try:
        yield
    finally:
        prof._add_section(name, prof.clock() - t0)


class Profiler(Tracer):
    """Collects seconds per kind; see the module docstring."""

    def __init__(self, sync=None):
        super().__init__()
        self.sync = sync               # called before every clock reading (None on the CPU)
        self.seconds = OrderedDict()   # kind -> seconds
        self.calls = OrderedDict()     # kind -> count
        self._inside = 0.0             # section time since the last hook, to move out of the op
        self._last = None

    def clock(self):
        """Seconds now, once the work queued so far is done (``sync``)."""
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def _charge(self, kind, seconds):
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def _add_section(self, name, seconds):
        self._charge(name, seconds)
        self._inside += seconds

    def _op_done(self, kind):
        now = self.clock()
        if self._last is not None:
            self._charge(kind, max(now - self._last - self._inside, 0.0))
        self._inside = 0.0
        self._last = now

    def mark(self):
        """Start the clock for the next op now (e.g. after the batch is ready)."""
        self._last, self._inside = self.clock(), 0.0

    def on_forward(self, fn, inputs, outputs):
        self._op_done(f"{type(fn).__name__} forward (rest)")

    def on_backward(self, fn, grad_outputs, grad_inputs):
        self._op_done(f"{type(fn).__name__} backward (rest)")

    def total(self):
        return sum(self.seconds.values())

    def by_kind(self, steps=1):
        """kind -> milliseconds per step, largest first."""
        items = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return OrderedDict((k, 1000.0 * v / steps) for k, v in items)

    def table(self, steps=1, wall_seconds=None):
        """The breakdown as text: ms per step and share of the profiled time;
        with ``wall_seconds`` (the steps' wall time) the unprofiled rest too."""
        rows = self.by_kind(steps)
        total = sum(rows.values())
        w = max([len("profiled total")] + [len(kind) for kind in rows])  # the name column's width
        lines = [f"{'kind':<{w}} {'ms/step':>9} {'share':>6}"]
        for kind, ms in rows.items():
            lines.append(f"{kind:<{w}} {ms:9.1f} {ms / total:6.1%}" if total else f"{kind:<{w}} {ms:9.1f}")
        lines.append(f"{'profiled total':<{w}} {total:9.1f}")
        if wall_seconds is not None:
            lines.append(f"{'wall time':<{w}} {1000.0 * wall_seconds / steps:9.1f}")
        return "\n".join(lines)


@contextlib.contextmanager
def profile(sync=None):
    """``with tn.profile() as prof:`` time every op and section inside.  ``sync``: a
    function that waits for queued device work (see the module docstring)."""
    global _profiler
    if _profiler is not None or _autograd.get_tracer() is not None:
        raise RuntimeError("profile: another profile or trace is already running")
    prof = Profiler(sync)
    previous = _autograd.set_tracer(prof)
    _profiler = prof
    prof.mark()
    try:
        yield prof
    finally:
        _profiler = None
        _autograd.set_tracer(previous)
