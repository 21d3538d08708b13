"""Image folders: root/<class>/<image files>, decoded once into a memory-mapped .npy cache.

Two layouts are understood by load_image_folders(data_dir):

    data_dir/train/<class>/*.jpg  and  data_dir/val/<class>/*.jpg    (split given)
    data_dir/<class>/*.jpg                                          (split made here, per class)

Every image is made AlexNet-ready once (ALEXNET.md, "Data"): converted to 8-bit RGB, rescaled so
that its shorter side is `size` (256) and cut to the central size×size square. The result is
stored as one uint8 .npy file (N, size, size, 3) in a cache folder and read back as a memory
map, so later epochs and runs never decode a JPEG again. The cache file name is a hash of the
file list with the files' sizes and modification times, the labels and `size`: adding, removing
or editing an image makes a new cache.

Colour conversions: grey, bilevel, CMYK, YCbCr and palette images are converted by Pillow;
16-bit and 32-bit integer images (modes "I;16", "I") are scaled from 0..65535 to 0..255 (Pillow's
own conversion would clip them at 255); images with transparency (RGBA, LA, PA, palette with a
transparent colour) are composited on a WHITE background; EXIF orientation is applied; of an
animated GIF/WebP the first frame is used.

Unreadable or corrupt files are skipped with a warning, never a crash: the paths are kept in
dataset.skipped. A class left without any readable image is an error.

Cache files are written under temporary names and renamed into place (os.replace), so a reader
never sees half a file, and several processes (data-parallel ranks) may build the same cache at
once: each renames its own, identical, result.
"""

import hashlib
import json
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from .dataset import (ArrayDataset, check_int, load_json, save_json_atomic, save_npy_atomic,
                      stratified_split_indices, temp_path_beside)

# File name endings (lower case) taken as images; other files in class folders are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm")

# Bump when decoding changes, so that caches made by older code are not reused.
_CACHE_VERSION = 1


