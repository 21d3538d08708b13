"""End-to-end runs of examples/alexnet_train.py, called in-process through its main(argv).

The network is always the full AlexNet (61M parameters; ~0.1-0.4 s per image forward and backward
on 2 CPU cores), so the runs use a handful of images: 4 training and 4 validation images of the
demo preset's shapes set, batch 2 (two steps per epoch). The shapes set is generated once per
module into a shared cache.
"""

import json
import os
import signal
import sys

import numpy as np
import pytest
from PIL import Image

from tinynet import runs
from tinynet.checkpoint import load_checkpoint, save_checkpoint

from conftest import load_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "alexnet_train.py: error:"


@pytest.fixture(scope="module")
def prog():
    """examples/alexnet_train.py as a module."""
    return load_example("alexnet_train")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def tiny_args(out, cache_dir, *extra):
    return ["--preset", "demo", "--max-train-images", "4", "--max-val-images", "4",
            "--batch-size", "2", "--out", str(out), "--cache-dir", cache_dir, "--quiet", *extra]


def test_the_final_evaluation_is_drawn_apart_from_the_interim_curves(prog):
    """The evaluations during training score a fixed subset; the final one scores more images,
    so it is a series of its own (rings in its curve's colour), never the curve's last point."""
    metrics = [dict(kind="train", step=10, loss=2.0), dict(kind="train", step=20, loss=1.0),
               dict(kind="eval", step=10, images=500, top1_err=0.5, top5_err=0.2),
               dict(kind="eval", step=20, images=500, top1_err=0.4, top5_err=0.1),
               dict(kind="eval", step=20, images=1000, final=True, top1_err=0.3, top5_err=0.05)]
    loss, held_out = prog.curve_panels(metrics)
    assert loss[1]["train loss"] == ([10, 20], [2.0, 1.0])
    assert held_out[0] == "held-out images (during training: 500 images; final: 1,000 images)"
    curves = held_out[1]
    assert curves["top-1 error %"] == ([10, 20], [50.0, 40.0])
    assert curves["final top-1 error %"] == ([20], [30.0], "top-1 error %")
    assert curves["final top-1 accuracy %"] == ([20], [70.0], "top-1 accuracy %")
    assert curves["final top-5 error %"] == ([20], [5.0], "top-5 error %")
    assert prog.curve_panels(metrics[2:]) == []                 # nothing trained yet: no picture


def test_the_held_out_loss_averages_the_crops_softmax_and_is_never_clipped(prog):
    """log of the crops' mean softmax, from log-softmaxes: the same as averaging the softmax
    where float32 holds the probabilities, and exact where it would round one to zero (a
    confident mistake's loss of 200 nats, where a clip at 1e-12 said 27.6)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 10, 13)) * 4
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    expected = np.log((e / e.sum(axis=2, keepdims=True)).mean(axis=1))
    assert np.allclose(prog.log_mean_softmax(logits), expected, rtol=0, atol=1e-12)
    confident = np.array([[[0.0, 200.0, 0.0]], [[0.0, 200.0, 0.0]]]).reshape(1, 2, 3)
    assert np.allclose(prog.log_mean_softmax(confident), [[-200.0, 0.0, -200.0]])


def read_metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_error(prog, capsys, argv):
    """Run main(argv), expecting the one-line error and exit code 2; return the message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        prog.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    return lines[0]


