"""Machinery a training loop needs around the four lines that learn.

The loop itself (forward, loss, backward, update) belongs in the program
that trains; these are the parts that are the same for every program and
easy to get subtly wrong:

* ``TimeBudget``: a run with a wall-clock budget that ends on time *and*
  spends the time learning.  It measures what things cost (a training step,
  evaluating one image) instead of guessing, and reserves exactly the time
  the work after training needs (the final evaluation, a checkpoint).
* ``budget_lr``: a learning rate that follows the budget, decaying linearly
  to zero at the deadline.  When a run is cut by time rather than by epochs,
  a schedule that knows where it ends beats a step schedule that never gets
  to fire (Li, Yumer and Ramanan, "Budgeted Training", ICLR 2020).
* ``StopOnSignal``: Ctrl-C or SIGTERM asks the loop to stop at the end of
  the current step (so it can save a checkpoint), instead of killing it
  mid-update.
"""

import math
import signal
import time


class RateMeter:
    """Seconds per unit of work (a training step, an evaluated image), as a
    running mean of measurements: ``add(seconds, units)``; ``per_unit`` is
    None until something was measured."""

    def __init__(self):
        self.seconds, self.units = 0.0, 0

    def add(self, seconds, units=1):
        if units > 0 and seconds >= 0:
            self.seconds += seconds
            self.units += units

    @property
    def per_unit(self):
        return self.seconds / self.units if self.units else None

    def predict(self, units, default=None):
        """Seconds for ``units`` more units (``default`` until measured)."""
        return default if self.per_unit is None else self.per_unit * units


class TimeBudget:
    """A wall-clock budget of ``seconds`` from ``start`` (default: now).

    The training loop asks ``should_stop(reserve)`` after every step: True
    when one more step (its measured duration: ``step_done`` records each)
    would no longer leave ``reserve`` seconds for what must follow (the
    final evaluation, the last checkpoint).  ``seconds=None`` or 0: no
    budget (never stops).  ``clock`` is injectable for tests.
    """

    def __init__(self, seconds, start=None, clock=time.monotonic):
        if seconds is not None and (not isinstance(seconds, (int, float)) or not math.isfinite(seconds)
                                    or seconds < 0):
            raise ValueError(f"TimeBudget: seconds must be a finite number >= 0 or None, got {seconds!r}")
        self.clock = clock
        self.seconds = float(seconds) if seconds else None
        self.start = clock() if start is None else start
        self.steps = RateMeter()
        self._last = None

    @property
    def deadline(self):
        return None if self.seconds is None else self.start + self.seconds

    def elapsed(self):
        return self.clock() - self.start

    def remaining(self):
        return math.inf if self.seconds is None else self.deadline - self.clock()

    def fraction_used(self):
        """0 at the start, 1 at the deadline (0 without a budget)."""
        return 0.0 if self.seconds is None else min(max(self.elapsed() / self.seconds, 0.0), 1.0)

    def step_started(self):
        self._last = self.clock()

    def step_done(self):
        if self._last is not None:
            self.steps.add(self.clock() - self._last)
            self._last = None

    def should_stop(self, reserve=0.0):
        """True when the time left is less than one more step plus ``reserve``."""
        if self.seconds is None:
            return False
        step = self.steps.per_unit or 0.0
        return self.remaining() < step + reserve


def budget_lr(base_lr, fraction, floor=0.0):
    """The learning rate at ``fraction`` (0..1) of a time budget: linear
    decay from ``base_lr`` to ``floor`` at the deadline."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    return floor + (base_lr - floor) * (1.0 - fraction)


class StopOnSignal:
    """``with StopOnSignal() as stop:`` ... ``if stop.requested: break``.

    SIGINT (Ctrl-C) and SIGTERM set ``stop.requested`` to the signal's name
    instead of raising in the middle of an update, so the loop can finish
    the step and save; ``stop.signal`` keeps the first signal this process
    received (its name), and a Ctrl-C after it raises KeyboardInterrupt as
    usual.  The previous handlers come back on exit.  ``request(reason)``
    stops for another reason (a step limit, another rank's signal); a stop
    so requested is no first Ctrl-C: the process's own Ctrl-C after it only
    records its signal."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = None
        self.signal = None
        self._previous = {}

    def request(self, reason):
        self.requested = self.requested or reason

    def _handle(self, signum, _frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # this process asked twice: stop now
        self.signal = self.signal or signal.Signals(signum).name   # the first one is kept
        self.request(self.signal)

    def __enter__(self):
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False
