"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (IDX files).

    apt-get install dataset-fashion-mnist     # files in /usr/share/datasets/fashion-mnist/

70,000 grey 28×28 images of clothing in 10 classes (60,000 train, 10,000 test). They are kept at
their native size, (N, 28, 28, 1) uint8, and enlarged to 256×256 RGB per batch by the transforms
(tinynet.data.transforms): all 70,000 stored at 256×256×3 would take 13 GB.

The IDX format (LeCun's MNIST files): a big-endian header of 2 zero bytes, one type byte, one
byte giving the number of dimensions d, then d big-endian uint32 sizes, then the values in C
order. The files may be gzip-compressed (recognised by their first bytes, not their name).
"""

import gzip
import os
import shutil
import subprocess

import numpy as np

from .dataset import ArrayDataset, check_int
from .transforms import resize_nearest

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]

# Where the Debian package puts the files, and other common places.
DEFAULT_SEARCH_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/dataset-fashion-mnist",
                       "/usr/share/fashion-mnist", "/usr/local/share/datasets/fashion-mnist")

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# IDX type byte -> numpy dtype (big-endian where it matters).
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """Read an IDX file (plain or gzip-compressed).

    Returns: ndarray with the file's shape and type (uint8 for images (N, 28, 28) and labels (N,)),
    in native byte order. Raises ValueError if the header or length is wrong.
    """
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"read_idx: {path!r} is not an IDX file (header bytes {data[:4]!r})")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"read_idx: {path!r} ends inside its header ({len(data)} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"read_idx: {path!r} has {len(data)} bytes but its header "
                         f"(shape {shape}, {dtype}) needs {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _package_dirs():
    """Folders holding files of the installed dataset-fashion-mnist package (via dpkg -L)."""
    if shutil.which("dpkg") is None:
        return []
    try:
        listing = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True,
                                 text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({os.path.dirname(line) for line in listing.splitlines()
                   if "idx" in os.path.basename(line)})


def _find(name, dirs):
    """Path of `name` or `name`.gz in the first folder of `dirs` that has it, else None."""
    for folder in dirs:
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def has_fashion_mnist_files(folder):
    """True if ``folder`` holds the four Fashion-MNIST IDX files (each plain or .gz)."""
    return all(_find(name, [os.fspath(folder)]) is not None for pair in _FILES.values() for name in pair)


def load_fashion_mnist(limit_per_class=None, size=None, search_dirs=None, pad=0):
    """Load Fashion-MNIST as (train, val) ArrayDatasets; val is the official 10,000 test images.

    Args:
        limit_per_class: None for all images, or keep only the first k images of each class in
            each split (file order), for quick experiments.
        size: None (default) keeps the native (N, 28, 28, 1) grey images; the transforms enlarge
            them per batch. An int resizes now (nearest neighbour) to (N, size, size, 1).
        search_dirs: folders to look in; default: those of the installed package (dpkg -L) and
            DEFAULT_SEARCH_DIRS.
        pad: black pixels added on each side of every image, before any resizing (0: none).
            Many items touch the 28x28 frame, and AlexNet's centre 227 window of a 256 image
            cuts 1.6 of the 28 pixels off each side; with pad=2 the images are 32x32, the
            transforms enlarge them x8 exactly (not x9.14), and the window holds the whole item.

    Returns: (train, val): images (N, 28 + 2*pad, 28 + 2*pad, 1) uint8 grey 0..255 (0 is the
        black background),
        labels (N,) int64 0..9, classes FASHION_MNIST_CLASSES.
    Raises FileNotFoundError (saying how to install the package) if the files are not found.
    """
    func = "load_fashion_mnist"
    if limit_per_class is not None:
        limit_per_class = check_int(func, "limit_per_class", limit_per_class, minimum=1)
    if size is not None:
        size = check_int(func, "size", size, minimum=1)
    pad = check_int(func, "pad", pad, minimum=0)
    if search_dirs is None:
        dirs = _package_dirs() + list(DEFAULT_SEARCH_DIRS)
    else:
        dirs = [os.fspath(d) for d in search_dirs]

    sets = []
    for split, (image_name, label_name) in _FILES.items():
        image_path, label_path = _find(image_name, dirs), _find(label_name, dirs)
        if image_path is None or label_path is None:
            raise FileNotFoundError(
                f"{func}: Fashion-MNIST files ({image_name}[.gz], {label_name}[.gz]) not found in "
                f"{dirs}. Install them with:  sudo apt-get install dataset-fashion-mnist  "
                f"(or pass search_dirs=[folder with the IDX files])")
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) \
                or images.dtype != np.uint8:
            raise ValueError(f"{func}: {image_path!r} {images.dtype}{images.shape} and "
                             f"{label_path!r} {labels.shape} are not matching image/label files")
        if limit_per_class is not None:
            # The first k of each class, in file order.
            keep = np.concatenate([np.flatnonzero(labels == c)[:limit_per_class]
                                   for c in range(len(FASHION_MNIST_CLASSES))])
            keep.sort()
            images, labels = images[keep], labels[keep]
        images = images[..., None]                       # (N, 28, 28) -> (N, 28, 28, 1)
        if pad:
            images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # black border
        if size is not None:
            images = resize_nearest(images, size)
        sets.append(ArrayDataset(images, labels.astype(np.int64), FASHION_MNIST_CLASSES))
    return tuple(sets)