@pytest.fixture(scope="module")
def run_a(prog, cache_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run (2 steps per epoch)."""
    out = tmp_path_factory.mktemp("run_a")
    result = prog.main(tiny_args(out, cache_dir, "--epochs", "2"))
    return str(out), result


# ------------------------------------------------------------------------------------------
# A complete run and what it leaves behind
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_run_writes_its_files(run_a):
    out, result = run_a
    assert set(result) == {"top1_err", "top5_err", "loss"}
    assert 0 <= result["top1_err"] <= 1 and 0 <= result["top5_err"] <= result["top1_err"]
    assert np.isfinite(result["loss"])

    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["preset"] == "demo"
    assert "REDUCED" in cfg["note"]
    assert (cfg["batch_size"], cfg["epochs"]) == (2, 2)
    assert (cfg["max_train_images"], cfg["max_val_images"]) == (4, 4)
    assert (cfg["train_images"], cfg["val_images"]) == (4, 4)
    assert cfg["bias_init"] == "zero" and cfg["init"] == "he"
    assert len(cfg["classes"]) == 10

    metrics = read_metrics(out)
    train = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [m["epoch"] for m in train] == [0, 1]
    assert [m["step"] for m in train] == [2, 4]          # logged at the end of each epoch
    assert all(np.isfinite(m["loss"]) and m["lr"] > 0 for m in train)
    assert [m["epoch"] for m in evals] == [0, 1]
    assert evals[-1]["top1_err"] == result["top1_err"]

    png = os.path.join(out, "curves.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100

    latest = load_checkpoint(os.path.join(out, "latest.npz"))
    best = load_checkpoint(os.path.join(out, "best.npz"))
    assert (latest["meta"]["epoch"], latest["meta"]["step"], latest["meta"]["global_step"]) == (2, 0, 4)
    assert latest["meta"]["config"]["preset"] == "demo"
    assert latest["model"]["fc8.weight"].shape == (10, 4096)
    assert len(latest["velocity"]) == len(latest["model"]) == 16
    assert best["meta"]["best_err"] == min(m["top1_err"] for m in evals)
    # no temporary files left in the run folder
    assert sorted(os.listdir(out)) == ["best.npz", "config.json", "conv1_filters.png", "curves.png",
                                       "latest.npz", "metrics.jsonl"]


def test_a_signal_saves_and_exits_with_the_shells_status_for_it(prog, cache_dir, tmp_path, monkeypatch,
                                                                  capsys):
    """SIGTERM during a step: the step finishes, latest.npz is saved, and the process exits with
    status 143 (128 + 15), so that a scheduler or script sees a run that did not finish."""
    step_done = prog.Run.step_done

    def signalled(self, value, stop):
        os.kill(os.getpid(), signal.SIGTERM)   # arrives inside the loop, as from `kill`
        return step_done(self, value, stop)

    monkeypatch.setattr(prog.Run, "step_done", signalled)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        prog.main(tiny_args(out, cache_dir, "--epochs", "2"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "SIGTERM: saved" in capsys.readouterr().out
    assert load_checkpoint(str(out / "latest.npz"))["meta"]["global_step"] == 1


def test_a_signal_during_the_final_evaluation_lets_the_run_finish(prog, cache_dir, tmp_path, monkeypatch,
                                                                  capsys):
    """Training is over: a SIGTERM then is recorded and the final evaluation finishes (it takes
    seconds); the run ends complete, and says so."""
    finish = prog.Run.finish

    def signalled(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return finish(self)

    monkeypatch.setattr(prog.Run, "finish", signalled)
    result = prog.main(tiny_args(tmp_path / "run", cache_dir, "--epochs", "1"))
    assert "top1_err" in result
    assert "SIGTERM came after training ended: the run finished its final evaluation" in capsys.readouterr().out


def test_weights_gone_infinite_never_replace_the_last_good_checkpoint(prog, cache_dir, tmp_path,
                                                                     monkeypatch, capsys):
    """An update can make a weight or its momentum infinite after a finite loss; a stop right
    then (Ctrl-C, here --stop-after-steps) must not write those weights over latest.npz."""
    out = tmp_path / "run"
    prog.main(tiny_args(out, cache_dir, "--epochs", "2", "--stop-after-steps", "1"))
    latest = out / "latest.npz"
    good = latest.read_bytes()
    step_done = prog.Run.step_done

    def diverged(self, value, stop):
        dict(self.model.named_parameters())["fc7.weight"].data[0, 0] = np.inf
        return step_done(self, value, stop)

    monkeypatch.setattr(prog.Run, "step_done", diverged)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        prog.main(["--resume", str(latest), "--stop-after-steps", "1", "--cache-dir", cache_dir, "--quiet"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert PREFIX in err and "fc7.weight holds NaN or infinite values, so latest.npz was not written" in err
    assert f"the last good checkpoint is {latest}" in err
    assert latest.read_bytes() == good


def test_a_resumed_run_keeps_the_crops_its_scores_were_made_by(prog, cache_dir, tmp_path, capsys):
    """best.npz and the plateau schedule compare a run's scores: a resumed run scoring by other
    crops would compare scores made two ways, so it is refused (--eval-only may score so)."""
    out = tmp_path / "run"
    prog.main(tiny_args(out, cache_dir, "--epochs", "1", "--max-train-images", "5"))
    assert {m["crops"] for m in read_metrics(out) if m["kind"] == "eval"} == {1}
    # (whole batches only, said: 5 images in batches of 2)
    assert ("each epoch trains on 2 whole batches of 2: the last 1 training image(s) of its "
            "shuffled order (others each epoch) are left out of it") in capsys.readouterr().out
    msg = run_error(prog, capsys, ["--resume", str(out / "latest.npz"), "--epochs", "2",
                                   "--eval-crops", "2", "--cache-dir", cache_dir, "--quiet"])
    assert "the run scores its held-out images by the centre crop" in msg
    assert "--resume CHECKPOINT --eval-only --eval-crops 2" in msg


@pytest.mark.slow
def test_resume_is_exact(prog, run_a, cache_dir, tmp_path, capsys):
    """Run B stops after 1 step (mid epoch 0) and is resumed to the end: same weights as run A."""
    out_a, _ = run_a
    out_b = tmp_path / "run_b"
    assert prog.main(tiny_args(out_b, cache_dir, "--epochs", "2", "--stop-after-steps", "1")) is None
    assert "stop-after-steps: saved" in capsys.readouterr().out
    assert sorted(os.listdir(out_b)) == ["config.json", "latest.npz", "metrics.jsonl"]
    stopped = load_checkpoint(str(out_b / "latest.npz"))
    assert (stopped["meta"]["epoch"], stopped["meta"]["step"], stopped["meta"]["global_step"]) == (0, 1, 1)
    # the interrupted state really differs from the end state (else the comparison proves nothing)
    final_a = load_checkpoint(os.path.join(out_a, "latest.npz"))
    assert not np.array_equal(stopped["model"]["fc8.weight"], final_a["model"]["fc8.weight"])

    prog.main(["--resume", str(out_b / "latest.npz"), "--out", str(out_b),
               "--cache-dir", cache_dir, "--quiet"])
    assert "resumed from" in capsys.readouterr().out
    final_b = load_checkpoint(str(out_b / "latest.npz"))

    assert list(final_b["model"]) == list(final_a["model"])
    for name in final_a["model"]:
        assert np.array_equal(final_a["model"][name], final_b["model"][name]), name
    for i, (va, vb) in enumerate(zip(final_a["velocity"], final_b["velocity"])):
        assert np.array_equal(va, vb), f"velocity {i}"
    for key in ("epoch", "step", "global_step", "best_err", "scheduler", "rng"):
        assert final_a["meta"][key] == final_b["meta"][key], key
    assert final_a["meta"]["optimizer"] == final_b["meta"]["optimizer"]

    def evals(folder):
        return [(m["epoch"], m["step"], m["top1_err"], m["top5_err"], m["loss"])
                for m in read_metrics(folder) if m["kind"] == "eval"]
    assert evals(out_b) == evals(out_a)
    # the curves continue: the training-loss average that the interruption cut in half holds
    # the steps before and after it, as in the uninterrupted run, and the clock goes on
    def trains(folder):
        return [(m["epoch"], m["step"], m["loss"], m["lr"])
                for m in read_metrics(folder) if m["kind"] == "train"]
    assert trains(out_b) == trains(out_a)
    times = [m["time"] for m in read_metrics(out_b)]
    assert times == sorted(times) and times[0] > 0
    assert stopped["meta"]["run_time"] <= times[0]


# ------------------------------------------------------------------------------------------
# Bad configurations: one line on stderr, exit code 2
# ------------------------------------------------------------------------------------------

def test_error_missing_data_folder(prog, cache_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    msg = run_error(prog, capsys, tiny_args(tmp_path / "out", cache_dir, "--data", str(missing)))
    assert str(missing) in msg


def test_error_batch_larger_than_data(prog, cache_dir, tmp_path, capsys):
    argv = ["--preset", "demo", "--max-train-images", "4", "--batch-size", "8",
            "--out", str(tmp_path / "out"), "--cache-dir", cache_dir, "--quiet"]
    msg = run_error(prog, capsys, argv)
    assert "--batch-size 8" in msg and "4 images" in msg
    assert not os.path.exists(tmp_path / "out" / "latest.npz")


def test_error_bad_numbers(prog, cache_dir, tmp_path, capsys):
    for extra, word in ((["--batch-size", "0"], "--batch-size"), (["--lr", "0"], "--lr"),
                        (["--max-val-images", "-1"], "--max-val-images")):
        msg = run_error(prog, capsys, tiny_args(tmp_path / "out", cache_dir, *extra))
        assert word in msg


def test_error_resume_file_missing(prog, cache_dir, tmp_path, capsys):
    missing = tmp_path / "nope" / "latest.npz"
    msg = run_error(prog, capsys, ["--resume", str(missing), "--out", str(tmp_path / "out"),
                                   "--cache-dir", cache_dir, "--quiet"])
    assert str(missing) in msg


def test_error_resume_corrupt_or_foreign_checkpoint(prog, cache_dir, tmp_path, capsys):
    from tinynet import nn

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint" * 100)
    half = tmp_path / "half.npz"
    save_checkpoint(str(tmp_path / "whole.npz"), nn.Linear(50, 40), meta={"config": {}})
    raw = (tmp_path / "whole.npz").read_bytes()
    half.write_bytes(raw[: len(raw) // 2])      # as if the copy of a checkpoint was cut short
    plain = tmp_path / "plain.npz"              # a valid checkpoint, but not of a training run
    save_checkpoint(str(plain), nn.Linear(3, 2))
    for path in (garbage, half, plain):
        msg = run_error(prog, capsys, ["--resume", str(path), "--out", str(tmp_path / "out"),
                                       "--cache-dir", cache_dir, "--quiet"])
        assert str(path) in msg and "checkpoint" in msg


@pytest.mark.slow
def test_error_resume_checkpoint_with_other_class_count(prog, run_a, cache_dir, tmp_path, capsys):
    """A checkpoint whose fc8 has 3 outputs, resumed on the 10-class data of its config."""
    out_a, _ = run_a
    with np.load(os.path.join(out_a, "latest.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    ckpt = load_checkpoint(os.path.join(out_a, "latest.npz"))
    names = list(ckpt["model"])
    arrays["model/fc8.weight"] = arrays["model/fc8.weight"][:3].copy()
    arrays["model/fc8.bias"] = arrays["model/fc8.bias"][:3].copy()
    for name in ("fc8.weight", "fc8.bias"):
        key = f"optim/velocity/{names.index(name)}"
        arrays[key] = arrays[key][:3].copy()
    path = tmp_path / "three_classes.npz"
    np.savez(path, **arrays)
    assert load_checkpoint(str(path))["model"]["fc8.weight"].shape == (3, 4096)
    msg = run_error(prog, capsys, ["--resume", str(path), "--out", str(tmp_path / "out"),
                                   "--cache-dir", cache_dir, "--quiet", "--epochs", "3"])
    assert "fc8" in msg


# ------------------------------------------------------------------------------------------
# Your own images
# ------------------------------------------------------------------------------------------

def make_image_tree(root):
    """root/train/<a,b>/ and root/val/<a,b>/: small JPEGs of odd sizes, a grey PNG, a broken JPEG."""
    rng = np.random.default_rng(0)
    sizes = [(300, 200), (180, 240), (64, 64), (257, 511)]
    for split, count in (("train", 4), ("val", 2)):
        for c, name in enumerate(("a", "b")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                pixels[..., c] = 255 - 40 * i       # class a reddish, class b greenish
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    grey = rng.integers(0, 255, (150, 120), dtype=np.uint8)
    Image.fromarray(grey, "L").save(root / "train" / "b" / "grey.png")
    (root / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    return root


@pytest.mark.slow
def test_image_folder_run(prog, tmp_path, capsys):
    data = make_image_tree(tmp_path / "images")
    out = tmp_path / "out"
    argv = ["--preset", "demo", "--data", str(data), "--epochs", "1", "--batch-size", "4",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    with pytest.warns(UserWarning, match="broken.jpg"):
        result = prog.main(argv)
    assert result is not None and np.isfinite(result["loss"])
    with open(out / "config.json") as f:
        cfg = json.load(f)
    assert cfg["classes"] == ["a", "b"]
    # train: 4 JPEGs in a (the broken one skipped) + 4 JPEGs and the grey PNG in b; val: 2 + 2
    assert (cfg["train_images"], cfg["val_images"]) == (9, 4)
    metrics = read_metrics(out)
    assert [m["kind"] for m in metrics] == ["train", "eval"]
    assert os.path.exists(out / "latest.npz") and os.path.exists(out / "best.npz")
    assert load_checkpoint(str(out / "latest.npz"))["model"]["fc8.weight"].shape == (2, 4096)


# ------------------------------------------------------------------------------------------
# Two towers (on two CPU "devices"): same training as the grouped model
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_towers_train_like_the_grouped_model(prog, cache_dir, tmp_path, capsys):
    out_g, out_t = tmp_path / "grouped", tmp_path / "towers"
    prog.main(tiny_args(out_g, cache_dir, "--stop-after-steps", "1"))
    capsys.readouterr()
    prog.main(tiny_args(out_t, cache_dir, "--stop-after-steps", "1", "--towers", "2"))
    printed = capsys.readouterr().out
    with open(os.path.join(out_t, "config.json")) as f:
        assert json.load(f)["tower_devices"] == ["cpu", "cpu:1"]  # two virtual CPU devices
    g = load_checkpoint(os.path.join(out_g, "latest.npz"))
    t = load_checkpoint(os.path.join(out_t, "latest.npz"))
    assert list(g["model"]) == list(t["model"])  # same keys and layouts: checkpoints move freely
    # one SGD step from the same weights on the same batch with the same dropout masks:
    # equal up to float32 rounding (the GEMMs sum in another order; exact in float64, see
    # tests/test_towers.py).  Over many steps rounding differences grow at ReLU/max-pool kinks.
    for key, value in g["model"].items():
        np.testing.assert_allclose(t["model"][key], value, rtol=1e-4, atol=1e-7, err_msg=key)
    assert "stop-after-steps" in printed


@pytest.mark.slow
def test_two_towers_report_their_traffic(prog, cache_dir, tmp_path, capsys):
    prog.main(tiny_args(tmp_path / "t", cache_dir, "--towers", "2"))
    printed = capsys.readouterr().out
    # per image and direction (the paper's towers): 128*13*13 floats into conv3, 4608 into fc6, 2048 into
    # fc7 and fc8, each way; plus tower 1's half of the logits (5 of 10 classes) gathered on tower 0
    per_image = 2 * 4 * (128 * 13 * 13 + 4608 + 2048 + 2048) + 4 * 5
    assert f"cross-tower traffic per step: {2 * per_image:,} B forward, {2 * per_image:,} B backward" in printed


# ------------------------------------------------------------------------------------------
# Run folders: a run never writes into another run's folder
# ------------------------------------------------------------------------------------------

def folder_state(folder):
    """{name: bytes} of every file in a run folder, to show it was left alone."""
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_new_run_refuses_a_folder_holding_a_run(prog, run_a, cache_dir, capsys):
    out_a, _ = run_a
    before = folder_state(out_a)
    msg = run_error(prog, capsys, tiny_args(out_a, cache_dir))
    assert "already holds a run" in msg and f"--resume {os.path.join(out_a, 'latest.npz')}" in msg
    assert "another --out" in msg
    assert folder_state(out_a) == before


@pytest.mark.slow
def test_resume_of_a_complete_run_says_how_to_extend_it(prog, run_a, cache_dir, capsys):
    out_a, _ = run_a
    before = folder_state(out_a)
    msg = run_error(prog, capsys, ["--resume", os.path.join(out_a, "latest.npz"),
                                   "--cache-dir", cache_dir, "--quiet"])
    assert "is complete (2 epoch(s) trained)" in msg and "--epochs N with N > 2" in msg
    assert folder_state(out_a) == before


@pytest.mark.slow
def test_resume_into_another_folder_starts_a_new_run_there(prog, run_a, cache_dir, tmp_path, capsys):
    """--resume A/latest.npz --out B: B is a new run that begins with A's history; A is untouched."""
    out_a, _ = run_a
    before = folder_state(out_a)
    out_b = tmp_path / "branch"
    prog.main(["--resume", os.path.join(out_a, "latest.npz"), "--out", str(out_b), "--epochs", "3",
               "--stop-after-steps", "1", "--cache-dir", cache_dir, "--quiet"])
    printed = capsys.readouterr().out
    assert f"run folder: {out_b} (a new run" in printed
    assert folder_state(out_a) == before
    history = read_metrics(out_a)
    assert read_metrics(out_b) == history        # A's curves (B's one step is not logged yet)
    assert load_checkpoint(str(out_b / "latest.npz"))["meta"]["global_step"] == 5
    with open(out_b / "config.json") as f:
        assert json.load(f)["resumed_from"] == os.path.join(out_a, "latest.npz")
    # B now holds a run: a second branch into it is refused
    msg = run_error(prog, capsys, ["--resume", os.path.join(out_a, "latest.npz"), "--out", str(out_b),
                                   "--epochs", "3", "--cache-dir", cache_dir, "--quiet"])
    assert "already holds a run" in msg


@pytest.mark.slow
def test_trace_writes_no_file(prog, run_a, cache_dir, tmp_path, monkeypatch, capsys):
    """--trace makes no run folder, and refuses an --out it would not write (pointed at a
    finished run it once rewrote config.json); the run is left alone."""
    out_a, _ = run_a
    before = folder_state(out_a)
    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "demo", "--max-train-images", "2", "--max-val-images", "2",
            "--batch-size", "1", "--trace", "--cache-dir", cache_dir, "--quiet"]
    assert "--trace prints one training step and writes nothing, so --out would do nothing" in run_error(
        prog, capsys, argv + ["--out", out_a])
    prog.main(argv)
    printed = capsys.readouterr().out
    assert "--trace: traced one training step" in printed
    assert "updated in backward" not in printed  # --trace updates nothing, in backward or after
    assert folder_state(out_a) == before
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_the_program_says_where_the_fully_connected_layers_are_updated(prog, cache_dir, tmp_path, capsys):
    """On the CPU, one process: in backward at batch 1-32 (tinynet/optim.py), and said so; above
    32 it says that step() updates them."""
    for batch, said in ((2, "each weight's gradient used as it is summed, never stored"),
                        (33, "but not at batch 33 (above 32")):
        prog.main(["--preset", "demo", "--max-train-images", "40", "--max-val-images", "2",
                   "--batch-size", str(batch), "--stop-after-steps", "1", "--out", str(tmp_path / str(batch)),
                   "--cache-dir", cache_dir, "--quiet"])
        printed = capsys.readouterr().out
        assert "SGD: the fully connected layers' weights are updated in backward" in printed and said in printed


