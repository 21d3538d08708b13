"""The teaching programs run: examples/im2col_walkthrough.py (all its checks pass) and
examples/visualize_filters.py (the PNGs have the paper's tower layout)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinynet import nn, plot
from tinynet.checkpoint import save_checkpoint

from conftest import load_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_im2col_walkthrough_runs_and_every_check_passes():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "im2col_walkthrough.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MISMATCH" not in result.stdout
    assert result.stdout.count("check: ") >= 10
    assert result.stdout.rstrip().endswith("all checks passed")
    assert "(4, 9)" in result.stdout and "363 x 3025" in result.stdout


@pytest.fixture(scope="module")
def viz():
    return load_example("visualize_filters")


def tile_origin(viz, index, tile_side):
    """Top-left pixel of filter `index` in the grid: 48 per tower, 16 per row (the layout
    constants of tinynet.plot, which draws the grid)."""
    tower, i = divmod(index, 48)
    row, col = divmod(i, plot.TILE_COLUMNS)
    block_h = plot.LABEL_HEIGHT + 3 * (tile_side + plot.GAP) + plot.GAP
    top = plot.LABEL_HEIGHT + tower * block_h + plot.LABEL_HEIGHT + row * (tile_side + plot.GAP)
    return plot.GAP + col * (tile_side + plot.GAP), top


def test_fresh_model(viz, tmp_path):
    filters, maps = viz.main(["--out", str(tmp_path), "--seed", "0"])
    image = Image.open(filters)
    assert image.format == "PNG" and image.mode == "RGB"
    side = 11 * 4
    assert image.size == (16 * (side + 2) + 2, 14 + 2 * (14 + 3 * (side + 2) + 2))
    pixels = np.asarray(image)
    x, y = tile_origin(viz, 0, side)
    assert pixels[y:y + side, x:x + side].std() > 10              # a random filter: noise, not blank
    feature = Image.open(maps)
    assert feature.format == "PNG" and feature.size[0] > 227 + 16 * 57


def test_pictures_never_replace_a_runs_files_or_earlier_pictures(viz, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "conv1_filters.png").write_bytes(b"the run's own picture")
    with pytest.raises(ValueError, match=r"--out .*run already holds config.json, conv1_filters.png; "
                                         r"pictures never replace"):
        viz.main(["--out", str(run)])
    assert (run / "conv1_filters.png").read_bytes() == b"the run's own picture"
    viz.main(["--out", str(tmp_path / "pics")])
    with pytest.raises(ValueError, match="conv1_feature_maps.png, conv1_filters.png"):
        viz.main(["--out", str(tmp_path / "pics")])                # a second time, the same --out
    monkeypatch.chdir(tmp_path)                                    # no --out: a new folder each time
    first, _ = viz.main([])
    second, _ = viz.main([])
    assert first == os.path.join("runs", "filters", "version_0", "conv1_filters.png")
    assert second == os.path.join("runs", "filters", "version_1", "conv1_filters.png")


class Conv1Only(nn.Module):
    """Enough of a model for a checkpoint with AlexNet's conv1 entry."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)


def test_checkpoint_and_image_file(viz, tmp_path):
    model = Conv1Only()
    w = np.zeros((96, 3, 11, 11), np.float32)
    w[0, 0, 0, 0] = 1.0    # filter 0: one red pixel, top-left
    w[48, 2, 10, 10] = 1.0  # filter 48 (tower 1's first): one blue pixel, bottom-right
    model.conv1.weight.data[...] = w
    ckpt = save_checkpoint(str(tmp_path / "best.npz"), model,
                           meta={"config": {"mean": [120.0, 110.0, 100.0], "std": None}})
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo)
    filters, _ = viz.main(["--checkpoint", ckpt, "--image", str(photo), "--out", str(tmp_path / "out"),
                           "--scale", "2"])
    pixels = np.asarray(Image.open(filters))
    x, y = tile_origin(viz, 0, 22)
    assert tuple(pixels[y, x]) == (255, 0, 0) and tuple(pixels[y + 21, x + 21]) == (0, 0, 0)
    x, y = tile_origin(viz, 48, 22)                               # below, in tower 1's block
    assert tuple(pixels[y + 21, x + 21]) == (0, 0, 255) and tuple(pixels[y, x]) == (0, 0, 0)


def test_checkpoint_without_conv1(viz, tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    ckpt = save_checkpoint(str(tmp_path / "other.npz"), model, meta={})
    with pytest.raises(ValueError, match="no conv1.weight"):
        viz.main(["--checkpoint", ckpt, "--out", str(tmp_path)])
