"""Image folders: root/<class>/<image files>, decoded once into a memory-mapped .npy cache.

Layouts understood by load_image_folders(data_dir) (see find_layout):

    data_dir/train/<class>/*.jpg  and  data_dir/val/<class>/*.jpg    (split given; the held-out
                                   folder may also be named valid/, validation/ or test/)
    data_dir/<class>/*.jpg   or    data_dir/train/<class>/*.jpg alone  (split made here, per class)

The split folders' names are spelled exactly so, in lower case. A folder named like a split in
another spelling (Train/, Val/, training/, testing/, val_set/: SPLIT_NAMES) that holds sub-folders
and no images is refused: read as a class folder, the classes inside it would be merged into
one class, and the network would learn "training vs held-out images" without a word.

Every image is made AlexNet-ready once (docs/alexnet.md, "Data"): converted to 8-bit RGB, rescaled so
that its shorter side is `size` (256) and cut to the central size×size square. The result is
stored as one uint8 .npy file (N, size, size, 3) in a cache folder and read back as a memory
map, so later epochs and runs never decode a JPEG again. The cache's name is a hash of the file
list with the files' sizes, modification and change times, the labels, `size` and
(when the split is made here) the split's fraction and seed: adding, removing or editing an
image makes a new cache, even an edit that keeps the file's size and modification time.

Colour conversions: grey, bilevel, CMYK, YCbCr and palette images are converted by Pillow (an
ICC colour profile is not applied: the numbers are used as they are stored); 16-bit integer
images (modes "I;16", and "I" holding 0..65535) are scaled from 0..65535 to 0..255 (Pillow's own
conversion would clip them at 255), with a warning when all values lie below 256 (8-bit data in
a 16-bit file comes out nearly black), and refused when they leave 0..65535; 32-bit float images
(mode "F") are read as 0..1 if their values lie within -0.5..1.5, else as 0..255 if within
-127.5..382.5, the overshoot of a resampled image clipped (said when more than 0.1% of the
values are), and refused otherwise, with NaN, or with more than 1% of the values outside;
images with transparency (RGBA, LA, PA, and bilevel, grey, 16-bit, palette or RGB images with a
transparent colour) are composited on a WHITE background; EXIF orientation is applied (the
image as a viewer shows it); of an animated GIF/WebP or a multi-page TIFF the first frame is
used; a large JPEG is shrunk by its decoder first (decode_image). What Pillow and these rules warn about while decoding is said once per
kind after the decoding, with the number of files and the first few names.

Bad files are skipped with a warning, never a crash, and the split (when made here) is made
after decoding, among the images that could be read, so every class with two readable images
has one in each part. Two kinds of bad file are told apart:

    corrupt      the file was read completely but is not a decodable image: remembered in the
                 cache (dataset.skipped), and the warning is repeated whenever the cache is used;
    unreadable   reading the file failed (OSError: a dangling link, no permission, an I/O
                 error): possibly passing, so never remembered as bad. A cache built while
                 files were unreadable is used as it is (with a warning naming them) until one
                 of them can be read again; then it is rebuilt.

A class left without any readable image is an error, and so is a class folder that is a link
to nothing (a disk that is not mounted): that class would be missing. When the split is made
here, a class with a single readable image keeps it for training; a warning names it, as the
held-out score leaves it out.

Files left out are said too, in a warning each time the folder is loaded: files in the class
folders that are no image type this loader reads (counted by ending: .heic, .txt, ...; see
IMAGE_EXTENSIONS), and images lying directly in the folder beside the class folders. Hidden files
and folders (".name") are left out without a word. File names that are not valid UTF-8 (held by
Python with surrogates) are read like any other, and shown escaped in the messages.

The cache is one folder, cache_dir/folder-<key>/, holding images.npy, labels.npy, meta.json and
files.json (the rows' files by name, from the folder they were found in: cache_file_names;
a dataset loaded from it has the folder as its `cache`).
It is built in a temporary folder beside it, its files written out to disk (fsync), and then
renamed into place as one unit, so a reader sees a whole cache or none. Several processes
(data-parallel ranks) may build the same cache at once: the first rename wins and the others
use the winner's cache, so images and labels always come from the same build. The disk space
for the images is reserved before decoding starts, so a full disk is a clear OSError naming the
cache and the bytes needed, and the temporary folder is removed. An earlier cache of the same
folder (same size and split: its files have changed since) is not deleted, as a run may still
read it; building the new one names the earlier ones and the space they take, in a warning
(caches built by tinynet versions before this one record no folder, and are not named).
"""

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import unicodedata
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..files import fsync_folder
from .dataset import ArrayDataset, check_int, load_json, stratified_split_indices

# File name endings (lower case) taken as images; other files in class folders are left out,
# counted by ending in a warning (hidden files, ".name", without a word).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")

# Names accepted for the held-out folder beside data_dir/train, in order of preference.
HELD_OUT_NAMES = ("val", "valid", "validation", "test")

# Bump when decoding or the cache layout changes, so that caches of older code are not reused.
_CACHE_VERSION = 3


