"""The machinery around a training loop: time budget, budget-following
learning rate, stop on signal."""

import os
import signal

import pytest

from tinynet.training import RateMeter, StopOnSignal, TimeBudget, budget_lr


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_budget_stops_when_one_more_step_would_eat_the_reserve():
    clock = Clock()
    budget = TimeBudget(100, clock=clock)
    steps = 0
    while not budget.should_stop(reserve=20):
        budget.step_started()
        clock.now += 3.0  # a step takes 3 s
        budget.step_done()
        steps += 1
    # 80 s for training at 3 s a step: 26 steps (78 s); a 27th would leave less than 20 s
    assert steps == 26 and budget.elapsed() == 78 and budget.remaining() >= 20
    assert 0.77 < budget.fraction_used() < 0.79


def test_no_budget_never_stops_and_bad_budgets_are_refused():
    budget = TimeBudget(None, clock=Clock())
    assert not budget.should_stop(reserve=1e9) and budget.fraction_used() == 0.0
    for bad in (-5, float("nan"), "10"):
        with pytest.raises(ValueError, match="TimeBudget: seconds"):
            TimeBudget(bad)


def test_rate_meter_predicts_from_measurements():
    meter = RateMeter()
    assert meter.predict(100, default=7.0) == 7.0
    meter.add(2.0, 400)
    meter.add(1.0, 200)
    assert meter.per_unit == pytest.approx(0.005) and meter.predict(1000) == pytest.approx(5.0)


def test_budget_lr_decays_linearly_to_the_floor():
    assert budget_lr(0.1, 0.0) == 0.1
    assert budget_lr(0.1, 0.5) == pytest.approx(0.05)
    assert budget_lr(0.1, 1.0) == 0.0 and budget_lr(0.1, 2.0) == 0.0
    assert budget_lr(0.1, 1.0, floor=0.001) == pytest.approx(0.001)


def test_a_stop_requested_otherwise_is_no_first_ctrl_c():
    """A data-parallel rank told to stop by another rank's signal, then reached by its own
    forwarded Ctrl-C, records the signal instead of stopping at once; its second one stops."""
    with StopOnSignal() as stop:
        stop.request("stop requested on another rank")
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == "SIGINT" and stop.requested == "stop requested on another rank"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopOnSignal() as stop:                # the first signal is the one kept
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == "SIGINT"


def test_stop_on_signal_finishes_the_step_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        stop.request("stop-after-steps")  # the first reason stays
        assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(KeyboardInterrupt):
        with StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: stop now
