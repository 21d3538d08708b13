"""The training program under a time budget, on each kind of data (the shapes, Fashion-MNIST's
IDX files in a folder, an image folder): it stops training by the budget, keeps time for the
final evaluation of the whole held-out set, and ends near the budget; evaluation options apply
to a resumed --eval-only; the budget learning-rate schedule decays after warm-up.

The bounds on time are loose (the machines are shared): they check the rule, not speed."""

import gzip
import json
import os
import re
import struct
import time

import numpy as np
import pytest

from conftest import image_tree, load_example

PREFIX = "alexnet_train.py: error:"


@pytest.fixture(scope="module")
def prog():
    return load_example("alexnet_train")


def write_idx(path, array, compress):
    """An IDX file (the MNIST format): magic (0, 0, 0x08 = uint8, ndim), big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(data)


def make_idx_folder(root, n_train=40, n_test=20):
    """Fashion-MNIST-shaped IDX files: 28x28 grey images whose brightness says the class."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n, compress in (("train", n_train, True), ("t10k", n_test, False)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28)) + (labels * 20)[:, None, None]
        suffix = ".gz" if compress else ""
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return root


def metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


BUDGET = 60.0
LR = 3e-4  # small: these tiny data sets diverge at larger rates within a minute of steps


@pytest.mark.slow
@pytest.mark.parametrize("data", ["shapes", "idx", "folder"])
def test_a_budgeted_run_stops_in_time_and_scores_the_whole_held_out_set(prog, tmp_path, capsys, data):
    if data == "shapes":
        extra = ["--max-train-images", "40", "--max-val-images", "20"]
    elif data == "idx":
        extra = ["--data", str(make_idx_folder(tmp_path / "idx"))]
    else:
        extra = ["--data", str(image_tree(tmp_path / "imgs", {"train": 6, "val": 3}, ("cat", "dog"),
                                           (64, 80), mark=250, seed=1))]
    out = tmp_path / "run"
    start = time.time()
    result = prog.main(["--preset", "demo", "--batch-size", "2", "--epochs", "1000",
                        "--lr", str(LR), "--lr-schedule", "budget", "--warmup-steps", "2", "--time-budget", str(BUDGET),
                        "--out", str(out),
                        "--cache-dir", str(tmp_path / "cache"), "--quiet", *extra])
    took = time.time() - start
    printed = capsys.readouterr().out
    assert f"time budget of {BUDGET:.0f} s: training stopped" in printed
    entries = metrics(out)
    final = [m for m in entries if m["kind"] == "eval"][-1]
    config = json.load(open(out / "config.json"))
    assert final["images"] == config["val_images"]             # the whole held-out set at the end
    assert final["top1_err"] == result["top1_err"]
    train = [m for m in entries if m["kind"] == "train"]
    assert train and train[-1]["lr"] < LR                       # the budget schedule decayed from --lr
    assert took < BUDGET + 30                                   # ended near the budget, not far after
    # and most of it was spent training (the full-size runs train for 85-89% of theirs; here
    # the start-up and the checkpoints weigh more, and the machine is shared)
    trained = float(re.search(r"training stopped at epoch \d+, step \d+ of \d+ \((\d+) s\)", printed)[1])
    assert trained >= 0.7 * BUDGET, printed
    assert os.path.exists(out / "conv1_filters.png") and os.path.exists(out / "curves.png")