def default_cache_dir():
    """$XDG_CACHE_HOME/tinynet/folders, or ~/.cache/tinynet/folders."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tinynet", "folders")


# ------------------------------------------------------------------------------------------
# Finding the files
# ------------------------------------------------------------------------------------------

def _listing(path):
    """What `path` holds, hidden entries (".name") left out: (folders, files, dangling), sorted
    names of its sub-folders (links to folders included), of its other entries, and of those
    of them that are links to nothing (a dangling link is not a folder, even if it was meant to
    lead to one)."""
    folders, files, dangling = [], [], []
    for entry in os.scandir(path):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            folders.append(entry.name)
        else:
            files.append(entry.name)
            if entry.is_symlink() and not os.path.exists(entry.path):
                dangling.append(entry.name)
    return sorted(folders), sorted(files), sorted(dangling)


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _image_files(folder):
    """The files under `folder`: sub-folders included, linked ones too (each real folder
    visited once, so a link loop ends), hidden ones skipped.

    Returns: (images, others), sorted paths of the image files and of the other (non-hidden)
    files, which the loader leaves out and reports.
    """
    images, others, visited = [], [], set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in visited:          # reached again through a link: already listed
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith("."):
                (images if _is_image_name(f) else others).append(os.path.join(here, f))
    return sorted(images), sorted(others)


def _stat(path):
    """os.stat(path) (links followed), or None if it fails (a link to nothing, no permission)."""
    try:
        return os.stat(path)
    except OSError:
        return None


def _same_file(a, b):
    """True if the paths `a` and `b` lead to the same file or folder (False if either is gone)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _file_identity(path, st):
    """What `path` is on disk, from its os.stat result `st` (_stat): its device and inode (the
    same for every link to the file, hard links too), or where its links lead when it could not
    be stat'ed (a link to nothing)."""
    return (st.st_dev, st.st_ino) if st is not None and st.st_ino else os.path.realpath(path)


def _one_file_once(paths, labels, stats, classes, func, stacklevel):
    """Each image file once: a file reached twice in one class (through a link) is kept once,
    with a warning; a file reached from two classes is refused (ValueError naming both paths),
    as its image would be learnt under two labels, and land on both sides of a split.

    Returns: (paths, labels, stats) without the repeats."""
    first, keep, repeats, clashes = {}, [], [], []
    for i, real in enumerate(map(_file_identity, paths, stats)):
        j = first.setdefault(real, i)
        if j == i:
            keep.append(i)
        elif labels[j] == labels[i]:
            repeats.append(paths[i])
        else:
            clashes.append(f"{paths[j]!r} (class {classes[labels[j]]!r}) and {paths[i]!r} "
                           f"(class {classes[labels[i]]!r})")
    if clashes:
        raise ValueError(f"{func}: {len(clashes)} image file(s) are reached from two class folders "
                         f"(through links, or hard links), so each would be learnt under two labels: "
                         f"{'; '.join(clashes[:3])}{' and more' if len(clashes) > 3 else ''}. "
                         f"Remove the links that lead out of a class folder into another (to use an "
                         f"image in two classes, copy it)")
    if repeats:
        warnings.warn(f"{func}: {len(repeats)} image file(s) are reached twice in their class "
                      f"folder (through links, or hard links) and used once: {_some(repeats)}",
                      stacklevel=stacklevel + 1)
    return [paths[i] for i in keep], [labels[i] for i in keep], [stats[i] for i in keep]


def printable(text):
    """`text` safe to print on any stream: the characters Python holds for the bytes of a file
    name that is not valid UTF-8 (surrogates, such as \\udce9 for a Latin-1 "é") cannot be
    written to a UTF-8 terminal or file and would raise UnicodeEncodeError there, so they are
    shown as escapes. (repr() of a str escapes them too; this is for text shown without quotes.)"""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _dangling_link_error(func, path, what):
    """ValueError for a link `path` that leads nowhere: a class (or a split of the data) would
    be missing without a word, which changes the task the network learns."""
    try:
        target = repr(os.readlink(path))
    except OSError:
        target = "a place"
    return ValueError(f"{func}: {path!r} is a link to {target}, which does not exist (a disk "
                      f"that is not mounted?); {what}. Make the link lead to the images, or "
                      f"remove it")


# Names of the parts of a data set, compared in lower case with anything but letters and
# digits, a trailing "set" and trailing digits left out ("Train", "TEST", "val_set", "val2017"
# all match). find_layout knows only train/ and HELD_OUT_NAMES, spelled exactly; a folder
# named like any of these that holds sub-folders but no images of its own is a split of the
# data spelled otherwise, not a class: read as a class, the class folders inside it would be
# merged into one class, and the network would learn "training vs held-out images".
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing", "eval",
               "evaluation", "dev", "holdout", "heldout")

# How find_layout wants the split folders spelled, for the messages.
_SPELLING = (f"these names, in lower case; the held-out folder may also be named "
             f"{', '.join(n + '/' for n in HELD_OUT_NAMES[1:-1])} or {HELD_OUT_NAMES[-1]}/")


# What reading such folders as classes would do, for the messages.
_READ_AS_CLASSES = "read as class folders, each would be ONE class, the class folders inside it merged"


def _split_like(folder):
    """True if the folder `folder` is named like a split of the data (SPLIT_NAMES) and holds
    what a split holds: sub-folders, and no image file of its own."""
    word = "".join(ch for ch in os.path.basename(folder).casefold() if ch.isalnum())
    word = word.rstrip("0123456789")
    word = word[:-3] if word.endswith("set") else word
    if word not in SPLIT_NAMES:
        return False
    try:
        folders, files, _ = _listing(folder)
    except OSError:
        return False
    return bool(folders) and not any(_is_image_name(f) for f in files)


def _split_like_error(func, root, names, outcome, way_out):
    """ValueError for the folders `names` in `root` that _split_like finds: what they are, what
    reading them as they are would do (`outcome`) and how to lay the data out (`way_out`)."""
    inside = _listing(os.path.join(root, names[0]))[0]
    return ValueError(
        f"{func}: {root!r} holds {', '.join(repr(n) for n in names)}, named like a split of the "
        f"data into training and held-out images and holding sub-folders "
        f"({', '.join(repr(n) for n in inside[:3])}{', ...' if len(inside) > 3 else ''}), "
        f"not images; {outcome}. {way_out}")


