"""A user's own image folders and runs: what happens to a folder, a subset, a bad file, a full
disk, a failing read, a run folder and the options of examples/alexnet_train.py.

Library behaviour is tested on tiny images (size 8 or 16); the training program through its
main(argv), on folders made here. Only one test trains (a few steps at batch 2); the others stop
with their error before any training.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import unicodedata
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


@pytest.mark.parametrize("names", [("Train", "Val"), ("training", "testing"),
                                   ("TRAIN", "valid_set")])
def test_split_folders_spelled_otherwise_are_refused_not_taken_as_classes(tmp_path, names):
    """DIR/Train + DIR/Val (or training/ + testing/ ...) each holding cat/ and dog/ would be read
    as two classes, "Train" and "Val", with the real classes merged: refused, saying why."""
    for split in names:
        pngs(tmp_path / "d" / split / "cat", 2, (250, 0, 0))
        pngs(tmp_path / "d" / split / "dog", 2, (0, 0, 250))
    shown = f"{names[0]!r}, {names[1]!r}" if names[0] < names[1] else f"{names[1]!r}, {names[0]!r}"
    for call in (lambda: find_layout(tmp_path / "d"),
                 lambda: load_image_folders(tmp_path / "d", size=8, cache_dir=tmp_path / "c")):
        with pytest.raises(ValueError) as exc:
            call()
        message = str(exc.value)
        assert f"holds {shown}, named like a split of the data" in message
        assert "sub-folders ('cat', 'dog')" in message and "each would be ONE class" in message
        assert f"{tmp_path / 'd'}/train/<class>/... beside {tmp_path / 'd'}/val/<class>/..." \
            in message
    # one level down (a single tree of classes), and through load_image_folder
    with pytest.raises(ValueError, match=r"holds .*named like a split.*DIR/train/<class>/"):
        load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
    assert not os.path.exists(tmp_path / "c") or os.listdir(tmp_path / "c") == []


def test_split_folder_spelled_otherwise_beside_train(tmp_path):
    """train/ + Val/: without the fix Val/ was left out and train/ split; refused. Beside
    train/ and val/, another one (Testing/) is named as not used, like test/."""
    for split in ("train", "Val"):
        pngs(tmp_path / split / "a", 2, (250, 0, 0))
        pngs(tmp_path / split / "b", 2, (0, 0, 250))
    with pytest.raises(ValueError, match=r"holds 'Val', named like a split.*it would be left out "
                                         r"and train/ split instead\. Rename the held-out "
                                         r"folder to .*/val/"):
        find_layout(tmp_path)
    os.rename(tmp_path / "Val", tmp_path / "val")
    pngs(tmp_path / "Testing" / "a", 1, (250, 0, 0))
    assert find_layout(tmp_path) == dict(train=str(tmp_path / "train"), val=str(tmp_path / "val"),
                                         unused=[str(tmp_path / "Testing")])


def test_a_class_named_like_a_split_holding_images_is_a_class(tmp_path):
    """Vehicles: a class Train/ (of trains) holds images, not class folders: no refusal."""
    pngs(tmp_path / "Train", 2, (250, 0, 0))
    pngs(tmp_path / "Test" / "nested", 2, (0, 250, 0))       # nested, but images of its own too
    pngs(tmp_path / "Test", 1, (0, 250, 0))
    pngs(tmp_path / "car", 2, (0, 0, 250))
    assert find_layout(tmp_path)["train"] == str(tmp_path)
    assert load_image_folder(tmp_path, size=8, cache_dir=tmp_path / ".c").classes == \
        ["Test", "Train", "car"]


def test_a_class_folder_that_links_to_nothing_is_refused(tmp_path):
    """A class kept on a disk that is not mounted: without the fix the class was dropped
    without a word (the network learnt one class fewer). A held-out folder that links to
    nothing is refused too (train/ would be split instead)."""
    animal_folder(tmp_path / "d", per_class=2)
    os.symlink(tmp_path / "unmounted" / "bird", tmp_path / "d" / "bird")
    with pytest.raises(ValueError) as exc:
        load_image_folders(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
    assert str(exc.value) == (
        f"load_image_folders: {str(tmp_path / 'd' / 'bird')!r} is a link to "
        f"{str(tmp_path / 'unmounted' / 'bird')!r}, which does not exist (a disk that is not "
        f"mounted?); if it is a class folder, that class would be missing. Make the link lead "
        f"to the images, or remove it")
    os.unlink(tmp_path / "d" / "bird")
    animal_folder(tmp_path / "d2" / "train", per_class=2)
    os.symlink(tmp_path / "unmounted" / "val", tmp_path / "d2" / "val")
    with pytest.raises(ValueError, match=r"/val' is a link to .*without it, val/ would be ignored"):
        find_layout(tmp_path / "d2")


def test_a_class_with_no_held_out_image_is_named(tmp_path):
    """Split here: a class with a single readable image keeps it for training; the warning
    names it, also when the cache is used again."""
    pngs(tmp_path / "d" / "a", 4, (250, 0, 0))
    pngs(tmp_path / "d" / "b", 1, (0, 0, 250))
    pngs(tmp_path / "d" / "c", 2, (0, 250, 0))
    (tmp_path / "d" / "c" / "001.png").write_bytes(b"\x89PNG broken")   # one readable left
    expected = ("load_image_folders: 2 class(es) with a single readable image, kept for "
                "training, have no held-out image, so the held-out score leaves them out: 'b', 'c'")
    for _ in range(2):                                     # built, then read from the cache
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train, val = load_image_folders(tmp_path / "d", val_fraction=0.5, size=8,
                                            cache_dir=tmp_path / "c")
        assert expected in [str(w.message) for w in caught]
        assert np.bincount(val.labels, minlength=3).tolist() == [2, 0, 0]
    # a user's held-out folder is used as it is: nothing to say about a split
    animal_folder(tmp_path / "t" / "train", per_class=1)
    animal_folder(tmp_path / "t" / "val", per_class=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folders(tmp_path / "t", size=8, cache_dir=tmp_path / "c")


def test_files_left_out_are_counted_and_named(tmp_path):
    """Files of a type the loader does not read, and images beside the class folders, are
    left out with a warning that counts them; hidden files without a word."""
    root = animal_folder(tmp_path / "d", per_class=2)
    (root / "cat" / "iphone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (root / "cat" / "more").mkdir()
    (root / "cat" / "more" / "other.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (root / "dog" / "notes.txt").write_text("hi")
    (root / "dog" / "README").write_text("hi")
    (root / "dog" / ".hidden.txt").write_text("hi")
    pngs(root / "fox" / ".thumbs", 1, (1, 2, 3))                 # a hidden folder
    Image.new("RGB", (8, 8)).save(root / "loose.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_image_folder(root, size=8, cache_dir=tmp_path / "c")
    assert len(ds) == 6 and ds.skipped == []
    assert sorted(str(w.message) for w in caught) == sorted([
        f"load_image_folder: 1 image(s) directly in {str(root)!r} left out, as they are in no "
        f"class folder (expected {root}/<class>/...): {str(root / 'loose.jpg')!r}",
        f"load_image_folder: 4 file(s) in the class folders of {str(root)!r} left out: not an "
        f"image type this loader reads (.heic: 2, .txt: 1, no extension: 1): "
        f"{str(root / 'cat' / 'iphone.heic')!r}, {str(root / 'cat' / 'more' / 'other.HEIC')!r}, "
        f"{str(root / 'dog' / 'README')!r} and 1 more"])
    assert all(w.filename == __file__ for w in caught)           # pointing at the caller
    # beside train/ and val/, an image is in neither part
    split = tmp_path / "split"
    for part in ("train", "val"):
        animal_folder(split / part, per_class=1)
    Image.new("RGB", (8, 8)).save(split / "stray.png")
    with pytest.warns(UserWarning) as caught:
        load_image_folders(split, size=8, cache_dir=tmp_path / "c")
    assert [str(w.message) for w in caught] == [
        f"load_image_folders: 1 image(s) directly in {str(split)!r} left out, as they are in no "
        f"class folder (expected {split}/train/<class>/...): {str(split / 'stray.png')!r}"]


def test_a_file_name_that_is_not_utf8_loads(tmp_path):
    """b"caf\\xe9.png" (Latin-1, from an old zip file) is held as "caf\\udce9.png": without the
    fix the cache key's strict UTF-8 made the whole folder unloadable. The warnings about such
    names must print on a strict UTF-8 stream."""
    animal_folder(tmp_path / "d", per_class=2)
    base = os.fsencode(tmp_path / "d")
    try:
        Image.new("RGB", (8, 8), (9, 9, 9)).save(open(base + b"/cat/caf\xe9.png", "wb"), "PNG")
    except OSError:                                  # a file system that takes UTF-8 names only
        pytest.skip("this file system refuses names that are not valid UTF-8")
    with open(base + b"/dog/bad\xe9.png", "wb") as f:
        f.write(b"not an image")
    with open(base + b"/fox/n\xf6te.txt", "wb") as f:
        f.write(b"hi")
    for _ in range(2):                                             # built, then from the cache
        with pytest.warns(UserWarning) as caught:
            ds = load_image_folder(tmp_path / "d", size=8, cache_dir=tmp_path / "c")
        assert len(ds) == 7 and ds.skipped == [os.fsdecode(base + b"/dog/bad\xe9.png")]
        messages = [str(w.message) for w in caught]
        assert any("bad\\udce9.png" in m for m in messages)
        assert any("n\\udcf6te.txt" in m for m in messages)
        for m in messages:
            m.encode("utf-8")                                      # raises on a surrogate
    assert (ds.images == 9).all(axis=(1, 2, 3)).sum() == 1       # the café image is in


def test_class_names_in_two_unicode_forms_are_told_apart(tmp_path):
    """café in NFC under train/ and in NFD (as macOS writes it) under val/: the refusal says
    that the two identical-looking names differ in their normal form, with escapes."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    for split, name in (("train", nfc), ("val", nfd)):
        pngs(tmp_path / split / name, 1, (1, 2, 3))
        pngs(tmp_path / split / "tea", 1, (1, 2, 3))
    if sorted(os.listdir(tmp_path / "val")) != sorted([nfd, "tea"]):
        pytest.skip("this file system normalises file names")
    with pytest.raises(ValueError) as exc:
        load_image_folders(tmp_path, size=8, cache_dir=tmp_path / ".c")
    assert str(exc.value).endswith(
        f"only in train [{nfc!r}], only in val [{nfd!r}]. Of these, 1 pair(s) are the same name "
        f"in different Unicode normal forms (NFC/NFD), which look the same when printed: "
        f"'caf\\xe9' (NFC) in train, 'cafe\\u0301' (NFD) in val. Rename one of the two folders "
        f"so that both names have the same code points")


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