def test_budget_schedule_ends_with_the_epochs_when_they_end_first(prog, tmp_path):
    """A run whose epochs end long before its time budget: the rate still reaches zero at its
    last step, not at the deadline it never gets to (then it would end at almost --lr)."""
    out = tmp_path / "run"
    prog.main(["--preset", "demo", "--batch-size", "2", "--epochs", "3", "--max-train-images", "8",
               "--max-val-images", "4", "--lr", str(LR), "--lr-schedule", "budget", "--warmup-steps", "2",
               "--time-budget", "3600", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    train = [m for m in metrics(out) if m["kind"] == "train"]
    assert train[-1]["step"] == 12                          # 3 epochs of 4 steps
    # the last step (global step 11) is 9 of the 10 steps after warm-up: 1/10 of the rate is left
    assert train[-1]["lr"] == pytest.approx(LR * (1 - 9 / 10))


def test_budget_schedule_needs_a_budget(prog, tmp_path, capsys):
    with pytest.raises(SystemExit):
        prog.main(["--preset", "demo", "--lr-schedule", "budget", "--time-budget", "0",
                   "--out", str(tmp_path / "r"), "--quiet"])
    assert "--lr-schedule budget decays the rate to zero" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluation_options_apply_to_a_resumed_eval_only(prog, tmp_path, capsys):
    data = make_idx_folder(tmp_path / "idx")
    out = tmp_path / "run"
    prog.main(["--preset", "demo", "--data", str(data), "--batch-size", "2", "--epochs", "1",
               "--max-train-images", "4", "--time-budget", "0", "--out", str(out),
               "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    capsys.readouterr()
    result = prog.main(["--resume", str(out / "latest.npz"), "--eval-only", "--ten-crop",
                        "--max-val-images", "10", "--batch-size", "5", "--quiet"])
    printed = capsys.readouterr().out
    assert "on 10 held-out images (ten crops)" in printed and "top1_err" in result
    result = prog.main(["--resume", str(out / "latest.npz"), "--eval-only", "--eval-crops", "2",
                        "--max-val-images", "10", "--quiet"])
    assert "on 10 held-out images (the centre crop and its mirror)" in capsys.readouterr().out
    with pytest.raises(SystemExit):   # two spellings that disagree
        prog.main(["--resume", str(out / "latest.npz"), "--eval-only", "--ten-crop",
                   "--eval-crops", "2", "--quiet"])
    assert "--ten-crop is --eval-crops 10, but --eval-crops 2" in capsys.readouterr().err
    # options that would change the run itself stay refused
    with pytest.raises(SystemExit):
        prog.main(["--resume", str(out / "latest.npz"), "--max-val-images", "10", "--quiet"])
    assert "--max-val-images cannot change" in capsys.readouterr().err


def test_a_subset_score_comes_with_its_standard_error(prog):
    """The final evaluation of a budgeted run may score a subset; its line gives how far that
    score may lie from all the held-out images' (Fashion-MNIST: 932 of 10,000 at 85.4%)."""
    se = prog.subset_standard_error(0.854, 932, 10000)
    assert se == pytest.approx(0.01101, abs=5e-5)        # sqrt(.854*.146/932 * 9068/9999)
    assert prog.subset_standard_error(0.854, 10000, 10000) == 0.0
    assert prog.subset_standard_error(0.5, 100, 10**9) == pytest.approx(0.05, rel=1e-6)


def test_fashion_mnist_is_padded_to_32_unless_told_otherwise(prog, tmp_path, capsys):
    """Fashion-MNIST (here its IDX files in a folder) gets FASHION_MNIST_PAD black pixels per
    side, said and recorded; --pad 0 keeps 28x28; other data refuse --pad; a resumed run of an
    older version (no pad in its config) is read as it was trained, unpadded."""
    data = make_idx_folder(tmp_path / "idx")
    argv = ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    said = []
    cfg = prog.build_config(prog.parse_args(argv))
    train, val = prog.load_data(cfg, str(tmp_path / "cache"), say=said.append)
    assert cfg["pad"] == prog.FASHION_MNIST_PAD == 2
    assert train.images.shape[1:] == (32, 32, 1) and val.images.shape[1:] == (32, 32, 1)
    assert any("padded with 2 black pixel(s) per side to 32x32" in line for line in said)
    cfg = prog.build_config(prog.parse_args(argv + ["--pad", "0"]))
    train, _ = prog.load_data(cfg, str(tmp_path / "cache"), say=said.append)
    assert cfg["pad"] == 0 and train.images.shape[1:] == (28, 28, 1)

    cfg = prog.build_config(prog.parse_args(["--cache-dir", str(tmp_path / "cache"), "--pad", "1"]))
    with pytest.raises(prog.ConfigError, match="--pad 1 applies to Fashion-MNIST's 28x28 images"):
        prog.load_data(cfg, str(tmp_path / "cache"), say=said.append)   # the shapes: refused first
    for pad in ("0", "3"):  # refused before anything is loaded, --pad 0 too
        with pytest.raises(prog.ConfigError, match=f"--pad {pad} applies to Fashion-MNIST's 28x28 images"):
            prog.check_applicable(prog.parse_args(["--pad", pad]))

    older = prog.build_config(prog.parse_args(argv))
    del older["pad"]
    args = prog.parse_args(["--resume", "x.npz", "--eval-only", "--quiet"])
    cfg = prog.Run._resumed_config(args, dict(meta=dict(config=older, epoch=0)))
    assert cfg["pad"] == 0
    with pytest.raises(SystemExit):
        prog.main(["--resume", "x.npz", "--pad", "0", "--quiet"])
    assert "--pad cannot change" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prog.main(argv + ["--pad", "-1"])
    assert "--pad must be pixels in 0..100, got -1" in capsys.readouterr().err
