"""tn.profile: the step's time by kind of work, adding up to the whole."""

import time

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet import nn
from tinynet.optim import SGD
from tinynet.profile import section


def test_profile_splits_a_step_into_kinds_that_add_up():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 7, padding=3, rng=rng), nn.ReLU(), nn.MaxPool2d(2),  # im2col (3x3, 5x5: Winograd)
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5, rng=rng))
    opt = SGD(model.parameters(), lr=0.1)
    x = tn.tensor(rng.standard_normal((4, 3, 8, 8)).astype(np.float32), requires_grad=True)  # col2im too
    t0 = time.perf_counter()
    with tn.profile() as prof:
        loss = F.cross_entropy(model(x), np.arange(4) % 5)
        loss.backward()
        opt.step()
    wall = time.perf_counter() - t0
    kinds = prof.by_kind()
    for kind in ("GEMM", "im2col", "col2im", "SGD update", "MaxPool2d forward (rest)",
                 "ReLU backward (rest)", "CrossEntropy forward (rest)"):
        assert kind in kinds, kind
    assert prof.calls["GEMM"] == 1 + 2 + 1 + 1  # conv forward, backward (weights, input); linear forward, backward
    assert 0 < prof.total() <= wall
    table = prof.table(wall_seconds=wall).splitlines()
    assert table[-2].startswith("profiled total") and table[-1].startswith("wall time")
    w = table[0].index("ms/step") - 3  # the name column's width: every row's ms/step right below
    assert all(line[w] == " " and float(line[w + 1:w + 10]) >= 0 for line in table[1:])


def test_sections_cost_nothing_without_a_profile_and_profiles_do_not_nest():
    with section("GEMM"):
        pass  # no profile running: nothing recorded, no error
    with tn.profile():
        with pytest.raises(RuntimeError, match="already running"):
            with tn.profile():
                pass


def test_a_sync_function_is_called_before_every_clock_reading():
    """On a GPU, sync waits for the queued kernels: whatever it waits for is charged to the
    op (or section) whose clock reading waited.  Here it sleeps 2 ms, so every charge holds
    at least one such wait."""
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, rng=rng), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, rng=rng))
    x = tn.tensor(rng.standard_normal((2, 2, 6, 6)).astype(np.float32))
    waits = []

    def sync():
        waits.append(1)
        time.sleep(0.002)

    with tn.profile(sync=sync) as prof:
        F.cross_entropy(model(x), np.array([0, 2])).backward()
    assert len(waits) >= sum(prof.calls.values()) + 1  # every charge ends with a reading; mark() starts
    for kind, seconds in prof.seconds.items():
        assert seconds >= 0.002 * prof.calls[kind], kind
