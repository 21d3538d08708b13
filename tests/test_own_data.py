"""A user's own image folders and runs: what happens to a folder, a subset, a bad file, a full
disk, a failing read, a run folder and the options of examples/alexnet_train.py.

Library behaviour is tested on tiny images (size 8 or 16); the training program through its
main(argv), on folders made here. Only one test trains (a few steps at batch 2); the others stop
with their error before any training.
"""

import errno
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import tinynet as tn
import tinynet.functional as F
from tinynet import runs
from tinynet.data import (DataLoader, find_layout, load_image_folder, load_image_folders,
                          stratified_subset_indices)
from tinynet.data import folder as folder_module
from tinynet.ops import conv as conv_module

from conftest import load_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "alexnet_train.py: error:"


@pytest.fixture(scope="module")
def prog():
    return load_example("alexnet_train")


def pngs(folder, count, colour, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shade = tuple(min(255, c + 3 * i) for c in colour)
        Image.new("RGB", size, shade).save(folder / f"{i:03d}.png")


def animal_folder(root, per_class=4):
    """root/cat, root/dog, root/fox: `per_class` flat-coloured PNGs each (sorted by class)."""
    for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 200, 30)), ("fox", (30, 30, 200))):
        pngs(root / name, per_class, colour)
    return root


def run_error(prog, capsys, argv):
    """main(argv) must end with one line on stderr and exit code 2; returns the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        prog.main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0]


def leftovers(cache):
    """Temporary names left in a cache folder."""
    return [n for n in os.listdir(cache) if n.startswith(".")]


# ------------------------------------------------------------------------------------------
# Subsets keep every class
# ------------------------------------------------------------------------------------------

def test_stratified_subset_keeps_each_class_share():
    labels = np.repeat([0, 1, 2], [50, 30, 20])          # sorted, as a folder lists them
    keep = stratified_subset_indices(labels, 10, seed=0)
    assert np.bincount(labels[keep]).tolist() == [5, 3, 2]
    assert np.all(np.diff(keep) > 0)
    # a class too small for its share still gets one place while count >= classes
    labels = np.repeat([0, 1, 2], [98, 1, 1])
    assert np.bincount(labels[stratified_subset_indices(labels, 3)]).tolist() == [1, 1, 1]
    # the seed chooses which members, not how many
    a, b = (stratified_subset_indices(np.repeat([0, 1], 50), 10, seed=s) for s in (0, 1))
    assert not np.array_equal(a, b)
    assert len(stratified_subset_indices(labels, 500)) == 100
    with pytest.raises(ValueError, match="count must be >= 1"):
        stratified_subset_indices(labels, 0)


# ------------------------------------------------------------------------------------------
# Layouts, bad files, the split
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["val", "valid", "validation", "test"])
def test_held_out_folder_under_any_common_name(tmp_path, name):
    pngs(tmp_path / "train" / "a", 3, (250, 0, 0))
    pngs(tmp_path / "train" / "b", 3, (0, 0, 250))
    pngs(tmp_path / name / "a", 1, (250, 0, 0))
    pngs(tmp_path / name / "b", 1, (0, 0, 250))
    assert find_layout(tmp_path)["val"] == str(tmp_path / name)
    train, val = load_image_folders(tmp_path, size=8, cache_dir=tmp_path / ".c")
    assert (len(train), len(val)) == (6, 2)


def test_layout_names_what_it_does_not_use(tmp_path):
    for split in ("train", "val", "test"):
        pngs(tmp_path / split / "a", 1, (1, 2, 3))
    assert find_layout(tmp_path) == dict(train=str(tmp_path / "train"), val=str(tmp_path / "val"),
                                         unused=[str(tmp_path / "test")])
    lonely = tmp_path / "lonely"
    pngs(lonely / "validation" / "a", 1, (1, 2, 3))
    with pytest.raises(ValueError, match="has validation/ but no train/"):
        find_layout(lonely)


def test_split_is_made_among_readable_images(tmp_path):
    """A broken file can never be a class's only validation image, whatever the split seed."""
    pngs(tmp_path / "d" / "a", 2, (250, 0, 0))
    pngs(tmp_path / "d" / "b", 5, (0, 0, 250))
    (tmp_path / "d" / "a" / "002.png").write_bytes(b"\x89PNG broken")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "d" / "b" / "dangling.png")
    for seed in range(6):
        with pytest.warns(UserWarning) as caught:
            train, val = load_image_folders(tmp_path / "d", val_fraction=0.5, seed=seed, size=8,
                                            cache_dir=tmp_path / "c")
        text = " ".join(str(w.message) for w in caught)
        assert "002.png" in text and "dangling.png" in text and "could not be read" in text
        assert np.bincount(val.labels).tolist() == [1, 2]
        assert np.bincount(train.labels).tolist() == [1, 3]
        assert not np.shares_memory(train.images, val.images) and isinstance(val.images, np.memmap)