def test_an_image_reached_from_two_classes_is_refused_and_a_repeat_kept_once(tmp_path):
    """A link out of a class folder into another class (or up to the data's root) would learn
    that class's images under two labels, and a split could put one copy on each side."""
    d = animal_folder(tmp_path / "d", per_class=2)
    os.symlink(d / "dog", d / "cat" / "puppies")
    with pytest.raises(ValueError, match=r"2 image file\(s\) are reached from two class folders.*"
                                         r"cat/puppies/000.png' \(class 'cat'\) and .*dog/000.png' \(class 'dog'\)"):
        load_image_folders(d, val_fraction=0.5, size=8, cache_dir=tmp_path / "c")
    os.unlink(d / "cat" / "puppies")
    os.symlink(d, d / "fox" / "up")                               # a stray link to the root
    with pytest.raises(ValueError, match="reached from two class folders"):
        load_image_folder(d, size=8, cache_dir=tmp_path / "c")
    os.unlink(d / "fox" / "up")
    # a link to an image of its own class: the same image once, said out loud
    os.symlink(d / "fox" / "000.png", d / "fox" / "again.png")
    with pytest.warns(UserWarning, match=r"1 image file\(s\) are reached twice.*fox/again.png"):
        ds = load_image_folder(d, size=8, cache_dir=tmp_path / "c")
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_a_zip_files_mac_metadata_folder_is_named_for_what_it_is(tmp_path):
    d = animal_folder(tmp_path / "d", per_class=1)
    (d / "__MACOSX" / "cat").mkdir(parents=True)
    (d / "__MACOSX" / "cat" / "._000.png").write_bytes(b"\0\5\26\7")
    with pytest.raises(ValueError, match="__MACOSX' contains no image files.*unpacked zip file.*delete it"):
        load_image_folder(d, size=8, cache_dir=tmp_path / "c")


