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
    # the legend (115 px wide) stands right of the plot, which runs from x=80 to 400-30-115-12=243
    # and y=30 to 245; the axes 0..200 and 20..80 (ticks) put the ring's centre at (243, 137.5):
    # its outline, 6 px out, is blue; its inside is not
    assert px[243 - 6, 137] == blue or px[243 - 5, 137] == blue
    assert px[243 - 2, 137] != blue
    # and no line runs from the curve's end (161.5, 245) to the ring: the middle of that segment
    assert px[202, 191] != blue


def test_the_legend_hides_no_data(tmp_path):
    """A final score near 100% sits in the plot's top-right corner, where a legend inside the
    plot would stand: the legend stands right of the plot instead."""
    path = line_chart(str(tmp_path / "l.png"), [
        ("accuracy", {"accuracy %": ([0, 100], [10.0, 60.0]),
                      "final accuracy %": ([180], [95.0], "accuracy %")})], width=800, panel_height=300)
    px = Image.open(path).convert("RGB").load()
    blue = (31, 119, 180)
    # the legend is 136 px wide: the plot runs from x=80 to 800-30-136-12=622, y=30 to 245; the
    # axes 0..200 and 0..100 put the ring's centre at (567.8, 40.75), its outline 6 px out
    assert any(px[x, 41] == blue for x in range(559, 565))
    assert px[634 + 60, 30] != (255, 255, 255) and px[622 + 6, 100] == (255, 255, 255)  # the box, outside


def test_long_series_names_do_not_break_the_chart(tmp_path):
    path = line_chart(str(tmp_path / "n.png"), [("p", {"x" * 120: ([0, 1], [0.0, 1.0])})], width=400)
    assert Image.open(path).size == (400, 300)