@pytest.mark.slow
def test_each_run_gets_its_own_folder_by_default(prog, cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "runs" / "alexnet" / "version_0"         # an earlier run's folder
    earlier.mkdir(parents=True)
    (earlier / "config.json").write_text("{}")
    prog.main(["--preset", "demo", "--max-train-images", "2", "--max-val-images", "2",
               "--batch-size", "2", "--stop-after-steps", "1", "--cache-dir", cache_dir, "--quiet"])
    printed = capsys.readouterr().out
    base = os.path.join("runs", "alexnet")
    assert sorted(os.listdir(base)) == ["version_0", "version_1"]
    assert (earlier / "config.json").read_text() == "{}"
    assert f"run folder: {os.path.join(base, 'version_1')}" in printed
    # the message after an interruption names the run's own checkpoint
    assert f"--resume {os.path.join(base, 'version_1', 'latest.npz')}" in printed
    assert sorted(os.listdir(os.path.join(base, "version_1"))) == ["config.json", "latest.npz",
                                                                   "metrics.jsonl"]


# ------------------------------------------------------------------------------------------
# What a resumed run or --eval-only may change, and the data it must find again
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--out", "somewhere"], "--eval-only scores the weights and writes nothing, so --out would do nothing"),
    (["--time-budget", "5", "--stop-after-steps", "3"], "--time-budget, --stop-after-steps would do nothing"),
    (["--epochs", "9"], "--epochs would do nothing"),
    (["--trace"], "--trace would do nothing"),
])
def test_eval_only_refuses_options_it_would_ignore(prog, tmp_path, capsys, extra, words):
    argv = ["--resume", str(tmp_path / "x.npz"), "--eval-only", *extra]
    assert words in run_error(prog, capsys, argv)