def test_class_folders_left_beside_a_split_are_named(tmp_path):
    """Images copied (not moved) into train/ and val/ leave their class folders beside them:
    not read, and said so."""
    d = tmp_path / "d"
    animal_folder(d / "train", per_class=2)
    animal_folder(d / "val", per_class=1)
    animal_folder(d, per_class=3)                                  # the old class folders
    with pytest.warns(UserWarning, match=r"3 folder\(s\) of images beside train/ .* are not read: "
                                         r"'cat' \(3 images\), 'dog' \(3 images\), 'fox' \(3 images\)"):
        train, val = load_image_folders(d, size=8, cache_dir=tmp_path / "c")
    assert (len(train), len(val)) == (6, 3)
    for name in ("cat", "dog", "fox"):
        shutil.rmtree(d / name)
    os.symlink(d / "train", d / "train_again")                     # a link to train/ is train/
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folders(d, size=8, cache_dir=tmp_path / "c")


def test_a_held_out_image_linked_from_training_is_refused(tmp_path):
    d = tmp_path / "d"
    animal_folder(d / "train", per_class=2)
    animal_folder(d / "val", per_class=1)
    os.symlink(d / "val" / "dog" / "000.png", d / "train" / "dog" / "seen.png")
    with pytest.raises(ValueError, match=r"1 held-out image file\(s\).*are training images too "
                                         r".*val/dog/000.png' is .*train/dog/seen.png'"):
        load_image_folders(d, size=8, cache_dir=tmp_path / "c")