def default_cache_dir():
    """$XDG_CACHE_HOME/tinynet/folders, or ~/.cache/tinynet/folders."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tinynet", "folders")


# ------------------------------------------------------------------------------------------
# Finding the files
# ------------------------------------------------------------------------------------------

def _visible_subdirs(path):
    """Sorted names of the sub-folders of `path`, hidden ones (".name") left out."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder):
    """Sorted paths of the image files under `folder` (sub-folders included, hidden skipped)."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(here, f) for f in files
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def scan_image_folder(root, func="load_image_folder"):
    """List the images of root/<class>/.

    Returns: (paths, labels, classes): paths a list of str, labels (N,) int64 with
        labels[i] = index in `classes` of the folder of paths[i], classes the sorted folder names.
    Raises FileNotFoundError if root is missing, ValueError if it has no class folders, only
    one, or a class folder without image files (naming it).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{func}: folder {root!r} does not exist "
                                f"(expected root/<class>/<images>)")
    classes = _visible_subdirs(root)
    if not classes:
        raise ValueError(f"{func}: {root!r} has no class folders; expected one sub-folder per "
                         f"class, e.g. {os.path.join(root, 'cat')}/001.jpg")
    if len(classes) == 1:
        raise ValueError(f"{func}: {root!r} has a single class folder ({classes[0]!r}); "
                         f"classification needs at least two")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _image_files(os.path.join(root, name))
        if not files:
            raise ValueError(f"{func}: class folder {os.path.join(root, name)!r} contains no image "
                             f"files (looked for {', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return paths, np.array(labels, dtype=np.int64), classes


# ------------------------------------------------------------------------------------------
# Decoding one image
# ------------------------------------------------------------------------------------------

def _to_rgb(image):
    """Any Pillow image -> 8-bit "RGB" (see the module docstring for the rules)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer grey: scale 0..65535 to 0..255 ourselves (Pillow would clip).
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def decode_image(path, size=256):
    """Read one image file as AlexNet wants it.

    Args:
        path: image file.
        size: output side in pixels.
    Returns: (size, size, 3) uint8 RGB, values 0..255: the image rescaled (bilinear, with
        anti-aliasing when shrinking) so that its SHORTER side is `size`, then its central
        size×size square. Raises OSError/ValueError (from Pillow) if the file cannot be decoded.
    """
    with Image.open(path) as image:
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


# ------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------

def _cache_key(paths, labels, classes, size):
    """sha256 (hex, 24 chars) of everything the decoded array depends on."""
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, size, classes]).encode())
    for path, label in zip(paths, labels.tolist()):
        st = os.stat(path)
        h.update(f"\0{os.path.abspath(path)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _decode_into_cache(paths, labels, size, image_path, func):
    """Decode `paths` into the .npy file `image_path`; return (kept labels, skipped paths)."""
    tmp, compact = temp_path_beside(image_path), None
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                           shape=(len(paths), size, size, 3))
        kept, skipped = [], []
        for i, path in enumerate(paths):
            try:
                images[len(kept)] = decode_image(path, size)
            except Exception as exc:            # corrupt, truncated, unsupported, unreadable
                warnings.warn(f"{func}: skipping unreadable image {path!r} "
                              f"({type(exc).__name__}: {exc})", stacklevel=4)
                skipped.append(path)
                continue
            kept.append(i)
        images.flush()
        if skipped:
            # The file was sized for every path; copy the readable rows (packed at the front)
            # to a file of the right length, in chunks so that memory stays bounded.
            compact = temp_path_beside(image_path)
            final = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8,
                                              shape=(len(kept), size, size, 3))
            for start in range(0, len(kept), 256):
                stop = min(start + 256, len(kept))
                final[start:stop] = images[start:stop]
            final.flush()
            del final
            os.replace(compact, image_path)
        else:
            os.replace(tmp, image_path)
        del images
    finally:
        for leftover in (tmp, compact):         # whatever was not renamed into place
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
    return labels[kept], skipped


def _load_files(paths, labels, classes, size, cache_dir, func):
    """Decode (or read from the cache) the images `paths` with `labels` into an ArrayDataset."""
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.join(cache_dir, "folder-" + _cache_key(paths, labels, classes, size))
    image_path, label_path, meta_path = stem + ".images.npy", stem + ".labels.npy", stem + ".json"

    meta = load_json(meta_path)
    if meta is None or not (os.path.exists(image_path) and os.path.exists(label_path)):
        kept_labels, skipped = _decode_into_cache(paths, labels, size, image_path, func)
        save_npy_atomic(label_path, kept_labels)
        # Written last: its presence marks a complete cache.
        meta = {"version": _CACHE_VERSION, "size": size, "classes": classes,
                "num_files": len(paths), "skipped": skipped}
        save_json_atomic(meta_path, meta)

    kept_labels = np.load(label_path)
    # A class that had files here but kept none of them (all unreadable) is an error.
    missing = [classes[k] for k in np.unique(labels) if not np.any(kept_labels == k)]
    if missing:
        raise ValueError(f"{func}: no readable image in class folder(s) {missing} "
                         f"({len(meta['skipped'])} files were unreadable)")
    images = np.load(image_path, mmap_mode="r")
    return ArrayDataset(images, kept_labels, classes, skipped=meta["skipped"])


# ------------------------------------------------------------------------------------------
# Public loaders
# ------------------------------------------------------------------------------------------

def load_image_folder(root, size=256, cache_dir=None):
    """Load root/<class>/<images> as one ArrayDataset.

    Args:
        root: folder with one sub-folder per class (sorted names give labels 0, 1, ...).
            Image files in nested sub-folders count for their class; hidden files are ignored.
        size: side of the stored square images in pixels (256 for AlexNet).
        cache_dir: folder for the decoded .npy cache (default: default_cache_dir()).

    Returns: ArrayDataset with images (N, size, size, 3) uint8 RGB 0..255 (read-only memory
        map), labels (N,) int64, classes the folder names, skipped the unreadable files.
    Raises FileNotFoundError / ValueError as scan_image_folder, and ValueError if a class has
    no readable image.
    """
    size = check_int("load_image_folder", "size", size, minimum=1)
    paths, labels, classes = scan_image_folder(root, "load_image_folder")
    return _load_files(paths, labels, classes, size, cache_dir, "load_image_folder")


def load_image_folders(data_dir, val_fraction=0.1, seed=0, size=256, cache_dir=None):
    """Load a training and a validation set from an image folder tree.

    Layouts:
        data_dir/train/<class>/... and data_dir/val/<class>/...: used as given; the two must
            have the same class folders (ValueError naming the differences otherwise).
        data_dir/<class>/...: split per class (see tinynet.data.stratified_split_indices) with
            `val_fraction` and `seed`; the file list is split before decoding, so each part gets
            its own cache and nothing is copied in memory.
        A data_dir/train/ without data_dir/val/ is split like the second layout.

    Args: val_fraction in (0, 1) and seed >= 0 (only used when splitting here); size and
        cache_dir as for load_image_folder.
    Returns: (train, val), two ArrayDatasets with the same classes.
    """
    func = "load_image_folders"
    size = check_int(func, "size", size, minimum=1)
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{func}: folder {data_dir!r} does not exist")
    train_dir, val_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")

    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        train_paths, train_labels, classes = scan_image_folder(train_dir, func)
        val_paths, val_labels, val_classes = scan_image_folder(val_dir, func)
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise ValueError(f"{func}: the class folders of {train_dir!r} and {val_dir!r} differ: "
                             f"only in train {only_train}, only in val {only_val}")
    else:
        source = train_dir if os.path.isdir(train_dir) else data_dir
        paths, labels, classes = scan_image_folder(source, func)
        train_idx, val_idx = stratified_split_indices(labels, val_fraction, seed, func)
        train_paths, train_labels = [paths[i] for i in train_idx], labels[train_idx]
        val_paths, val_labels = [paths[i] for i in val_idx], labels[val_idx]

    train = _load_files(train_paths, train_labels, classes, size, cache_dir, func)
    val = _load_files(val_paths, val_labels, classes, size, cache_dir, func)
    return train, val