def test_folder_files_of_every_kind(tmp_path):
    root = tmp_path / "kinds"
    pngs(root / "b", 1, (0, 0, 250))
    # a float TIFF in 0..1 (mode F): 0.5 is mid grey, not black
    Image.fromarray(np.full((6, 6), 0.5, np.float32), "F").save(tmp_path / "float.tif")
    (root / "a").mkdir()
    os.replace(tmp_path / "float.tif", root / "a" / "float.tif")
    Image.new("RGB", (6, 6), (10, 20, 30)).save(root / "a" / "photo.jfif", format="JPEG", quality=100)
    # a linked sub-folder inside a class counts, like a linked class folder
    pngs(tmp_path / "elsewhere", 2, (0, 250, 0))
    os.symlink(tmp_path / "elsewhere", root / "a" / "linked")
    os.symlink(root / "a", root / "a" / "linked" / "loop")        # a link loop ends
    ds = load_image_folder(root, size=8, cache_dir=tmp_path / "c")
    assert ds.labels.tolist() == [0, 0, 0, 0, 1]
    grey = ds.images[0]
    assert np.all(np.abs(grey.astype(int) - 128) <= 1)
    assert np.all(np.abs(ds.images[3].astype(int) - (10, 20, 30)) <= 4)   # the .jfif


def test_decoding_reports_progress(tmp_path):
    animal_folder(tmp_path / "d", per_class=2)
    calls = []
    load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c",
                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]
    calls.clear()
    load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c", progress=calls.append)
    assert calls == []                                            # the cache is reused


def test_interrupted_decoding_leaves_nothing(tmp_path, monkeypatch):
    animal_folder(tmp_path / "d", per_class=2)
    real = folder_module.decode_image
    seen = []

    def decode(source, size):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(source, size)
    monkeypatch.setattr(folder_module, "decode_image", decode)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
    assert os.listdir(tmp_path / "c") == []


# ------------------------------------------------------------------------------------------
# The cache: a full disk, a failing read, two builders at once
# ------------------------------------------------------------------------------------------

def test_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    animal_folder(tmp_path / "d", per_class=2)

    def no_room(path, start, stop):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(folder_module, "_preallocate", no_room)
    with pytest.raises(OSError) as exc:
        load_image_folder(tmp_path / "d", size=16, cache_dir=tmp_path / "c")
    assert exc.value.errno == errno.ENOSPC
    message = str(exc.value)
    assert os.path.join(str(tmp_path / "c"), "folder-") in message
    assert f"{6 * 16 * 16 * 3 + 128:,} bytes" in message
    assert "--cache-dir" in message
    assert os.listdir(tmp_path / "c") == []


def test_preallocation_reserves_the_blocks(tmp_path):
    path = tmp_path / "f.npy"
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(4, 256, 256, 3))
    sparse_blocks = os.stat(path).st_blocks
    folder_module._preallocate(str(path), os.path.getsize(path) - images.nbytes, os.path.getsize(path))
    assert os.stat(path).st_blocks * 512 >= images.nbytes > sparse_blocks * 512
    assert np.lib.format.open_memmap(path, mode="r").shape == (4, 256, 256, 3)   # header intact