def test_an_edit_that_keeps_size_and_time_is_decoded_again(tmp_path):
    """exiftool -P, cp -p and tar x keep a file's modification time; its change time moves."""
    d = animal_folder(tmp_path / "d", per_class=1)
    first = load_image_folder(d, size=8, cache_dir=tmp_path / "c")
    target = d / "cat" / "000.png"
    st = os.stat(target)
    Image.new("RGB", (12, 10), (1, 2, 3)).save(tmp_path / "new.png")
    assert os.path.getsize(tmp_path / "new.png") == st.st_size     # flat PNGs: the same size
    with open(target, "r+b") as f:                                 # written in place
        f.write((tmp_path / "new.png").read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))         # the old modification time
    assert os.stat(target).st_mtime_ns == st.st_mtime_ns and os.path.getsize(target) == st.st_size
    again = load_image_folder(d, size=8, cache_dir=tmp_path / "c")
    assert first.images[0, 0, 0].tolist() == [200, 30, 30]
    assert again.images[0, 0, 0].tolist() == [1, 2, 3]


def test_float_and_wide_integer_images_are_read_by_a_fixed_rule_or_refused(tmp_path):
    d = tmp_path / "d"
    pngs(d / "b", 1, (0, 0, 250))
    (d / "a").mkdir()

    def tif(name, values, mode="F"):
        dtype = np.float32 if mode == "F" else np.int32
        Image.fromarray(np.asarray(values, dtype), mode).save(d / "a" / name)

    half = np.full((6, 6), 0.5)
    over = np.full((40, 40), 0.5)
    over[0, :4] = 1.01
    tif("1_overshoot.tif", over)                                           # 0..1, a little over
    tif("2_dark.tif", np.full((6, 6), 40.0))                               # 0..255
    tif("3_wild.tif", np.full((6, 6), 3000.0))                             # neither
    tif("4_nan.tif", np.where(np.eye(6, dtype=bool), np.nan, half))
    tif("5_int32.tif", np.full((6, 6), 70000), mode="I")                  # beyond 16 bits
    tif("6_bytes.tif", np.full((6, 6), 200), mode="I")                    # 8-bit values, 32-bit file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_image_folder(d, size=6, cache_dir=tmp_path / "c")
    said = [str(w.message) for w in caught]
    skipped = sorted(os.path.basename(p) for p in ds.skipped)
    assert skipped == ["3_wild.tif", "4_nan.tif", "5_int32.tif"]
    assert any("3_wild.tif" in m and "neither 0..1 nor 0..255" in m for m in said)
    assert any("4_nan.tif" in m and "NaN" in m for m in said)
    assert any("5_int32.tif" in m and "outside the 0..65535" in m for m in said)
    # the warning about 8-bit values in a wide image names its file
    assert any("6_bytes.tif" in m and "nearly black" in m for m in said)
    overshoot, dark, wide = ds.images[0], ds.images[1], ds.images[2]
    assert np.all(overshoot[1:] == 128)                             # read as 0..1: grey, not black
    assert np.all(dark == 40)
    assert np.all(wide == 1)                                       # 200 / 257, as it says