def test_val_fraction_is_refused_for_a_folder_of_fashion_mnist_files(prog, tmp_path, capsys):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"")
    msg = run_error(prog, capsys, ["--data", str(tmp_path), "--val-fraction", "0.5", "--out", str(tmp_path / "o")])
    assert "holds Fashion-MNIST's files, which come with their own held-out (test) images" in msg


def test_recorded_statistics_name_what_moved(prog):
    cfg = dict(mean=[100.0, 100.0, 100.0], std=[50.0, 50.0, 50.0])
    mean = np.full(3, 100.0, np.float32)
    said = []
    # within half a grey level: the recorded values, bit for bit, and no word
    m, s = prog.recorded_statistics(cfg, mean + 0.4, np.full(3, 50.3, np.float32), True, said.append)
    assert m.tolist() == [100.0] * 3 and s.tolist() == [50.0] * 3 and said == []
    # only the deviations moved: the message says so, and not that the means did
    with pytest.raises(prog.ConfigError) as e:
        prog.recorded_statistics(cfg, mean, np.full(3, 60.0, np.float32), True, said.append)
    assert "channel deviations are [60.00, 60.00, 60.00] now, the run recorded [50.00, 50.00, 50.00] " \
           "(10.00 grey levels apart)" in str(e.value) and "channel means" not in str(e.value)
    prog.recorded_statistics(cfg, mean, np.full(3, 60.0, np.float32), False, said.append)   # --eval-only
    assert len(said) == 1 and said[0].startswith("warning: the training images' channel deviations")


