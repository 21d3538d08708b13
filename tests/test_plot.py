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


def test_a_series_like_another_is_drawn_as_rings_in_its_colour(tmp_path):
    """A final score beside its curve: rings, not joined to the curve, in the curve's colour."""
    path = line_chart(str(tmp_path / "r.png"), [
        ("held-out", {"error %": ([0, 100], [80.0, 20.0]),
                      "final error %": ([200], [50.0], "error %")})], width=400, panel_height=300)
    px = Image.open(path).convert("RGB").load()
    blue = (31, 119, 180)
    # the axis runs 0..200 and 20..80 (ticks), the plot from x=80 to 370 and y=30 to 245:
    # the ring's centre is (370, 137.5); its outline, 6 px out, is blue; its inside is not
    assert px[370 - 6, 137] == blue or px[370 - 5, 137] == blue
    assert px[370 - 2, 137] != blue
    # and no line runs from the curve's end (225, 30) to the ring: the middle of that segment
    assert px[297, 84] != blue