def test_a_transparent_colour_becomes_white_in_grey_and_rgb_images_too(tmp_path):
    d = tmp_path / "d"
    pngs(d / "b", 1, (0, 0, 250))
    (d / "a").mkdir()
    Image.new("RGB", (6, 6), (10, 200, 30)).save(d / "a" / "rgb.png", transparency=(10, 200, 30))
    Image.new("L", (6, 6), 77).save(d / "a" / "grey.png", transparency=77)
    ds = load_image_folder(d, size=6, cache_dir=tmp_path / "c")
    assert np.all(ds.images[:2] == 255)


def test_a_cache_missing_unreadable_files_is_used_until_one_can_be_read(tmp_path, monkeypatch):
    """A file that fails to read (a bad sector: it opens, then EIO) leaves the cache without it;
    the cache is used as it is while the file still fails, and built again once it reads."""
    d = animal_folder(tmp_path / "d", per_class=2)
    flaky = str(d / "dog" / "001.png")
    real_read, real_decode = folder_module._read_file, folder_module.decode_image
    broken = [True]

    def read(path):
        if path == flaky and broken[0]:
            raise OSError(errno.EIO, "Input/output error", path)
        return real_read(path)
    decoded = []
    monkeypatch.setattr(folder_module, "_read_file", read)
    monkeypatch.setattr(folder_module, "decode_image", lambda *a: decoded.append(a) or real_decode(*a))
    with pytest.warns(UserWarning, match="001.png.*could not be read"):
        assert len(load_image_folder(d, size=8, cache_dir=tmp_path / "c")) == 5
    decoded.clear()
    with pytest.warns(UserWarning, match="could not be read when the cache.*001.png"):
        assert len(load_image_folder(d, size=8, cache_dir=tmp_path / "c")) == 5
    assert decoded == []                                           # still failing: not decoded again
    broken[0] = False                                              # the sector is read at last
    assert len(load_image_folder(d, size=8, cache_dir=tmp_path / "c")) == 6
    assert len(decoded) == 6


