"""Image folders: root/<class>/<image files>, decoded once into a memory-mapped .npy cache.

Layouts understood by load_image_folders(data_dir) (see find_layout):

    data_dir/train/<class>/*.jpg  and  data_dir/val/<class>/*.jpg    (split given; the held-out
                                   folder may also be named valid/, validation/ or test/)
    data_dir/<class>/*.jpg   or    data_dir/train/<class>/*.jpg alone  (split made here, per class)

Every image is made AlexNet-ready once (ALEXNET.md, "Data"): converted to 8-bit RGB, rescaled so
that its shorter side is `size` (256) and cut to the central size×size square. The result is
stored as one uint8 .npy file (N, size, size, 3) in a cache folder and read back as a memory
map, so later epochs and runs never decode a JPEG again. The cache's name is a hash of the file
list with the files' sizes and modification times, the labels, `size` and (when the split is
made here) the split's fraction and seed: adding, removing or editing an image makes a new cache.

Colour conversions: grey, bilevel, CMYK, YCbCr and palette images are converted by Pillow;
16-bit and 32-bit integer images (modes "I;16", "I") are scaled from 0..65535 to 0..255 (Pillow's
own conversion would clip them at 255); 32-bit float images (mode "F") whose values all lie in
0..1 are scaled by 255, other float images are clipped to 0..255; images with transparency (RGBA,
LA, PA, palette with a transparent colour) are composited on a WHITE background; EXIF orientation
is applied; of an animated GIF/WebP the first frame is used.

Bad files are skipped with a warning, never a crash, and the split (when made here) is made
after decoding, among the images that could be read, so every class with two readable images
has one in each part. Two kinds of bad file are told apart:

    corrupt      the file was read completely but is not a decodable image: remembered in the
                 cache (dataset.skipped), and the warning is repeated whenever the cache is used;
    unreadable   reading the file failed (OSError: a dangling link, no permission, an I/O
                 error): possibly passing, so never remembered as bad. A cache built while
                 files were unreadable is rebuilt on the next load, which tries them again.

A class left without any readable image is an error.

The cache is one folder, cache_dir/folder-<key>/, holding images.npy, labels.npy and meta.json.
It is built in a temporary folder beside it, its files written out to disk (fsync), and then
renamed into place as one unit, so a reader sees a whole cache or none. Several processes
(data-parallel ranks) may build the same cache at once: the first rename wins and the others
use the winner's cache, so images and labels always come from the same build. The disk space
for the images is reserved before decoding starts, so a full disk is a clear OSError naming the
cache and the bytes needed, and the temporary folder is removed.
"""

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..files import fsync_folder
from .dataset import ArrayDataset, check_int, load_json, stratified_split_indices

# File name endings (lower case) taken as images; other files in class folders are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")

# Names accepted for the held-out folder beside data_dir/train, in order of preference.
HELD_OUT_NAMES = ("val", "valid", "validation", "test")

# Bump when decoding or the cache layout changes, so that caches of older code are not reused.
_CACHE_VERSION = 2


def default_cache_dir():
    """$XDG_CACHE_HOME/tinynet/folders, or ~/.cache/tinynet/folders."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tinynet", "folders")


# ------------------------------------------------------------------------------------------
# Finding the files
# ------------------------------------------------------------------------------------------

def _visible_subdirs(path):
    """Sorted names of the sub-folders of `path` (links to folders included), hidden ones
    (".name") left out."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder):
    """Sorted paths of the image files under `folder`: sub-folders included, linked ones too
    (each real folder visited once, so a link loop ends), hidden ones skipped."""
    found, visited = [], set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in visited:          # reached again through a link: already listed
            dirs[:] = []
            continue
        visited.add(real)
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


def find_layout(data_dir, func="find_layout"):
    """Which of the two layouts `data_dir` has.

    Returns: dict(train=folder of the training classes, val=folder of the held-out classes or
        None when the split is to be made here, unused=[other held-out folders found, not used]).
        With data_dir/train/ the held-out folder is the first of HELD_OUT_NAMES (val, valid,
        validation, test) present beside it; without one, train/ is split. Without train/,
        data_dir itself holds the class folders.
    Raises FileNotFoundError if data_dir is missing, ValueError if it has a held-out folder
    (val/, test/, ...) but no train/ beside it.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{func}: folder {data_dir!r} does not exist")
    held_out = [os.path.join(data_dir, n) for n in HELD_OUT_NAMES
                if os.path.isdir(os.path.join(data_dir, n))]
    train_dir = os.path.join(data_dir, "train")
    if os.path.isdir(train_dir):
        return dict(train=train_dir, val=held_out[0] if held_out else None, unused=held_out[1:])
    if held_out:
        raise ValueError(f"{func}: {data_dir!r} has {os.path.basename(held_out[0])}/ but no train/ "
                         f"beside it; expected {data_dir}/train/<class>/... with it, or one "
                         f"folder per class directly in {data_dir}")
    return dict(train=data_dir, val=None, unused=[])


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
        # float grey: 0..1 (the usual convention of float images) or already 0..255
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def decode_image(source, size=256):
    """Read one image as AlexNet wants it.

    Args:
        source: image file path, or a binary file object (e.g. io.BytesIO of the file's bytes).
        size: output side in pixels.
    Returns: (size, size, 3) uint8 RGB, values 0..255: the image rescaled (bilinear, with
        anti-aliasing when shrinking) so that its SHORTER side is `size`, then its central
        size×size square. Raises OSError/ValueError (from Pillow) if it cannot be decoded.
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

def _cache_key(paths, labels, classes, size, split):
    """sha256 (hex, 24 chars) of everything the cache's content depends on. A file that cannot
    be stat'ed (a dangling link) enters as "missing"; decoding will then skip it."""
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, size, classes, split]).encode())
    for path, label in zip(paths, labels.tolist()):
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{os.path.abspath(path)}\0{label}\0{stamp}".encode())
    return h.hexdigest()[:24]