def test_data_parallel_ranks_reading_other_images_are_stopped(prog, monkeypatch):
    """Each rank compares its data's fingerprint with rank 0's (a sum over ranks of rank 0's
    value): here rank 1 of 2, whose images differ."""
    from tinynet.data import ArrayDataset
    images = np.zeros((4, 8, 8, 3), np.uint8)
    train = ArrayDataset(images, np.array([0, 1, 0, 1]), ["a", "b"])
    val = ArrayDataset(images[:2], np.array([0, 1]), ["a", "b"])
    calls = []

    def allreduce_sum(values):
        calls.append(values)
        return [123.0] if len(calls) == 1 else [float(sum(values))]   # rank 0's value; my own flag
    monkeypatch.setattr(prog.dist, "allreduce_sum", allreduce_sum)
    monkeypatch.setattr(prog.dist, "rank", lambda: 1)
    with pytest.raises(prog.ConfigError, match=r"1 of 2 rank\(s\) read other images than rank 0 "
                                               r"\(4 training / 2 held-out images here\)"):
        prog.check_ranks_same_data({"data_fingerprint": {"train": "x", "val": "y"}}, train, val, 2)
    assert calls[0] == [0.0]                                       # a rank other than 0 adds nothing
    calls.clear()
    prog.check_ranks_same_data({}, train, val, 1)                   # one process: nothing to compare
    assert calls == []