def test_decoding_warnings_are_said_once_per_kind_with_the_files(tmp_path):
    d = tmp_path / "d"
    pngs(d / "b", 1, (0, 0, 250))
    (d / "a").mkdir()
    for name in ("x.png", "y.png"):                                # 8-bit values in 16-bit files
        Image.fromarray(np.full((6, 6), 200, np.uint16)).save(d / "a" / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image_folder(d, size=6, cache_dir=tmp_path / "c")
    said = [str(w.message) for w in caught if "nearly black" in str(w.message)]
    assert len(said) == 1
    assert "2 image(s) decoded with a warning" in said[0] and "x.png" in said[0] and "y.png" in said[0]


def test_resampled_float_images_keep_their_range(tmp_path):
    """A bicubic or Lanczos resize overshoots a 0..1 image to about -0.13..1.25, and a 0..255
    one to about -33..318: clipped, each in its own range, not read as the other or dropped."""
    d = tmp_path / "d"
    pngs(d / "b", 1, (0, 0, 250))
    (d / "a").mkdir()
    ring = np.full((40, 40), 0.5)                                  # 2 of 1,600 values outside
    ring[0, 0], ring[0, 1] = 1.25, -0.13
    Image.fromarray(ring.astype(np.float32), "F").save(d / "a" / "1.tif")
    Image.fromarray((ring * 255).astype(np.float32), "F").save(d / "a" / "2.tif")
    signed = np.linspace(-1, 1, 1600).reshape(40, 40)              # -1..1: another range, refused
    Image.fromarray(signed.astype(np.float32), "F").save(d / "a" / "3.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_image_folder(d, size=6, cache_dir=tmp_path / "c")
    said = sorted(str(w.message) for w in caught if "decoded with a warning" in str(w.message))
    assert len(said) == 2
    assert "1 image(s) decoded with a warning: float (F) images read as 0..1, " in said[0] and "1.tif" in said[0]
    assert "read as 0..255, 0.1-1% of their values outside that range" in said[1] and "2.tif" in said[1]
    assert [os.path.basename(p) for p in ds.skipped] == ["3.tif"]
    assert any("3.tif" in str(w.message) and "from -1 to 1: read as 0..255, 50% of them would be "
               "clipped" in str(w.message) for w in caught)
    for image in ds.images[:2]:                                    # size 6: the corner's overshoot
        assert np.all(image[1:, 1:] == 128)                        # smoothed away, the rest grey


def test_a_hard_link_is_the_same_file(tmp_path):
    d = animal_folder(tmp_path / "d", per_class=2)
    os.link(d / "fox" / "000.png", d / "fox" / "again.png")
    with pytest.warns(UserWarning, match=r"reached twice in their class folder \(through links, or hard "):
        assert len(load_image_folder(d, size=8, cache_dir=tmp_path / "c")) == 6
    s = tmp_path / "s"
    animal_folder(s / "train", per_class=2)
    animal_folder(s / "val", per_class=1)
    os.link(s / "val" / "cat" / "000.png", s / "train" / "cat" / "seen.png")
    with pytest.raises(ValueError, match="are training images too.*copy them into the held-out folder"):
        load_image_folders(s, size=8, cache_dir=tmp_path / "c")


def test_bilevel_and_16_bit_images_with_a_transparent_value_become_white(tmp_path):
    d = tmp_path / "d"
    pngs(d / "b", 1, (0, 0, 250))
    (d / "a").mkdir()
    Image.new("1", (6, 6), 0).save(d / "a" / "bits.png", transparency=0)
    Image.fromarray(np.full((6, 6), 1000, np.uint16)).save(d / "a" / "deep.png", transparency=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_image_folder(d, size=6, cache_dir=tmp_path / "c")
    assert np.all(ds.images[:2] == 255)


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
    assert sorted(os.listdir(cache / folder)) == ["files.json", "images.npy", "labels.npy", "meta.json"]
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


def test_a_new_cache_names_the_earlier_caches_of_the_same_folder(tmp_path):
    """Images added: a new cache is built, and the earlier one, left for runs that may read
    it, is named with the space it takes; a cache of another size, or of another folder, is not."""
    animal_folder(tmp_path / "d", per_class=2)
    animal_folder(tmp_path / "other", per_class=2)
    cache = tmp_path / "c"
    load_image_folders(tmp_path / "d", size=8, cache_dir=cache)
    load_image_folders(tmp_path / "other", size=8, cache_dir=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # another size: nothing said
        load_image_folders(tmp_path / "d", size=6, cache_dir=cache)
    (earlier,) = [name for name in os.listdir(cache)
                  if json.load(open(cache / name / "meta.json"))["size"] == 8
                  and json.load(open(cache / name / "meta.json"))["source"] == os.path.realpath(tmp_path / "d")]
    pngs(tmp_path / "d" / "cat", 3, (200, 30, 30))                # cat/002.png added
    with pytest.warns(UserWarning) as said:   # (the cache folder spelled with a doubled slash)
        load_image_folders(tmp_path / "d", size=8, cache_dir=str(cache) + "//")
    (text,) = [str(w.message) for w in said if "earlier cache" in str(w.message)]
    assert f"1 earlier cache(s) of {os.path.realpath(tmp_path / 'd')}" in text and earlier in text
    assert "delete them if no run needs the folder as it was" in text
    assert len(os.listdir(cache)) == 4                           # nothing deleted


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


def test_a_resumed_run_names_the_files_added_to_and_removed_from_a_split_folder(prog, tmp_path, capsys):
    """One tree, split here (one cache for both parts): a file removed and one added since the
    run started are named in the refusal, read from the caches' files.json."""
    animal_folder(tmp_path / "d", per_class=4)
    prog.main(folder_argv(tmp_path / "d", tmp_path, "--stop-after-steps", "1"))
    os.remove(tmp_path / "d" / "cat" / "003.png")
    pngs(tmp_path / "d" / "dog", 5, (30, 30, 200))                # dog/004.png added
    msg = run_error(prog, capsys, ["--resume", str(tmp_path / "run" / "latest.npz"),
                                   "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert "; files added: 'd/dog/004.png'; removed: 'd/cat/003.png'." in msg


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


def test_split_folders_spelled_otherwise_are_refused_before_training(prog, tmp_path, capsys):
    data = tmp_path / "d"
    for split in ("Train", "Val"):
        animal_folder(data / split, per_class=2)
    msg = run_error(prog, capsys, folder_argv(data, tmp_path))
    assert f"--data: {str(data)!r} holds 'Train', 'Val', named like a split of the data" in msg
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