def test_a_failed_read_is_not_remembered(tmp_path, monkeypatch):
    """EIO (or a permission error) skips the file now, and the next load tries it again."""
    animal_folder(tmp_path / "d", per_class=2)
    flaky = str(tmp_path / "d" / "dog" / "001.png")
    real = folder_module._read_file

    def failing_read(path):
        if path == flaky:
            raise OSError(errno.EIO, "Input/output error", path)
        return real(path)
    monkeypatch.setattr(folder_module, "_read_file", failing_read)
    with pytest.warns(UserWarning, match="could not be read.*tries it again"):
        first = load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
    assert len(first) == 5 and first.skipped == [flaky]
    # another rank reading rank 0's fresh cache takes it as it is (the same images everywhere)
    with pytest.warns(UserWarning, match="could not be read when the cache"):
        assert len(load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c",
                                     retry_unreadable=False)) == 5
    monkeypatch.setattr(folder_module, "_read_file", real)        # the fault is gone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
    assert len(second) == 6 and second.skipped == []
    assert [n for n in os.listdir(tmp_path / "c") if not n.startswith(".")] == \
        [os.path.basename(os.path.dirname(second.images.filename))]
    assert leftovers(tmp_path / "c") == []


def test_corrupt_content_is_remembered(tmp_path, monkeypatch):
    animal_folder(tmp_path / "d", per_class=2)
    (tmp_path / "d" / "fox" / "000.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
    decoded = []
    monkeypatch.setattr(folder_module, "decode_image", lambda *a: decoded.append(a))
    with pytest.warns(UserWarning, match="skipped when the cache"):
        again = load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
    assert decoded == [] and len(again) == 5                      # not decoded again


def test_cache_is_one_folder_committed_as_a_unit(tmp_path, monkeypatch):
    """Two builders of the same cache: the second finds the first's folder in place and uses it
    whole, so its images and labels can never be mixed with the first's."""
    animal_folder(tmp_path / "d", per_class=2)
    cache = tmp_path / "c"
    first = load_image_folder(tmp_path / "d", size=8, cache_dir=cache)
    (folder,) = os.listdir(cache)
    assert sorted(os.listdir(cache / folder)) == ["images.npy", "labels.npy", "meta.json"]
    # a second builder that did not see the cache when it started (as a rank starting at the
    # same moment): it decodes, its rename finds the folder taken, and it uses that folder
    real_load_json, calls = folder_module.load_json, []

    def blind_at_first(path):
        calls.append(path)
        return None if len(calls) == 1 else real_load_json(path)
    monkeypatch.setattr(folder_module, "load_json", blind_at_first)
    marker = np.load(cache / folder / "labels.npy")
    second = load_image_folder(tmp_path / "d", size=8, cache_dir=cache)
    assert os.listdir(cache) == [folder]                          # one cache, no temporaries
    assert second.images.filename == first.images.filename
    assert np.array_equal(second.labels, marker)


def test_rebuilt_cache_replaces_the_stale_one(tmp_path, monkeypatch):
    animal_folder(tmp_path / "d", per_class=1)
    real = folder_module._read_file

    def denied(path):
        if path.endswith(os.path.join("cat", "000.png")):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)
    monkeypatch.setattr(folder_module, "_read_file", denied)
    pngs(tmp_path / "d" / "cat", 2, (200, 30, 30))                # cat/001.png stays readable
    with pytest.warns(UserWarning, match="PermissionError"):
        assert len(load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")) == 3
    monkeypatch.setattr(folder_module, "_read_file", real)
    assert len(load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")) == 4
    assert len(os.listdir(tmp_path / "c")) == 1                   # the stale copy is gone


# ------------------------------------------------------------------------------------------
# Library behaviours
# ------------------------------------------------------------------------------------------

def test_iterating_a_loader_reshuffles_every_pass():
    class Data:
        images = np.zeros((12, 2, 2, 3), np.uint8)
        labels = np.arange(12)
    loader = DataLoader(Data(), 4, shuffle=True, seed=3, prefetch=0)
    first = np.concatenate([idx for _, _, idx in loader])
    second = np.concatenate([idx for _, _, idx in loader])
    assert sorted(first) == sorted(second) == list(range(12))
    assert not np.array_equal(first, second)
    assert np.array_equal(second, loader.order(1))               # the second pass is epoch 1
    loader.set_epoch(0)
    assert np.array_equal(np.concatenate([idx for _, _, idx in loader]), first)


def test_trace_says_whether_columns_were_kept():
    from tinynet.tracing import describe_backward
    x = tn.tensor(np.ones((1, 1, 5, 5), np.float32))
    w = tn.tensor(np.ones((2, 1, 3, 3), np.float32), requires_grad=True)
    old = conv_module.set_conv_keep_columns(2**20)
    try:
        for keep, words in ((2**20, "columns kept from the forward"), (0, "rebuilt by im2col")):
            conv_module.set_conv_keep_columns(keep)
            y = F.conv2d(x, w)
            lines = describe_backward(y._creator.describe())
            assert any(words in line for line in lines), lines
    finally:
        conv_module.set_conv_keep_columns(old)


def test_im2col_walkthrough_help_does_not_run_the_lesson():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "im2col_walkthrough.py"),
                             "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "Part 1" in result.stdout and "=" * 20 not in result.stdout


# ------------------------------------------------------------------------------------------
# The training program on a user's folder
# ------------------------------------------------------------------------------------------

def folder_argv(data, tmp_path, *extra):
    return ["--preset", "demo", "--data", str(data), "--batch-size", "2", "--epochs", "1",
            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet", *extra]


@pytest.mark.slow
def test_folder_run_subset_bad_files_and_what_is_recorded(prog, tmp_path, capsys):
    """cat/dog/fox sorted by class: --max-train-images 6 trains on two of each (not six cats),
    a broken file and a dangling link are skipped with a warning, top-5 is not reported for 3
    classes, and config.json records what ran."""
    data = animal_folder(tmp_path / "pets", per_class=5)
    (data / "fox" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    os.symlink(tmp_path / "gone.png", data / "cat" / "gone.png")
    with pytest.warns(UserWarning) as caught:
        result = prog.main(folder_argv(data, tmp_path, "--max-train-images", "6",
                                       "--max-val-images", "3", "--dropout", "0.25",
                                       "--crop", "centre"))
    text = " ".join(str(w.message) for w in caught)
    assert "broken.png" in text and "gone.png" in text
    out = capsys.readouterr().out
    assert "using 6 of 12 training images, every class's share kept (per class: 2, 2, 2)" in out
    assert "using 3 of" not in out                                # 3 held out already: all used
    assert "2 file(s) skipped" in out
    assert "top-5" not in out and set(result) == {"top1_err", "loss"}
    with open(tmp_path / "run" / "config.json") as f:
        cfg = json.load(f)
    assert cfg["num_classes"] == 3 and cfg["classes"] == ["cat", "dog", "fox"]
    assert (cfg["train_images"], cfg["val_images"]) == (6, 3)
    assert cfg["val_fraction"] == 0.1 and cfg["difficulty"] is None and cfg["dataset"] is None
    assert cfg["dropout"] == 0.25 and cfg["crop"] == "centre"
    # PCA lighting along the training pixels' own colour axes: three eigenvalues, largest first
    assert cfg["lighting_pca"] == "data" and len(cfg["lighting_eigval"]) == 3
    assert cfg["lighting_eigval"] == sorted(cfg["lighting_eigval"], reverse=True)
    evals = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")
             if '"eval"' in line]
    assert len(evals) == 1 and "top5_err" not in evals[0]


def test_mirror_and_lighting_options_reach_the_training_transform(prog, tmp_path):
    """--no-mirror and --lighting-std are recorded in the configuration and honoured by the
    training transform; without them the preset's (mirrors, sigma 0.1) apply."""
    data = animal_folder(tmp_path / "pets", per_class=4)
    for extra, mirror, sigma in (((), True, 0.1), (("--no-mirror", "--lighting-std", "0.05"), False, 0.05),
                                 (("--mirror", "--lighting-std", "0"), True, 0.0)):
        cfg = prog.build_config(prog.parse_args(folder_argv(data, tmp_path, *extra)))
        assert (cfg["mirror"], cfg["lighting_std"]) == (mirror, sigma)
        train, _ = prog.load_data(cfg, str(tmp_path / "cache"), say=lambda *a: None)
        train_tf, _ = prog.make_transforms(cfg, train)
        assert (train_tf.flip, train_tf.lighting_std) == (mirror, sigma)
        _, _, flip, alpha = train_tf.sample_params(np.arange(64), epoch=0)
        assert flip.any() == mirror and (alpha != 0).any() == (sigma > 0)
        # without mirrors, the held-out images are scored on the centre crop alone (the
        # preset's default), unless --eval-crops says otherwise
        assert cfg["eval_crops"] == (1 if not mirror else prog.PRESETS["demo"]["eval_crops"])
    cfg = prog.build_config(prog.parse_args(folder_argv(data, tmp_path, "--no-mirror", "--eval-crops", "2")))
    assert cfg["eval_crops"] == 2
    cfg = prog.build_config(prog.parse_args(folder_argv(data, tmp_path, "--preset", "short", "--no-mirror")))
    assert cfg["eval_crops"] == 1 and prog.PRESETS["short"]["eval_crops"] == 2


def test_split_does_not_depend_on_the_training_seed(prog, tmp_path):
    data = animal_folder(tmp_path / "pets", per_class=6)
    vals = []
    for seed in ("0", "7"):
        args = prog.parse_args(folder_argv(data, tmp_path, "--seed", seed))
        cfg = prog.build_config(args)
        _, val = prog.load_data(cfg, str(tmp_path / "cache"), say=lambda *a: None)
        vals.append(np.asarray(val.images))
    assert np.array_equal(*vals)
    assert len(os.listdir(tmp_path / "cache")) == 1               # one cache for both seeds
    # the shapes set is named by --data-seed alone, not --seed
    for seed in ("0", "7"):
        cfg = prog.build_config(prog.parse_args(["--seed", seed]))
        assert cfg["data_seed"] == 0


def test_empty_held_out_set_is_refused_before_training(prog, tmp_path, capsys):
    data = tmp_path / "ones"
    pngs(data / "a", 1, (250, 0, 0))
    pngs(data / "b", 1, (0, 0, 250))
    msg = run_error(prog, capsys, folder_argv(data, tmp_path, "--batch-size", "1"))
    assert "held-out set is empty (2 training images in 2 classes, 0 held out)" in msg
    assert not os.path.exists(tmp_path / "run")


def test_user_held_out_folder_is_used_and_named(prog, tmp_path, capsys):
    data = tmp_path / "split"
    for split, n in (("train", 3), ("validation", 1)):
        pngs(data / split / "a", n, (250, 0, 0))
        pngs(data / split / "b", n, (0, 0, 250))
    args = prog.parse_args(folder_argv(data, tmp_path))
    cfg = prog.build_config(args)
    said = []
    train, val = prog.load_data(cfg, str(tmp_path / "cache"), say=said.append)
    assert (len(train), len(val)) == (6, 2)
    assert f"held-out images from {data / 'validation'}" in said[0]
    assert cfg["val_fraction"] is None
    # --val-fraction cannot apply to it
    msg = run_error(prog, capsys, folder_argv(data, tmp_path, "--val-fraction", "0.3"))
    assert "--val-fraction" in msg and str(data / "validation") in msg


@pytest.mark.parametrize("extra, words", [
    (["--num-classes", "2"], "--num-classes describe(s) the built-in data"),
    (["--difficulty", "hard"], "--difficulty describe(s) the built-in data"),
    (["--dataset", "fashion-mnist"], "--dataset describe(s) the built-in data"),
])
def test_options_that_do_not_apply_to_a_folder_are_refused(prog, tmp_path, capsys, extra, words):
    data = animal_folder(tmp_path / "pets", per_class=2)
    assert words in run_error(prog, capsys, folder_argv(data, tmp_path, *extra))


@pytest.mark.parametrize("argv, words", [
    (["--val-fraction", "0.2"], "--val-fraction splits a --data folder"),
    (["--dataset", "fashion-mnist", "--num-classes", "3"], "--num-classes describe(s) the shapes set"),
    (["--resume", "x.npz", "--lr", "0.1"], "--lr cannot change"),
    (["--resume", "x.npz", "--seed", "3", "--preset", "demo"], "--preset, --seed cannot change"),
    (["--resume", "x.npz", "--dropout", "0"], "--dropout cannot change"),
    (["--resume", "x.npz", "--crop", "centre"], "--crop cannot change"),
    (["--resume", "x.npz", "--no-mirror"], "--mirror cannot change"),
    (["--resume", "x.npz", "--lighting-std", "0"], "--lighting-std cannot change"),
    (["--eval-only"], "--eval-only needs --resume"),
])
def test_options_that_would_be_ignored_are_refused(prog, tmp_path, capsys, argv, words):
    assert words in run_error(prog, capsys, argv + ["--cache-dir", str(tmp_path / "cache")])


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--data-seed", "-2"], "--data-seed must be >= 0, got -2"),
    (["--time-budget", "-5"], "--time-budget must be seconds >= 0 (0: no budget), got -5.0"),
    (["--time-budget", "nan"], "--time-budget must be"),
    (["--num-classes", "1"], "--num-classes must be in 2..16"),
    (["--num-classes", "17"], "--num-classes must be in 2..16"),
    (["--momentum", "-0.5"], "--momentum must be a finite number >= 0"),
    (["--stop-after-steps", "-1"], "--stop-after-steps must be >= 0"),
    (["--dropout", "1"], "--dropout must be a probability in [0, 1), got 1.0"),
    (["--dropout", "nan"], "--dropout must be a probability in [0, 1)"),
    (["--lighting-std", "-0.1"], "--lighting-std must be >= 0 (0: no lighting), got -0.1"),
    (["--lighting-std", "nan"], "--lighting-std must be >= 0"),
    (["--lighting-std", "inf"], "--lighting-std must be >= 0"),
])
def test_argument_checks_name_the_option(prog, tmp_path, capsys, argv, words):
    assert words in run_error(prog, capsys, argv + ["--out", str(tmp_path / "o")])


