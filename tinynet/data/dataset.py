"""ArrayDataset: images and labels held as arrays, plus the statistics AlexNet needs from them.

Every data set in tinynet.data (procedural shapes, image folders, Fashion-MNIST) ends up as one
ArrayDataset:

    images  (N, H, W, C) uint8, RGB (C = 3) or grey (C = 1), values 0..255
    labels  (N,) int64, values 0..num_classes-1
    classes list of str, classes[k] is the name of label k

`images` may be an ordinary array or a read-only memory map (np.load(..., mmap_mode="r")), so a
set larger than memory is read from disk only where a batch needs it. The transforms
(tinynet.data.transforms) bring images of any H×W and C to the network's 3×227×227 input, so a
set can be stored at its native size (Fashion-MNIST: 28×28 grey) and enlarged per batch.

This module also holds small helpers shared by the other modules of tinynet.data: writing .npy
files atomically and checking arguments with error messages that name the function.
"""

import json
import os

import numpy as np

from .. import files

# Images are read in chunks of this many when a statistic is computed over the whole set, so
# that a memory-mapped set of any size is streamed from disk with bounded memory.
_CHUNK = 256


# ------------------------------------------------------------------------------------------
# Argument checks shared by the modules of tinynet.data
# ------------------------------------------------------------------------------------------

def check_int(func, name, value, minimum=None):
    """Return `value` as a Python int; raise TypeError/ValueError naming `func` and `name`.

    bool is refused (True is an int in Python, but never a sensible count or size).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{func}: {name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{func}: {name} must be >= {minimum}, got {value}")
    return value


def check_images(func, images):
    """Check a batch or set of images: (N, H, W, C) uint8 with C in {1, 3}.

    A 3-d array (N, H, W) is taken as grey images and returned as an (N, H, W, 1) view
    (a reshape, so a memory map stays a memory map).
    """
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{func}: images must be a numpy uint8 array (N, H, W, 3), "
                        f"got {type(images).__name__}")
    if images.ndim == 3:
        images = images.reshape(images.shape + (1,))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"{func}: images must be uint8 of shape (N, H, W, 3) or (N, H, W, 1), "
                         f"got {images.dtype} array of shape {images.shape}")
    return images


def check_rgb(func, name, value, positive=False):
    """Return a per-channel RGB vector (3,) float32 from a scalar or 3 numbers."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(3, float(arr))
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{func}: {name} must be 3 finite numbers (R, G, B), got {value!r}")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{func}: {name} must be > 0 in every channel, got {value!r}")
    return arr.astype(np.float32)


# ------------------------------------------------------------------------------------------
# Atomic files: a reader never sees a half-written cache
# ------------------------------------------------------------------------------------------

def save_npy_atomic(path, array):
    """np.save(path, array), written whole or not at all (tinynet.files)."""
    files.write_atomically(path, lambda f: np.save(f, array))


def save_json_atomic(path, obj):
    """Write `obj` as JSON to `path`, whole or not at all (tinynet.files)."""
    files.write_atomically(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True), binary=False)