def _warn_loose_images(folder, files, func, expected, stacklevel):
    """Say that the image files among `files`, lying directly in `folder`, are left out.
    stacklevel: as for warnings.warn, counted from the caller of this function."""
    loose = [os.path.join(folder, f) for f in files if _is_image_name(f)]
    if loose:
        warnings.warn(f"{func}: {len(loose)} image(s) directly in {folder!r} left out, as they "
                      f"are in no class folder (expected {expected}): {_some(loose)}",
                      stacklevel=stacklevel + 1)


def scan_image_folder(root, func="load_image_folder"):
    """List the images of root/<class>/.

    Returns: (paths, labels, classes, stats): paths a list of str, labels (N,) int64 with
        labels[i] = index in `classes` of the folder of paths[i], classes the sorted folder names,
        stats[i] the os.stat of paths[i] or None (_stat; taken once, for the duplicates and the
        cache key). Each image file is listed once: one reached twice in its class through a link is kept
        once (with a warning), one reached from two classes is refused.
    Raises FileNotFoundError if root is missing, ValueError if it has no class folders, only
    one, a class folder without image files (naming it), a link to nothing in place of a class
    folder, an image file reached from two class folders through links, or a class folder
    named like a split of the data that holds sub-folders instead of images (train/val/test in
    another spelling: SPLIT_NAMES).
    Warns (UserWarning) about the files left out: images lying directly in root, and files in
    the class folders that are no image type this loader reads (IMAGE_EXTENSIONS). Hidden files
    are left out without a word.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{func}: folder {root!r} does not exist "
                                f"(expected root/<class>/<images>)")
    classes, files, dangling = _listing(root)
    for name in dangling:
        # a link with an image's name is a loose image, reported below with the others
        if not _is_image_name(name):
            raise _dangling_link_error(func, os.path.join(root, name),
                                       "if it is a class folder, that class would be missing")
    split_like = [n for n in classes if _split_like(os.path.join(root, n))]
    if split_like:
        raise _split_like_error(
            func, root, split_like,
            _READ_AS_CLASSES,
            f"Expected one folder per class holding its images, "
            f"{os.path.join(printable(root), '<class>')}/*.jpg; data already split is laid out "
            f"as DIR/train/<class>/... beside DIR/val/<class>/... ({_SPELLING})")
    if not classes:
        raise ValueError(f"{func}: {root!r} has no class folders; expected one sub-folder per "
                         f"class, e.g. {os.path.join(root, 'cat')}/001.jpg")
    if len(classes) == 1:
        raise ValueError(f"{func}: {root!r} has a single class folder ({classes[0]!r}); "
                         f"classification needs at least two")
    paths, labels, others = [], [], []
    for label, name in enumerate(classes):
        images, not_images = _image_files(os.path.join(root, name))
        if not images:
            mac = (" (__MACOSX holds the Mac's metadata of an unpacked zip file, not a class: "
                   "delete it)" if name == "__MACOSX" else "")
            raise ValueError(f"{func}: class folder {os.path.join(root, name)!r} contains no image "
                             f"files (looked for {', '.join(IMAGE_EXTENSIONS)}){mac}")
        paths += images
        labels += [label] * len(images)
        others += not_images
    paths, labels, stats = _one_file_once(paths, labels, [_stat(p) for p in paths], classes, func,
                                          stacklevel=3)
    # Said once per load, like the files skipped when the cache was built.
    _warn_loose_images(root, files, func, f"{os.path.join(printable(root), '<class>')}/...",
                       stacklevel=3)
    if others:
        kinds = {}
        for path in others:
            kind = os.path.splitext(path)[1].lower() or "no extension"
            kinds[kind] = kinds.get(kind, 0) + 1
        counts = ", ".join(f"{printable(k)}: {n}" for k, n in sorted(kinds.items()))
        warnings.warn(f"{func}: {len(others)} file(s) in the class folders of {root!r} left out: "
                      f"not an image type this loader reads ({counts}): {_some(others)}",
                      stacklevel=3)
    return paths, np.array(labels, dtype=np.int64), classes, stats


def find_layout(data_dir, func="find_layout"):
    """Which of the two layouts `data_dir` has.

    Returns: dict(train=folder of the training classes, val=folder of the held-out classes or
        None when the split is to be made here, unused=[other held-out folders found, not used]).
        With data_dir/train/ the held-out folder is the first of HELD_OUT_NAMES (val, valid,
        validation, test) present beside it; without one, train/ is split. Without train/,
        data_dir itself holds the class folders.
    The names must be spelled exactly so (lower case). A folder beside them named like a split
    in another spelling (Train/, Val/, training/, testing/, val_set/: SPLIT_NAMES) that holds
    sub-folders is listed in `unused` when train/ and a held-out folder are there; otherwise
    it is refused, as it would be read as a class (or left out while train/ is split).
    Raises FileNotFoundError if data_dir is missing, ValueError if it has a held-out folder
    (val/, test/, ...) but no train/ beside it, a split folder in another spelling (as above),
    or train/ or a held-out folder that is a link to nothing.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{func}: folder {data_dir!r} does not exist")
    known = ("train",) + HELD_OUT_NAMES
    folders, _, dangling = _listing(data_dir)
    for name in dangling:
        if name in known:
            raise _dangling_link_error(func, os.path.join(data_dir, name),
                                       f"without it, {name}/ would be ignored")
    held_out = [os.path.join(data_dir, n) for n in HELD_OUT_NAMES
                if os.path.isdir(os.path.join(data_dir, n))]
    train_dir = os.path.join(data_dir, "train")
    has_train = os.path.isdir(train_dir)
    used = held_out + ([train_dir] if has_train else [])
    # Folders named like a split in another spelling. On a file system that ignores case
    # (macOS, Windows) Train/ is train/ itself: samefile leaves it out.
    misspelt = [n for n in folders if n not in known and _split_like(os.path.join(data_dir, n))
                and not any(_same_file(os.path.join(data_dir, n), u) for u in used)]
    if has_train and held_out:
        return dict(train=train_dir, val=held_out[0],
                    unused=held_out[1:] + [os.path.join(data_dir, n) for n in misspelt])
    here = printable(data_dir)
    if misspelt and has_train:
        them = "it" if len(misspelt) == 1 else "they"
        raise _split_like_error(
            func, data_dir, misspelt,
            f"as no held-out folder of a name this loader knows is beside train/, {them} would "
            f"be left out and train/ split instead",
            f"Rename the held-out folder to {here}/val/ to use its images, or move {them} out "
            f"of {here} to have train/ split here")
    if misspelt:
        raise _split_like_error(
            func, data_dir, misspelt,
            _READ_AS_CLASSES,
            f"Lay the data out as {here}/train/<class>/... beside {here}/val/<class>/... "
            f"({_SPELLING}), or with the class folders directly in {here}")
    if has_train:
        return dict(train=train_dir, val=None, unused=[])
    if held_out:
        raise ValueError(f"{func}: {data_dir!r} has {os.path.basename(held_out[0])}/ but no train/ "
                         f"beside it; expected {data_dir}/train/<class>/... with it, or one "
                         f"folder per class directly in {data_dir}")
    return dict(train=data_dir, val=None, unused=[])


