"""Charts: round tick values, labels and legend drawn without errors."""

import pytest
from PIL import Image

from tinynet.plot import line_chart, nice_ticks


@pytest.mark.parametrize("lo,hi,expected", [
    (0.13, 0.87, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0, 2017, [0, 1000, 2000, 3000]),
    (1, 500, [0, 200, 400, 600]),
    (0.0123, 0.0456, [0.01, 0.02, 0.03, 0.04, 0.05]),
    (-3, 3, [-4, -2, 0, 2, 4]),
])
def test_ticks_are_one_two_or_five_times_a_power_of_ten(lo, hi, expected):
    ticks = nice_ticks(lo, hi)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= lo and ticks[-1] >= hi


def test_ticks_of_a_single_value_and_bad_limits():
    ticks = nice_ticks(3.2, 3.2)
    assert ticks[0] < 3.2 < ticks[-1]
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0, float("nan"))


def test_line_chart_with_axis_labels(tmp_path):
    path = line_chart(str(tmp_path / "c.png"), [
        ("loss", {"train": ([1, 2, 3, 4], [2.0, 1.0, float("nan"), float("inf")])}, dict(x="step", y="loss (nats)")),
        ("empty", {"val": ([], [])}),
    ])
    assert Image.open(path).size == (800, 600)