def test_a_second_ctrl_c_says_whether_a_checkpoint_exists(prog, cache_dir, tmp_path, capsys, monkeypatch):
    """A second Ctrl-C can land while the first checkpoint is being written (455 MB take a
    couple of seconds): the message says a checkpoint exists only if one does."""
    def interrupted(args):
        prog._state.update(training=True, out=str(tmp_path))
        raise KeyboardInterrupt
    monkeypatch.setattr(prog, "train", interrupted)
    for exists in (False, True):
        if exists:
            (tmp_path / "latest.npz").write_bytes(b"PK")
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            prog.main(tiny_args(tmp_path / "o", cache_dir))
        err = capsys.readouterr().err
        assert e.value.code == 130
        if exists:
            assert f"is from the run's last evaluation or save; continue with: python " in err, err
            assert f"--resume {tmp_path / 'latest.npz'}" in err, err
        else:
            assert "no checkpoint of this run was written yet, so it cannot be continued" in err, err


def test_resume_given_a_run_folder_names_its_checkpoints(prog, run_a, capsys):
    msg = run_error(prog, capsys, ["--resume", run_a[0], "--eval-only"])
    assert f"--resume {run_a[0]} is a folder; give a checkpoint file in it: " \
           f"{os.path.join(run_a[0], 'latest.npz')} or {os.path.join(run_a[0], 'best.npz')}" in msg, msg