def load_json(path):
    """The JSON object in `path`, or None if it is missing or unreadable (a cache to rebuild)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------
# The data set
# ------------------------------------------------------------------------------------------

class ArrayDataset:
    """A labelled image set held as arrays (possibly memory-mapped from .npy files).

    Args:
        images: (N, H, W, 3) uint8 RGB, or (N, H, W, 1) / (N, H, W) uint8 grey; values 0..255.
            May be a np.memmap; it is never copied here. Grey (N, H, W) is viewed as (N, H, W, 1).
        labels: (N,) integers in 0..len(classes)-1; stored as int64 (a copy if needed).
        classes: list of str, the class names; classes[k] names label k.
        skipped: paths of source files that could not be read (image folders); default empty.
        origin: what the images were read from, as a short string, or None: for image
            folders a hash of their files' names (<class folder>/<file>) in the rows' order,
            so that two loads of a changed folder tell apart.

    Attributes: images, labels, classes, skipped, origin, num_classes. len(dataset) is N.
    """

    def __init__(self, images, labels, classes, skipped=(), origin=None):
        images = check_images("ArrayDataset", images)
        labels = np.asarray(labels)
        if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
            raise ValueError(f"ArrayDataset: labels must be a 1-d integer array (N,), "
                             f"got {labels.dtype} array of shape {labels.shape}")
        if len(labels) != len(images):
            raise ValueError(f"ArrayDataset: labels has {len(labels)} entries but images has "
                             f"{len(images)}; they must match")
        classes = list(classes)
        if not classes or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"ArrayDataset: classes must be a non-empty list of str, "
                            f"got {classes!r}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"ArrayDataset: class names must be unique, got {classes!r}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"ArrayDataset: labels must lie in 0..{len(classes) - 1} "
                             f"(one per class), got values {labels.min()}..{labels.max()}")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = classes
        self.skipped = list(skipped)
        self.origin = origin

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self):
        """Number of classes, len(classes)."""
        return len(self.classes)

    def __repr__(self):
        n, h, w, c = self.images.shape
        kind = "memmap" if isinstance(self.images, np.memmap) else "array"
        return (f"ArrayDataset({n} images {h}x{w}x{c} uint8 {kind}, "
                f"{self.num_classes} classes, {len(self.skipped)} skipped)")

    def subset(self, indices):
        """A new ArrayDataset holding the rows `indices` ((K,) ints), copied into memory
        (no origin: its rows are some of the origin's)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes)

    def channel_mean(self):
        """Mean pixel value of each channel over the whole set.

        Returns: (3,) float32, R, G, B in pixel units 0..255 (a grey set gives three equal values).
        The set is read in chunks of 256 images, so a memory-mapped set of any size works; the
        sums are exact (int64), so millions of pixels add up without rounding drift.
        """
        n, h, w, c = self.images.shape
        if n == 0:
            raise ValueError("ArrayDataset.channel_mean: the data set is empty")
        total = np.zeros(c, dtype=np.int64)
        for start in range(0, n, _CHUNK):
            total += self.images[start:start + _CHUNK].sum(axis=(0, 1, 2), dtype=np.int64)
        mean = total / (n * h * w)
        return np.broadcast_to(mean, (3,)).astype(np.float32)

    def channel_std(self, mean=None, max_images=500, seed=0):
        """Standard deviation of each channel around ``mean`` (default: channel_mean()),
        estimated on a seeded sample of at most ``max_images`` images.

        Returns: (3,) float32 in pixel units 0..255, at least 1 (a flat channel would
        otherwise divide by zero).  Used to scale inputs to unit variance.
        """
        n = len(self.labels)
        if n == 0:
            raise ValueError("ArrayDataset.channel_std: the data set is empty")
        mean = self.channel_mean() if mean is None else np.asarray(mean, np.float64)
        pick = np.sort(np.random.default_rng(seed).choice(n, min(max_images, n), replace=False))
        c = self.images.shape[-1]
        squares = np.zeros(c, dtype=np.float64)  # summed 16 images at a time: 25 MB, not 1.6 GB
        for start in range(0, len(pick), 16):
            d = np.asarray(self.images[pick[start:start + 16]], dtype=np.float64).reshape(-1, c) - mean[:c]
            squares += (d * d).sum(axis=0)
        std = np.sqrt(squares / (len(pick) * int(np.prod(self.images.shape[1:3]))))
        return np.resize(np.maximum(std, 1.0), 3).astype(np.float32)

    def pca_lighting(self, num_pixels=200_000, seed=0):
        """Principal components of the RGB pixel colours, for AlexNet's PCA lighting.

        The paper computes the 3×3 covariance matrix of the RGB values of all training pixels and
        its eigen-decomposition; we estimate it from `num_pixels` pixels drawn uniformly at random
        (image and position) with a generator seeded by `seed`, which gives the same answer to
        about two decimals at a small fraction of the cost.

        Units: pixel values are scaled to [0, 1] first, as in the common ImageNet constants
        (IMAGENET_EIGVAL / IMAGENET_EIGVEC), so the result can replace them directly. Following
        the paper literally, eigval are eigenvalues of the covariance (units of value²), not
        standard deviations.

        Returns: (eigval, eigvec): eigval (3,) float32 in decreasing order; eigvec (3, 3) float32
        whose column j is the unit eigenvector of eigval[j], rows R, G, B.
        """
        num_pixels = check_int("ArrayDataset.pca_lighting", "num_pixels", num_pixels, minimum=2)
        n, h, w, c = self.images.shape
        if n == 0:
            raise ValueError("ArrayDataset.pca_lighting: the data set is empty")
        rng = np.random.default_rng(check_int("ArrayDataset.pca_lighting", "seed", seed, 0))
        # Sort the sampled image indices so a memory-mapped set is read front to back.
        which = np.sort(rng.integers(0, n, size=num_pixels))
        ys = rng.integers(0, h, size=num_pixels)
        xs = rng.integers(0, w, size=num_pixels)
        pixels = np.empty((num_pixels, c), dtype=np.float64)
        for start in range(0, num_pixels, 65536):
            sl = slice(start, start + 65536)
            pixels[sl] = self.images[which[sl], ys[sl], xs[sl]]
        pixels = np.broadcast_to(pixels, (num_pixels, 3)) / 255.0   # grey -> R = G = B
        cov = np.cov(pixels, rowvar=False)                          # (3, 3)
        eigval, eigvec = np.linalg.eigh(cov)                        # ascending order
        order = np.argsort(eigval)[::-1]
        eigval = np.clip(eigval[order], 0.0, None)                  # -1e-18 -> 0
        return eigval.astype(np.float32), eigvec[:, order].astype(np.float32)


# ------------------------------------------------------------------------------------------
# Splitting
# ------------------------------------------------------------------------------------------

def stratified_split_indices(labels, val_fraction, seed, func="split_dataset"):
    """Split sample indices into train and validation, class by class.

    Args:
        labels: (N,) integer labels.
        val_fraction: float in (0, 1), the share of each class that goes to validation.
        seed: int; the split depends only on (labels, val_fraction, seed).

    Each class c with n_c samples sends round(val_fraction · n_c) of them, but at least 1 and at
    most n_c − 1, to validation (a class with a single sample stays in train). So every class is
    represented in both parts whenever it can be.

    Returns: (train_idx, val_idx), two sorted (K,) int64 arrays, disjoint, together 0..N-1.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (float, int, np.floating)) \
            or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"{func}: val_fraction must be a number strictly between 0 and 1, "
                         f"got {val_fraction!r}")
    seed = check_int(func, "seed", seed, minimum=0)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val_parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = int(round(float(val_fraction) * len(members)))
        n_val = min(max(n_val, 1), len(members) - 1)
        val_parts.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    return np.flatnonzero(~is_val).astype(np.int64), val_idx.astype(np.int64)


def stratified_subset_indices(labels, count, seed=0, func="stratified_subset_indices"):
    """Choose `count` of the samples so that every class keeps its share.

    Args:
        labels: (N,) integer labels.
        count: int >= 1, how many samples to keep (count >= N keeps them all).
        seed: int >= 0; which samples of a class are kept is drawn from it.

    Class c with n_c of the N samples gets floor(count · n_c / N) places; the places left over go
    to the classes with the largest remainders. When count is at least the number of classes,
    every class keeps at least one sample (the place is taken from the class with the most).
    So a subset of a sorted folder (all cats, then all dogs, ...) is not all cats.

    Returns: sorted (K,) int64 indices, K = min(count, N).
    """
    count = check_int(func, "count", count, minimum=1)
    seed = check_int(func, "seed", seed, minimum=0)
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / len(labels)
    quota = np.floor(exact).astype(np.int64)
    # largest remainders first; ties to the lower label (a stable sort keeps label order)
    for k in np.argsort(-(exact - quota), kind="stable")[:count - quota.sum()]:
        quota[k] += 1
    if count >= len(classes):
        for k in np.flatnonzero(quota == 0):
            quota[np.argmax(quota)] -= 1
            quota[k] = 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_dataset(dataset, val_fraction=0.1, seed=0):
    """Split an ArrayDataset into (train, val), stratified per class.

    See stratified_split_indices for how many samples of each class go to validation. Both
    parts keep all classes (same `classes` list) and are copied into memory; to split a set too
    large for memory, use load_image_folders, which splits the file list before decoding and
    caches each part on disk.

    Returns: (train, val), two ArrayDatasets.
    """
    if not isinstance(dataset, ArrayDataset):
        raise TypeError(f"split_dataset: dataset must be an ArrayDataset, "
                        f"got {type(dataset).__name__}")
    train_idx, val_idx = stratified_split_indices(dataset.labels, val_fraction, seed)
    return dataset.subset(train_idx), dataset.subset(val_idx)
