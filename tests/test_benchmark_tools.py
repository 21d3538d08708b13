"""The benchmarks' own measuring tools: how a profiled step's fused update is split, and how
the load of the shared machine (the hypervisor's steal) is read."""

import pytest

from benchmarks.alexnet import FUSED, profile_groups, steal_lines
from benchmarks.common import cpu_times, steal_share


def test_the_benchmark_splits_the_fused_update_by_the_share_measured_in_turn():
    """benchmarks/alexnet.py's breakdown: the fully connected layers' fused weight gradient +
    update goes to GEMM in the part its products take (the ratio the worker measured in turn),
    the rest to the SGD update; every millisecond lands in one group."""
    profile = {"GEMM": 100.0, FUSED: 40.0, "LocalResponseNorm backward (rest)": 5.0, "glue": 1.0}
    groups = profile_groups(profile, {"share": 0.75, "min": 0.5, "max": 0.9})
    assert groups["GEMM"] == pytest.approx(130.0) and groups["SGD update"] == pytest.approx(10.0)
    assert groups["LRN"] == 5.0 and groups["other (glue, allocation)"] == 1.0
    assert sum(groups.values()) == pytest.approx(sum(profile.values()))
    # a share above 1 (the products alone slower in a noisy minute) gives the SGD nothing, not less
    assert profile_groups(profile, {"share": 1.2})["SGD update"] == 0.0
    assert profile_groups(profile)["SGD update"] == pytest.approx(40.0)  # nothing measured: all of it


def test_steal_is_the_stolen_share_of_the_time_between_two_readings():
    assert steal_share({"total": 1000, "steal": 100}, {"total": 1400, "steal": 200}) == pytest.approx(0.25)
    assert steal_share({"total": 1000, "steal": 100}, {"total": 1000, "steal": 100}) is None  # no time passed
    assert steal_share(None, {"total": 1, "steal": 0}) is None
    now = cpu_times()
    if now is not None:  # Linux: ticks that only grow, steal among them
        assert 0 <= now["steal"] <= now["total"]
        later = cpu_times()
        assert later["total"] >= now["total"] and later["steal"] >= now["steal"]


def test_a_busy_row_is_said_so():
    rows = [{"batch": 8, "mode": "train", "tinynet": {"round_steal": [0.01, 0.2]}, "torch": {"round_steal": [0.0]}},
            {"batch": 32, "mode": "train", "tinynet": {"round_steal": [0.02, None]}}]
    text = " ".join(steal_lines(rows, 0.05))
    assert "5% over the run" in text
    assert "batch 8 train 20% (busy)" in text and "batch 32 train 2%" in text and "batch 32 train 2% (busy)" not in text
    assert steal_lines(rows, None) == []  # not Linux: nothing claimed


def test_save_says_how_much_was_stolen_over_the_run(tmp_path, monkeypatch):
    import json

    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    monkeypatch.setattr(common, "RUN_STARTED", {"total": 1000, "steal": 100})
    monkeypatch.setattr(common, "cpu_times", lambda: {"total": 2000, "steal": 300})
    common.save("run", {"machine": {}}, "# table\n")
    assert json.loads((tmp_path / "run.json").read_text())["machine"]["steal"] == pytest.approx(0.2)
    assert "Steal over the run" in (tmp_path / "run.md").read_text() and "20%" in (tmp_path / "run.md").read_text()
    # a script that said it already (alexnet.py, row by row) is not repeated
    common.save("again", {"machine": {"steal": 0.1}}, "# t\n")
    assert "Steal" not in (tmp_path / "again.md").read_text()