@pytest.mark.slow
def test_a_run_on_a_relative_data_folder_resumes_from_anywhere(prog, cache_dir, tmp_path, capsys, monkeypatch):
    """The run records its data folder as an absolute path, and the command it prints to go on
    names the script as it was started and the cache folder it used."""
    make_image_tree(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["examples/alexnet_train.py"])
    with pytest.warns(UserWarning, match="broken.jpg"):
        prog.main(["--preset", "demo", "--data", "images", "--epochs", "2", "--batch-size", "4",
                   "--out", "run", "--cache-dir", cache_dir, "--stop-after-steps", "1"])
    said = capsys.readouterr().out
    assert f"Continue with: python examples/alexnet_train.py --cache-dir {cache_dir} --resume " \
           f"{os.path.join('run', 'latest.npz')}" in said, said
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["data"] == str(tmp_path / "images")
    monkeypatch.chdir("/")
    with pytest.warns(UserWarning, match="broken.jpg"):
        prog.main(["--resume", str(tmp_path / "run" / "latest.npz"), "--cache-dir", cache_dir,
                   "--quiet", "--stop-after-steps", "1"])
    assert load_checkpoint(str(tmp_path / "run" / "latest.npz"))["meta"]["global_step"] == 2


def test_metrics_file_cut_short_by_a_crash(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 20}\n{"kind": "eval", "st')  # the last line half written
    with pytest.warns(RuntimeWarning, match="last line is cut short"):
        assert runs.read_metrics(str(path)) == [{"kind": "train", "step": 20}]
    path.write_text('{"kind": "train", "step": 20}\nnot json\n{"kind": "eval", "step": 40}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON entry"):
        runs.read_metrics(str(path))


def test_the_filters_picture_is_a_run_file(tmp_path):
    (tmp_path / "conv1_filters.png").write_bytes(b"")
    with pytest.raises(runs.RunFolderError, match="already holds a run"):
        runs.claim_new_run_dir(str(tmp_path))


@pytest.mark.slow
def test_a_model_with_nan_outputs_gets_no_score(prog, run_a, cache_dir, tmp_path, capsys):
    """A diverged model's outputs are NaN, and argmax makes a 'class' of them: an error rate
    from them would look real. --eval-only refuses to give one, naming how many images."""
    with np.load(os.path.join(run_a[0], "latest.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/fc8.weight"] = np.full_like(arrays["model/fc8.weight"], np.inf)
    path = str(tmp_path / "diverged.npz")
    np.savez(path, **arrays)
    msg = run_error(prog, capsys, ["--resume", path, "--eval-only", "--cache-dir", cache_dir, "--quiet"])
    assert "the weights of --resume give NaN or infinite outputs for 4 of 4 held-out images, so no " \
           "error rate can be given" in msg, msg


@pytest.mark.slow
def test_resume_moves_device_keeps_towers_and_needs_the_same_data(prog, tmp_path, capsys):
    data = make_image_tree(tmp_path / "images")
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    argv = ["--preset", "demo", "--data", str(data), "--epochs", "2", "--batch-size", "4", "--out", str(out),
            "--cache-dir", cache, "--quiet", "--stop-after-steps", "1"]
    with pytest.warns(UserWarning, match="broken.jpg"):
        prog.main(argv)
    latest = str(out / "latest.npz")
    with open(out / "config.json") as f:
        fingerprint = json.load(f)["data_fingerprint"]
    assert set(fingerprint) == {"train", "val"}
    resume = ["--resume", latest, "--cache-dir", cache, "--quiet"]
    msg = run_error(prog, capsys, resume + ["--towers", "2"])
    assert "the run trained with --towers 1" in msg
    # another device is honoured (a second CPU device here), and recorded; --time-budget 0 is
    # fine for a run on the plateau schedule
    prog.main(resume + ["--device", "cpu:1", "--time-budget", "0", "--stop-after-steps", "1"])
    with open(out / "config.json") as f:
        assert json.load(f)["device"] == "cpu:1"
    # the data folder changed: one held-out image renamed (same counts, same labels) ...
    os.rename(data / "val" / "a" / "001.jpg", data / "val" / "a" / "009.jpg")
    for extra in ([], ["--eval-only"]):
        msg = run_error(prog, capsys, resume + extra)
        assert "the data is not what this run trained on" in msg and "its held-out images are not the run's" in msg
        assert "(the run had 9 / 4)" in msg
        assert "every class has as many images as in the run: files were renamed, or replaced" in msg
        assert "; files added: 'val/a/009.jpg'; removed: 'val/a/001.jpg'." in msg
    os.rename(data / "val" / "a" / "009.jpg", data / "val" / "a" / "001.jpg")
    # ... or a training image added
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data / "train" / "a" / "new.jpg")
    msg = run_error(prog, capsys, resume + ["--eval-only"])
    assert "now gives 10 training / 4 held-out images" in msg and "its training images are not the run's" in msg
    assert "by class: 'a' 5 training image(s), the run had 4; files added: 'train/a/new.jpg'." in msg
    os.remove(data / "train" / "a" / "new.jpg")
    os.utime(data / "val" / "b" / "000.jpg", (1e9, 1e9))  # a file's date is no change of the data
    assert prog.main(resume + ["--eval-only"]) is not None  # the data as it was: scored
    # the training images re-exported darker under the same names: the names match, the pixels
    # do not; a resumed run would go on with other inputs than it was normalised for
    with open(out / "config.json") as f:
        recorded = json.load(f)
    for path in sorted((data / "train").rglob("0*.jpg")):
        with Image.open(path) as im:
            dark = (np.asarray(im.convert("RGB")) // 2).astype(np.uint8)
        Image.fromarray(dark).save(path)
    msg = run_error(prog, capsys, resume)
    assert "the data is not what this run trained on: the training images' channel means are" in msg
    assert f"the run recorded [{recorded['mean'][0]:.2f}, " in msg
    capsys.readouterr()
    assert prog.main(resume + ["--eval-only"]) is not None   # scored, with the recorded statistics
    said = capsys.readouterr().out
    assert "warning: the training images' channel means are" in said
    assert "normalised by the recorded statistics" in said
    assert recorded.get("lighting_eigvec") is None or len(recorded["lighting_eigvec"]) == 3


@pytest.mark.slow
def test_a_resumed_budget_schedule_measures_its_horizon_again(prog, cache_dir, tmp_path):
    """Each invocation has the whole --time-budget: the horizon (the step where the budget
    schedule's rate reaches zero) saved by the last one is measured again after the first step,
    not kept until the next evaluation (a longer budget would train at the old, lower rate)."""
    out = tmp_path / "run"
    prog.main(tiny_args(out, cache_dir, "--epochs", "20", "--lr-schedule", "budget", "--time-budget", "600",
                        "--warmup-steps", "0", "--stop-after-steps", "11"))
    first = load_checkpoint(str(out / "latest.npz"))["meta"]
    assert first["step"] == 1 and first["lr_horizon"] is not None  # stopped inside an epoch
    prog.main(["--resume", str(out / "latest.npz"), "--time-budget", "6000", "--stop-after-steps", "1",
               "--cache-dir", cache_dir, "--quiet"])
    second = load_checkpoint(str(out / "latest.npz"))["meta"]
    assert second["global_step"] == 12  # no evaluation ran in between: the step re-measured it
    # ten times the budget: far more steps left than the last invocation's horizon allowed (kept,
    # it would stay first["lr_horizon"]; one step's rate is rough, so only "far more")
    assert second["lr_horizon"] - 12 > 2 * (first["lr_horizon"] - 11), (first["lr_horizon"], second["lr_horizon"])


@pytest.mark.slow
def test_a_short_budget_at_a_small_batch_trains_and_best_compares_like_with_like(prog, cache_dir, tmp_path, capsys):
    """Before its first evaluation the run scores one batch of held-out images to know what an
    evaluation costs: guessed from the training step, the reserve for the final evaluation took a
    60 s budget whole at batch 2 and training stopped after one step. The final evaluation, on
    other images than those scored during training, is not compared with theirs for best.npz."""
    out = tmp_path / "run"
    prog.main(tiny_args(out, cache_dir, "--epochs", "3", "--time-budget", "60", "--max-val-images", "0"))
    meta = load_checkpoint(str(out / "latest.npz"))["meta"]
    # all 6 steps here in 25 s; the guess stopped it after 1 (at least 4 leaves room for a slower machine)
    assert meta["global_step"] >= 4, meta["global_step"]
    text = capsys.readouterr().out
    assert "(on the 200 held-out images scored during training)" in text


def test_progress_eta_counts_only_this_invocations_steps(prog, capsys, monkeypatch):
    """Resumed at step 3 of 8, 2 steps in 10 s: the 3 steps left take 15 s (the steps before the
    resume took none of this invocation's time)."""
    bar = prog.Progress(8, 0, quiet=False, start=3)
    bar.tty = False
    monkeypatch.setattr(prog.time, "time", lambda: bar.start + 10.0)
    bar.update(5, 4, 0.5, 0.01)
    line = capsys.readouterr().err.splitlines()[-1]
    assert "5/8" in line and "ETA 15s" in line, line