def _decode_all(paths, size, images, func, progress):
    """Decode `paths` into the rows 0, 1, ... of `images` (readable ones packed at the front).

    Returns: (kept, corrupt, unreadable): kept the indices into `paths` of the decoded files,
    in order; corrupt the files read completely that are no image; unreadable the files whose
    reading failed (OSError).
    """
    kept, corrupt, unreadable = [], [], []
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
                images[len(kept)] = decode_image(io.BytesIO(raw), size)
                kept.append(i)
            except Exception as exc:            # corrupt, truncated, unsupported content
                warnings.warn(f"{func}: skipping unreadable image {path!r} "
                              f"({type(exc).__name__}: {exc})", stacklevel=5)
                corrupt.append(path)
        if progress is not None:
            progress(i + 1, len(paths))
    return kept, corrupt, unreadable


def _build_cache(final_dir, paths, labels, size, split, func, progress):
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
        meta = {"version": _CACHE_VERSION, "size": size, "num_files": len(paths),
                "skipped": corrupt, "unreadable": unreadable, "parts": parts}
        _write_json(os.path.join(work, "meta.json"), meta)
        fsync_folder(work)
        _commit(work, final_dir)
        work = None
        return final_dir, [], meta
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


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


def _load_files(paths, labels, classes, size, cache_dir, func, split=None, progress=None,
                retry_unreadable=True):
    """Decode (or read from the cache) `paths` with `labels`.

    Returns an ArrayDataset, or with `split` = (val_fraction, seed) a pair (train, val) of
    ArrayDatasets (slices of the same memory map).
    """
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    folder = os.path.join(cache_dir, "folder-" + _cache_key(paths, labels, classes, size, split))
    meta = load_json(os.path.join(folder, "meta.json"))
    reuse = meta is not None and not (retry_unreadable and meta.get("unreadable"))
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
        built, missing, meta = _build_cache(folder, paths, labels, size, split, func, progress)
        if built is None:
            bad = len(meta["skipped"]) + len(meta["unreadable"])
            raise ValueError(f"{func}: no readable image in class folder(s) "
                             f"{[classes[k] for k in missing]} ({bad} file(s) could not be "
                             f"read or decoded)")
        meta = load_json(os.path.join(folder, "meta.json"))   # the committed one (maybe another's)
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    kept_labels = np.load(os.path.join(folder, "labels.npy"))
    bad = meta["skipped"] + meta.get("unreadable", [])
    if split is None:
        return ArrayDataset(images, kept_labels, classes, skipped=bad)
    t = meta["parts"]["train"]
    return (ArrayDataset(images[:t], kept_labels[:t], classes, skipped=bad),
            ArrayDataset(images[t:], kept_labels[t:], classes, skipped=bad))


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
            Image files in nested sub-folders (linked ones too) count for their class; hidden
            files are ignored.
        size: side of the stored square images in pixels (256 for AlexNet).
        cache_dir: folder for the decoded .npy cache (default: default_cache_dir()).
        progress: None, or a callable (done, total) called after each image decoded while the
            cache is built (not called when the cache is reused).
        retry_unreadable: True (default) rebuilds a cache built while some files could not be
            read, to try them again; False uses it as it is (data-parallel ranks reading the
            cache rank 0 just built must all see the same images).

    Returns: ArrayDataset with images (N, size, size, 3) uint8 RGB 0..255 (read-only memory
        map), labels (N,) int64, classes the folder names, skipped the files left out.
    Raises FileNotFoundError / ValueError as scan_image_folder, ValueError if a class has no
    readable image, OSError if the disk has no room for the cache.
    """
    size = check_int("load_image_folder", "size", size, minimum=1)
    paths, labels, classes = scan_image_folder(root, "load_image_folder")
    return _load_files(paths, labels, classes, size, cache_dir, "load_image_folder",
                       progress=progress, retry_unreadable=retry_unreadable)


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
            copied in memory.

    Args: val_fraction in (0, 1) and seed >= 0 (used only when splitting here); size, cache_dir,
        progress and retry_unreadable as for load_image_folder.
    Returns: (train, val), two ArrayDatasets with the same classes.
    """
    func = "load_image_folders"
    size = check_int(func, "size", size, minimum=1)
    layout = find_layout(data_dir, func)
    options = dict(progress=progress, retry_unreadable=retry_unreadable)
    if layout["val"] is not None:
        train_paths, train_labels, classes = scan_image_folder(layout["train"], func)
        val_paths, val_labels, val_classes = scan_image_folder(layout["val"], func)
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise ValueError(f"{func}: the class folders of {layout['train']!r} and "
                             f"{layout['val']!r} differ: only in train {only_train}, "
                             f"only in val {only_val}")
        train = _load_files(train_paths, train_labels, classes, size, cache_dir, func, **options)
        val = _load_files(val_paths, val_labels, classes, size, cache_dir, func, **options)
        return train, val
    # checked before decoding, so a bad value costs nothing
    stratified_split_indices(np.zeros(2, np.int64), val_fraction, seed, func)
    paths, labels, classes = scan_image_folder(layout["train"], func)
    return _load_files(paths, labels, classes, size, cache_dir, func,
                       split=(float(val_fraction), int(seed)), **options)