def test_out_that_is_a_file_is_refused(prog, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("mine")
    msg = run_error(prog, capsys, ["--out", str(target)])
    assert f"--out {target} is a file, not a folder" in msg
    assert target.read_text() == "mine"


def test_ctrl_c_while_decoding_is_one_line(prog, tmp_path, capsys, monkeypatch):
    data = animal_folder(tmp_path / "pets", per_class=2)

    def interrupted(source, size):
        raise KeyboardInterrupt
    monkeypatch.setattr(folder_module, "decode_image", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        prog.main(folder_argv(data, tmp_path))
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["alexnet_train.py: interrupted (Ctrl-C) before training started; no checkpoint "
                   "was written"]
    assert leftovers(tmp_path / "cache") == [] and not os.path.exists(tmp_path / "run")


# ------------------------------------------------------------------------------------------
# Run folder rules (tinynet/runs.py)
# ------------------------------------------------------------------------------------------

def test_run_folder_rules(tmp_path):
    base = tmp_path / "runs"
    assert runs.next_version_dir(str(base)).endswith("version_0")
    (base / "version_7").mkdir()
    assert runs.next_version_dir(str(base)).endswith("version_8")

    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.jsonl").write_text("")
    with pytest.raises(runs.RunFolderError, match="already holds a run.*delete it yourself"):
        runs.claim_new_run_dir(str(done))
    (done / "latest.npz").write_bytes(b"")
    with pytest.raises(runs.RunFolderError, match="continue it with --resume"):
        runs.claim_new_run_dir(str(done))
    assert runs.claim_new_run_dir(str(tmp_path / "fresh")) == str(tmp_path / "fresh")

    # resuming an older checkpoint in its own folder would overwrite the later part of the run
    best = str(done / "best.npz")
    with pytest.raises(runs.RunFolderError, match="at step 40, but its run went on to step 90"):
        runs.resume_target(best, 40, 90)
    assert runs.resume_target(best, 40, 90, out=str(tmp_path / "branch")) == \
        (str(tmp_path / "branch"), True)
    assert runs.resume_target(str(done / "latest.npz"), 90, None) == (str(done), False)

    entries = [dict(kind="train", step=s) for s in (20, 40, 60)]
    assert runs.keep_metrics_upto(entries, 40) == entries[:2]
    runs.write_metrics(str(done / "metrics.jsonl"), entries)
    assert runs.read_metrics(str(done / "metrics.jsonl")) == entries