# ------------------------------------------------------------------------------------------
# Decoding one image
# ------------------------------------------------------------------------------------------

def _to_rgb(image):
    """Any Pillow image -> 8-bit "RGB" (see the module docstring for the rules). Raises
    ValueError for a float or 32-bit image whose values fit no known range; warns (UserWarning,
    one text per kind, so that _decode_all can count the files) about a wide image that comes
    out nearly black, or float values clipped."""
    if image.mode == "1" and "transparency" in image.info:
        image = image.convert("L")      # Pillow keeps the transparent value as 0 or 255
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")   # one transparent colour (a palette entry, a grey or RGB value)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit holding 16-bit) integer grey: 0..65535 to 0..255 (Pillow would clip)
        values = np.asarray(image, dtype=np.float64)
        lo, hi = (values.min(), values.max()) if values.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"a {image.mode} image with values from {lo:g} to {hi:g}, outside the "
                             f"0..65535 this loader scales to 0..255; save it as 8 or 16-bit")
        if 0 < hi <= 255:
            warnings.warn("16 or 32-bit images whose values all lie below 256: scaled from "
                          "0..65535, they come out nearly black (if they hold 8-bit values, save "
                          "them as 8-bit images)")
        grey = (values / 257.0).round().astype(np.uint8)
        clear = image.info.get("transparency")
        if clear is None:
            image = Image.fromarray(grey, "L")
        else:                           # a transparent value: alpha 0 there, made white below
            alpha = np.where(values == clear, 0, 255).astype(np.uint8)
            image = Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")
    elif image.mode == "F":
        image = Image.fromarray(_float_to_bytes(np.asarray(image, dtype=np.float64)), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def _float_to_bytes(values):
    """A float grey image -> uint8. The range is told from the values: up to 1.5 (and down to
    -0.5) it is 0..1, the usual convention of float images, scaled by 255; up to 382.5 (and down
    to -127.5) it is 0..255. Either way the overshoot that resampling leaves (a bicubic or
    Lanczos resize of a 0..1 image reaches 1.25) is clipped, with a warning when more than
    0.1% of the values are; more than 1% outside is no overshoot but another range (-1..1, say)
    and raises ValueError, as do NaN, infinities and values beyond both ranges. An image of
    0..255 whose values are all below 1.5 is read as 0..1."""
    if values.size == 0:
        return values.astype(np.uint8)
    if not np.isfinite(values).all():
        raise ValueError("a float (F) image with NaN or infinite pixels: no grey level can "
                         "stand for them")
    lo, hi = values.min(), values.max()
    if lo >= -0.5 and hi <= 1.5:
        top, scale = 1.0, 255.0
    elif lo >= -127.5 and hi <= 382.5:
        top, scale = 255.0, 1.0
    else:
        raise ValueError(f"a float (F) image with values from {lo:g} to {hi:g}, in neither 0..1 "
                         f"nor 0..255 (give or take half); save it as an 8 or 16-bit image")
    outside = np.count_nonzero((values < 0) | (values > top))
    if outside > values.size // 100:  # no overshoot: another range (-1..1, say)
        raise ValueError(f"a float (F) image with values from {lo:g} to {hi:g}: read as 0..{top:g}, "
                         f"{100 * outside / values.size:.0f}% of them would be clipped; save it as "
                         f"an 8 or 16-bit image")
    if outside > values.size // 1000:
        warnings.warn(f"float (F) images read as 0..{top:g}, 0.1-1% of their values outside that "
                      f"range (a resampling's overshoot), clipped")
    return (np.clip(values, 0, top) * scale).round().astype(np.uint8)


def decode_image(source, size=256):
    """Read one image as AlexNet wants it.

    Args:
        source: image file path, or a binary file object (e.g. io.BytesIO of the file's bytes).
        size: output side in pixels.
    Returns: (size, size, 3) uint8 RGB, values 0..255: the image rescaled (bilinear, with
        anti-aliasing when shrinking) so that its SHORTER side is `size`, then its central
        size×size square. A JPEG of more than twice that size is first shrunk by its decoder,
        by 1/2, 1/4 or 1/8 in the DCT (as far as keeps at least size×size), so its pixels differ
        by a few grey levels from a full decode resized bilinearly: code that prepares images
        for a trained network elsewhere should call this function. Raises OSError/ValueError
        (from Pillow, or _to_rgb) if it cannot be decoded.
    """
    with Image.open(source) as image:
        # For JPEGs, let the decoder shrink by 1/2, 1/4 or 1/8 while decoding (much faster for
        # large photos); the result is still at least size×size.
        image.draft("RGB", (size, size))
        image = _to_rgb(ImageOps.exif_transpose(image))
    w, h = image.size
    # The central square of side min(w, h) in source pixels, resized to size×size in one call:
    # the same as "rescale the shorter side to size, then take the central size×size".
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    image = image.resize((size, size), Image.BILINEAR,
                         box=(left, top, left + side, top + side))
    return np.asarray(image, dtype=np.uint8)


def _can_read(path):
    """True if the whole file `path` can be read now (a bad sector opens, then fails to read)."""
    try:
        _read_file(path)
        return True
    except OSError:
        return False


def _read_file(path):
    """All bytes of `path`; OSError (missing, dangling link, permission, I/O error) passes up."""
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------
# Writing the cache safely
# ------------------------------------------------------------------------------------------

def _preallocate(path, start, stop):
    """Reserve the bytes start..stop of the existing file `path` on disk now.

    A memory-mapped file is sparse: without this, a full disk shows up only when a page is
    written, as a SIGBUS that kills the process. posix_fallocate reserves the blocks (or raises
    OSError ENOSPC); where the file system cannot (or the OS has no posix_fallocate), the range
    is written with zeros, which fails the same clear way.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, start, stop - start)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        zeros = bytes(1 << 20)
        for offset in range(start, stop, len(zeros)):
            os.pwrite(fd, zeros[:min(len(zeros), stop - offset)], offset)
    finally:
        os.close(fd)


def _open_images_file(path, shape, cache, func):
    """A new .npy file `path` of uint8 `shape`, its space on disk reserved, as a writable
    memory map. Raises OSError naming the cache folder `cache` and the bytes needed if the
    disk is full."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    total, data_bytes = os.path.getsize(path), images.nbytes
    try:
        _preallocate(path, total - data_bytes, total)
    except OSError as exc:
        raise OSError(exc.errno, f"{func}: cannot reserve {total:,} bytes for the image cache "
                                 f"{cache} ({exc.strerror or exc}); free that much space or "
                                 f"choose another cache folder (cache_dir, --cache-dir)") from exc
    return images


def _fsync_file(path):
    """Make the file at `path` durable on disk (a folder's names: files.fsync_folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _write_npy(path, array):
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------

def _cache_key(paths, labels, classes, size, split, stats):
    """sha256 (hex, 24 chars) of everything the cache's content depends on; stats[i] is the
    os.stat of paths[i] (scan_image_folder). A file that could not be stat'ed (a dangling link)
    enters as "missing"; decoding will then skip it."""
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, size, classes, split]).encode())
    for path, label, st in zip(paths, labels.tolist(), stats):
        # the change time too: an edit that keeps the size and the modification time (an EXIF
        # tool's -P, cp -p over the file, tar x) still changes it, as only the kernel sets it.
        # (So does a change of the file's permissions or owner: the cache is built again.)
        stamp = "missing" if st is None else f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
        # os.fsencode, not str.encode: a file name that is not valid UTF-8 (b"caf\xe9.jpg" from
        # an old zip file) is held as a str with a surrogate ("caf\udce9.jpg"), which strict
        # UTF-8 refuses; fsencode gives back the name's own bytes (the same bytes as .encode()
        # for every valid name).
        h.update(b"\0" + os.fsencode(os.path.abspath(path)) + f"\0{label}\0{stamp}".encode())
    return h.hexdigest()[:24]


def _decode_all(paths, size, images, func, progress):
    """Decode `paths` into the rows 0, 1, ... of `images` (readable ones packed at the front).

    Returns: (kept, corrupt, unreadable): kept the indices into `paths` of the decoded files,
    in order; corrupt the files read completely that are no image; unreadable the files whose
    reading failed (OSError).
    """
    kept, corrupt, unreadable = [], [], []
    notes = {}  # (category, text) of a warning raised while decoding -> the files it came from
    for i, path in enumerate(paths):
        try:
            raw = _read_file(path)
        except OSError as exc:
            warnings.warn(f"{func}: skipping {path!r}: it could not be read "
                          f"({type(exc).__name__}: {exc}); not remembered as bad, so the next "
                          f"load tries it again", stacklevel=5)
            unreadable.append(path)
        else:
            try:
                with warnings.catch_warnings(record=True) as said:   # Pillow's, _to_rgb's
                    warnings.simplefilter("always")
                    images[len(kept)] = decode_image(io.BytesIO(raw), size)
                kept.append(i)
            except Exception as exc:            # corrupt, truncated, unsupported content
                warnings.warn(f"{func}: skipping unreadable image {path!r} "
                              f"({type(exc).__name__}: {exc})", stacklevel=5)
                corrupt.append(path)
            for w in said:
                if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, ResourceWarning)):
                    # about the code, not the file: where it came from, filtered as usual
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                else:
                    notes.setdefault((w.category, str(w.message)), []).append(path)
        if progress is not None:
            progress(i + 1, len(paths))
    for (category, text), where in notes.items():  # each kind once: how many files, which
        warnings.warn(f"{func}: {len(where)} image(s) decoded with a warning: {text}: {_some(where)}",
                      category, stacklevel=5)
    return kept, corrupt, unreadable


def _build_cache(final_dir, paths, labels, size, split, func, progress, source=None):
    """Decode `paths` into a new cache folder and rename it to `final_dir` (see module docstring).

    split: None (rows in file order) or (val_fraction, seed): the readable images are split per
    class and stored as all training rows, then all validation rows; meta["parts"] gives the
    two counts.
    """
    parent = os.path.dirname(final_dir)
    work = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(final_dir) + "-")
    try:
        decoded_path = os.path.join(work, "decoded.npy")
        images = _open_images_file(decoded_path, (len(paths), size, size, 3), final_dir, func)
        kept, corrupt, unreadable = _decode_all(paths, size, images, func, progress)
        kept_labels = labels[kept]
        missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(kept_labels).tolist()))
        if missing:
            return None, missing, dict(skipped=corrupt, unreadable=unreadable)
        if split is None:
            rows, parts = np.arange(len(kept)), None
        else:
            train_rows, val_rows = stratified_split_indices(kept_labels, split[0], split[1], func)
            rows = np.concatenate([train_rows, val_rows])
            parts = {"train": len(train_rows), "val": len(val_rows)}
        image_path = os.path.join(work, "images.npy")
        if split is None and len(kept) == len(paths):
            images.flush()
            del images
            os.replace(decoded_path, image_path)
        else:
            # Copy the kept rows, in their final order, to a file of the right length (in
            # chunks, so memory stays bounded), then drop the first file.
            final = _open_images_file(image_path, (len(rows), size, size, 3), final_dir, func)
            for start in range(0, len(rows), 256):
                final[start:start + 256] = images[rows[start:start + 256]]
            final.flush()
            del final, images
            os.unlink(decoded_path)
        _fsync_file(image_path)
        _write_npy(os.path.join(work, "labels.npy"), kept_labels[rows])
        # the rows' files by name, for a run that finds its data changed to say which
        _write_json(os.path.join(work, "files.json"), [_file_name(paths[kept[r]], source) for r in rows])
        meta = {"version": _CACHE_VERSION, "size": size, "num_files": len(paths),
                "skipped": corrupt, "unreadable": unreadable, "parts": parts,
                "source": None if source is None else os.path.realpath(source),
                "split": None if split is None else list(split)}
        _write_json(os.path.join(work, "meta.json"), meta)
        fsync_folder(work)
        _commit(work, final_dir)
        work = None
        return final_dir, [], meta
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _warn_earlier_caches(folder, meta, func):
    """After building the cache `folder`: name the other caches beside it of the same source
    folder, size and split (built before its files changed), and the space they take."""
    if not meta or meta.get("source") is None:
        return
    parent, earlier, total = os.path.dirname(folder), [], 0
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return
    for name in names:
        other = os.path.join(parent, name)
        if not name.startswith("folder-") or name == os.path.basename(folder):
            continue
        theirs = load_json(os.path.join(other, "meta.json"))
        if theirs is None or [theirs.get(k) for k in ("source", "size", "split")] != \
                [meta["source"], meta["size"], meta.get("split")]:
            continue
        earlier.append(name)
        try:  # (deleted meanwhile, as the warning suggests: then it takes nothing)
            for entry in os.scandir(other):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    if earlier:
        warnings.warn(f"{func}: {len(earlier)} earlier cache(s) of {printable(meta['source'])} "
                      f"(built before its files changed) remain in {printable(parent)}, "
                      f"{total / 2**20:,.0f} MB: {', '.join(earlier[:3])}"
                      f"{' and more' if len(earlier) > 3 else ''}; delete them if no run needs "
                      f"the folder as it was", stacklevel=4)


def _commit(work, final_dir):
    """Rename the finished folder `work` to `final_dir`, as one unit.

    If `final_dir` exists, another process committed the same cache first (or, when it is being
    rebuilt, a stale copy is still there): a stale copy (one with unreadable files) is moved
    aside and deleted; a good one is kept and ours deleted.
    """
    parent = os.path.dirname(final_dir)
    try:
        os.rename(work, final_dir)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        theirs = load_json(os.path.join(final_dir, "meta.json"))
        if theirs is not None and not theirs.get("unreadable"):
            shutil.rmtree(work, ignore_errors=True)        # the same content, committed first
            return
        stale = tempfile.mkdtemp(dir=parent, prefix=".stale-")
        try:
            os.rename(final_dir, os.path.join(stale, "old"))
        except FileNotFoundError:
            pass                                            # someone else moved it already
        try:
            os.rename(work, final_dir)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)         # another rebuild won
        shutil.rmtree(stale, ignore_errors=True)
    fsync_folder(parent)


def _load_files(paths, labels, classes, stats, size, cache_dir, func, split=None, progress=None,
                retry_unreadable=True, source=None):
    """Decode (or read from the cache) `paths` with `labels` (and their `stats`, as
    scan_image_folder gives all four); `source` is the folder they were found in (recorded in
    a new cache, to name its earlier caches: _warn_earlier_caches).

    Returns an ArrayDataset, or with `split` = (val_fraction, seed) a pair (train, val) of
    ArrayDatasets (slices of the same memory map).
    """
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    folder = os.path.join(cache_dir, "folder-" + _cache_key(paths, labels, classes, size, split, stats))
    meta = load_json(os.path.join(folder, "meta.json"))
    # a cache built while files could not be read is built again once one of them can be
    reuse = meta is not None and not (retry_unreadable and any(map(_can_read, meta.get("unreadable") or [])))
    if reuse:
        if meta["skipped"]:
            warnings.warn(f"{func}: {len(meta['skipped'])} file(s) were skipped when the cache "
                          f"{folder} was built, as no decodable image: "
                          f"{_some(meta['skipped'])}", stacklevel=3)
        if meta.get("unreadable"):
            warnings.warn(f"{func}: {len(meta['unreadable'])} file(s) could not be read when "
                          f"the cache {folder} was built and are missing from it: "
                          f"{_some(meta['unreadable'])}", stacklevel=3)
    else:
        built, missing, meta = _build_cache(folder, paths, labels, size, split, func, progress, source)
        _warn_earlier_caches(folder, meta, func)
        if built is None:
            bad = len(meta["skipped"]) + len(meta["unreadable"])
            raise ValueError(f"{func}: no readable image in class folder(s) "
                             f"{[classes[k] for k in missing]} ({bad} file(s) could not be "
                             f"read or decoded)")
        meta = load_json(os.path.join(folder, "meta.json"))   # the committed one (maybe another's)
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    kept_labels = np.load(os.path.join(folder, "labels.npy"))
    bad = meta["skipped"] + meta.get("unreadable", [])
    # origin: the images' files, in the rows' order, each as <class folder>/<file> (not the whole
    # path, and no dates: the same images moved or copied elsewhere are the same data)
    gone = set(bad)
    kept = [i for i, path in enumerate(paths) if path not in gone]
    if split is None:
        rows = [kept]
    else:  # the split _build_cache made, made again: the same call on the same labels
        rows = [[kept[r] for r in part] for part in stratified_split_indices(labels[kept], *split, func)]
    origin = [_names_hash([paths[i] for i in part]) for part in rows]
    if split is None:
        dataset = ArrayDataset(images, kept_labels, classes, skipped=bad, origin=origin[0])
        dataset.cache = folder   # (its files.json names the files: cache_file_names)
        return dataset
    t = meta["parts"]["train"]
    # stratified_split_indices gives every class with two readable images at least one held-out
    # image; a class with one keeps it for training. Said on every load, like the skipped files.
    held_out = np.bincount(kept_labels[t:], minlength=len(classes))
    lonely = [classes[k] for k in np.flatnonzero(held_out == 0)]
    if lonely:
        warnings.warn(f"{func}: {len(lonely)} class(es) with a single readable image, kept for "
                      f"training, have no held-out image, so the held-out score leaves them out: "
                      f"{', '.join(repr(c) for c in lonely)}", stacklevel=3)
    parts = (ArrayDataset(images[:t], kept_labels[:t], classes, skipped=bad, origin=origin[0]),
             ArrayDataset(images[t:], kept_labels[t:], classes, skipped=bad, origin=origin[1]))
    for part in parts:
        part.cache = folder
    return parts


def _file_name(path, source):
    """A file's name in a cache's files.json: its path from the folder it was found in, that
    folder's own name first ("val/cat/001.jpg"), so that a training and a held-out folder's
    files never share a name."""
    if source is None:
        return os.path.basename(path)
    source = os.path.normpath(source)
    return os.path.join(os.path.basename(source), os.path.relpath(path, source)).replace(os.sep, "/")


def cache_file_names(folder):
    """The files of the cache `folder` by name, in its rows' order (training rows first when the
    cache holds a split), or None for a cache that lists none (built by an earlier version, or
    gone)."""
    names = load_json(os.path.join(folder, "files.json")) if folder else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None   # (a damaged list names nothing)
    return names


def _names_hash(paths):
    """A hash of the files `paths` in order, each by its <class folder>/<file> name."""
    names = (os.path.join(*os.path.normpath(path).split(os.sep)[-2:]) for path in paths)
    return hashlib.sha256("\0".join(names).encode("utf-8", "surrogateescape")).hexdigest()[:24]


def _normal_form(name):
    """Which Unicode normal form the str `name` is in."""
    for form in ("NFC", "NFD"):
        if unicodedata.is_normalized(form, name):
            return form
    return "neither NFC nor NFD"


def _normal_form_note(only_train, only_val):
    """For class names that differ only in their Unicode normal form, a sentence that says so.

    "café" can be written with the one character é (U+00E9, NFC, as most systems write it) or
    with e followed by a combining accent (U+0065 U+0301, NFD, as macOS writes file names):
    the two look the same when printed but are different names, so ascii() shows them here.
    """
    pairs = [(a, b) for a in only_train for b in only_val
             if unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)]
    if not pairs:
        return ""
    shown = "; ".join(f"{ascii(a)} ({_normal_form(a)}) in train, {ascii(b)} ({_normal_form(b)}) "
                      f"in val" for a, b in pairs)
    return (f". Of these, {len(pairs)} pair(s) are the same name in different Unicode normal "
            f"forms (NFC/NFD), which look the same when printed: {shown}. Rename one of the "
            f"two folders so that both names have the same code points")


def _some(paths, count=3):
    """The first `count` of `paths`, and how many more."""
    shown = ", ".join(repr(p) for p in paths[:count])
    return shown + (f" and {len(paths) - count} more" if len(paths) > count else "")


# ------------------------------------------------------------------------------------------
# Public loaders
# ------------------------------------------------------------------------------------------

def load_image_folder(root, size=256, cache_dir=None, progress=None, retry_unreadable=True):
    """Load root/<class>/<images> as one ArrayDataset.

    Args:
        root: folder with one sub-folder per class (sorted names give labels 0, 1, ...).
            Image files in nested sub-folders (linked ones too) count for their class; other
            files, and images beside the class folders, are left out with a warning; hidden
            files without one.
        size: side of the stored square images in pixels (256 for AlexNet).
        cache_dir: folder for the decoded .npy cache (default: default_cache_dir()).
        progress: None, or a callable (done, total) called after each image decoded while the
            cache is built (not called when the cache is reused).
        retry_unreadable: True (default) rebuilds a cache built while some files could not be
            read, to try them again; False uses it as it is (data-parallel ranks reading the
            cache rank 0 just built must all see the same images).

    Returns: ArrayDataset with images (N, size, size, 3) uint8 RGB 0..255 (read-only memory
        map), labels (N,) int64, classes the folder names, skipped the files left out.
    Raises FileNotFoundError / ValueError as scan_image_folder (which also warns about the files
    left out), ValueError if a class has no readable image, OSError if the disk has no room for
    the cache.
    """
    size = check_int("load_image_folder", "size", size, minimum=1)
    return _load_files(*scan_image_folder(root, "load_image_folder"), size, cache_dir,
                       "load_image_folder", progress=progress, retry_unreadable=retry_unreadable,
                       source=root)


def load_image_folders(data_dir, val_fraction=0.1, seed=0, size=256, cache_dir=None,
                       progress=None, retry_unreadable=True):
    """Load a training and a validation set from an image folder tree.

    Layouts (find_layout):
        data_dir/train/<class>/... beside data_dir/val/<class>/... (or valid/, validation/,
            test/): used as given; the two must have the same class folders (ValueError naming
            the differences otherwise).
        data_dir/<class>/..., or data_dir/train/<class>/... alone: decoded into one cache, then
            the images that could be read are split per class (stratified_split_indices) with
            `val_fraction` and `seed`. The split depends only on the files and these two, not
            on any training seed; it is stored in the cache (training rows first), so nothing is
            copied in memory. A class with a single readable image has no held-out image: a
            warning names it.
        Split folders spelled otherwise (Train/, Val/, training/, ...) are refused (find_layout);
        images directly in data_dir beside train/ are left out with a warning.

    Args: val_fraction in (0, 1) and seed >= 0 (used only when splitting here); size, cache_dir,
        progress and retry_unreadable as for load_image_folder.
    Returns: (train, val), two ArrayDatasets with the same classes.
    """
    func = "load_image_folders"
    size = check_int(func, "size", size, minimum=1)
    layout = find_layout(data_dir, func)
    options = dict(progress=progress, retry_unreadable=retry_unreadable)
    data_dir = os.fspath(data_dir)
    if layout["train"] != data_dir:          # images beside train/ belong to neither part
        folders, files, _ = _listing(data_dir)
        _warn_loose_images(data_dir, files, func,
                           f"{os.path.join(printable(data_dir), 'train', '<class>')}/...",
                           stacklevel=2)
        # folders of images beside train/ (class folders copied, not moved, into a split)
        used = [u for u in (layout["train"], layout["val"], *layout["unused"]) if u is not None]
        # (samefile: on a file system that ignores case Train/ is train/; a link to train/ is it)
        unread = [(name, len(_image_files(os.path.join(data_dir, name))[0])) for name in folders
                  if not any(_same_file(os.path.join(data_dir, name), u) for u in used)]
        unread = [(name, count) for name, count in unread if count]
        if unread:
            shown = ", ".join(f"{name!r} ({count} images)" for name, count in unread[:5])
            warnings.warn(f"{func}: {len(unread)} folder(s) of images beside train/ in {data_dir!r} "
                          f"are not read: {shown}{' and more' if len(unread) > 5 else ''}; with "
                          f"{os.path.join(printable(data_dir), 'train')}/ there, only it and the "
                          f"held-out folder beside it are", stacklevel=2)
    if layout["val"] is not None:
        train_scan = scan_image_folder(layout["train"], func)
        val_scan = scan_image_folder(layout["val"], func)
        train_paths, _, classes, train_stats = train_scan
        val_paths, _, val_classes, val_stats = val_scan
        train_ids = list(map(_file_identity, train_paths, train_stats))
        val_ids = list(map(_file_identity, val_paths, val_stats))
        in_train = set(train_ids)
        both = [r for r in val_ids if r in in_train]
        if both:
            val_path, train_path = dict(zip(val_ids, val_paths)), dict(zip(train_ids, train_paths))
            shown = "; ".join(f"{val_path[r]!r} is {train_path[r]!r}" for r in both[:3])
            raise ValueError(f"{func}: {len(both)} held-out image file(s) in {layout['val']!r} are "
                             f"training images too (reached through links, or hard links): "
                             f"{shown}{' and more' if len(both) > 3 else ''}. A held-out image "
                             f"the network trained on makes its score a lie; remove the links "
                             f"(to score training images on purpose, copy them into the "
                             f"held-out folder)")
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise ValueError(f"{func}: the class folders of {layout['train']!r} and "
                             f"{layout['val']!r} differ: only in train {only_train}, "
                             f"only in val {only_val}"
                             + _normal_form_note(only_train, only_val))
        train = _load_files(*train_scan, size, cache_dir, func, source=layout["train"], **options)
        val = _load_files(*val_scan, size, cache_dir, func, source=layout["val"], **options)
        return train, val
    # checked before decoding, so a bad value costs nothing
    stratified_split_indices(np.zeros(2, np.int64), val_fraction, seed, func)
    return _load_files(*scan_image_folder(layout["train"], func), size, cache_dir, func,
                       split=(float(val_fraction), int(seed)), source=layout["train"], **options)
