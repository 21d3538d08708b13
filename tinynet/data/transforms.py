"""AlexNet's input pipeline on a batch: crops, reflections, PCA lighting, mean subtraction.

Both transforms take a batch of stored images and return the network input:

    images  (N, H, W, C) uint8, RGB (C = 3) or grey (C = 1), values 0..255
    output  (N, 3, crop, crop) float32, C-contiguous NCHW            (EvalTransform with k crops,
                                                                      2 or 10: (N, k, 3, crop, crop))

Units of the output (the paper's, and Caffe's): pixel values stay in 0..255 units,

    output = pixel − mean + 255 · lighting                      (std=None, the default)
    output = (pixel − mean + 255 · lighting) / std              (std given, 0..255 units too)

with `mean` (3,) the per-channel mean RGB in 0..255 (ArrayDataset.channel_mean()), and
`lighting` (3,) the per-image PCA colour offset, computed in [0, 1] pixel units like the
eigenvalue constants and therefore multiplied by 255.

Geometry (docs/alexnet.md, "Data"): images are `size`×`size` (256) after the data set's rescaling;
training takes a random `crop`×`crop` (227) window and mirrors it left-right with p = 0.5;
evaluation takes the centre window, or it and its mirror, or ten windows (4 corners + centre,
each also mirrored).
Stored images of another size (Fashion-MNIST: 28×28 grey) are first enlarged to size×size by
nearest-neighbour resampling, per batch, so the set never has to be stored at 256×256; grey
images are repeated into R = G = B.

Randomness is counter-based: every random number for sample `index` in epoch `epoch` comes from a
generator seeded with (seed, epoch, index) alone (see TrainTransform.sample_params). A sample's
augmentation is therefore the same whatever the batch size, batch order, number of workers or
data-parallel ranks, and whether training resumed from a checkpoint.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .dataset import check_images, check_int, check_rgb

# Per-channel RGB mean of ImageNet training images, pixel units 0..255 (Caffe / fb.resnet.torch).
# The default `mean`; pass dataset.channel_mean() to use your own data's.
IMAGENET_MEAN = (123.68, 116.779, 103.939)

# PCA of ImageNet RGB pixel values in [0, 1] units (fb.resnet.torch):
# eigenvalues λ and eigenvectors as COLUMNS (rows R, G, B).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], dtype=np.float32)

# First word of the key of every per-sample generator; it keeps augmentation streams apart from
# the other seeded streams of tinynet.data (the loader's shuffle, the shapes generator).
_AUGMENT_STREAM = 0x41554731


def resize_nearest(images, size):
    """Enlarge or shrink images to size×size by nearest-neighbour resampling (numpy, no loops).

    Args:
        images: (N, H, W, C) uint8.
        size: int, output height and width in pixels.
    Returns: (N, size, size, C) uint8. Output pixel i takes source pixel floor((i + ½)·H / size):
        pixel centres are aligned, so an integer enlargement repeats every source pixel equally.
        Non-square images are stretched (the image-folder loader makes images square first).
    """
    images = check_images("resize_nearest", images)
    size = check_int("resize_nearest", "size", size, minimum=1)
    n, h, w, c = images.shape
    out_px = np.arange(size)
    rows = ((2 * out_px + 1) * h) // (2 * size)      # (size,) source row of each output row
    cols = ((2 * out_px + 1) * w) // (2 * size)      # (size,) source column of each output column
    return images[:, rows][:, :, cols]


def _prepare(func, images, size):
    """Check a batch and bring it to (N, size, size, C) uint8 (resizing only when needed)."""
    images = check_images(func, images)
    if images.shape[1:3] != (size, size):
        images = resize_nearest(images, size)
    return images


def _crop_to_float(images, which, top, left, flip, crop):
    """Cut one crop×crop window per entry and convert it to float32 NCHW.

    Args:
        images: (N, S, S, C) uint8 batch.
        which, top, left: (K,) int arrays: crop k comes from image which[k], rows
            top[k]..top[k]+crop-1 and columns left[k]..left[k]+crop-1.
        flip: (K,) bool: mirror crop k left-right.
    Returns: (K, 3, crop, crop) float32, C-contiguous, values still 0..255 (grey repeated).

    How: sliding_window_view gives, without copying, every crop×crop window of every image as
    an array windows[n, y, x] of shape (C, crop, crop); one fancy index then copies the K wanted
    windows at once. A mirrored crop at column `left` is the unmirrored crop at column
    S − crop − left of the mirrored image, so mirroring is a second window view, of
    images[:, :, ::-1].
    """
    s = images.shape[2]
    out = np.empty((len(which), 3, crop, crop), dtype=np.float32)
    # windows[n, y, x] is the (C, crop, crop) window with top-left corner (y, x) of image n.
    windows = sliding_window_view(images, (crop, crop), axis=(1, 2))   # (N, S-c+1, S-c+1, C, c, c)
    mirrored = sliding_window_view(images[:, :, ::-1], (crop, crop), axis=(1, 2))
    keep = ~flip
    # Assigning (K, C, c, c) uint8 into (K, 3, c, c) float32 converts to float, and broadcasts
    # a grey C = 1 to all three channels.
    out[keep] = windows[which[keep], top[keep], left[keep]]
    out[flip] = mirrored[which[flip], top[flip], s - crop - left[flip]]
    return out


def _check_geometry(func, crop, size):
    crop = check_int(func, "crop", crop, minimum=1)
    size = check_int(func, "size", size, minimum=1)
    if crop > size:
        raise ValueError(f"{func}: crop ({crop}) must not exceed size ({size})")
    return crop, size


class TrainTransform:
    """Training augmentation of AlexNet: random crop, random mirror, PCA lighting, mean subtraction.

    Args:
        crop: side of the random square crop in pixels (227).
        size: side the images are brought to before cropping (256); images stored at another
            size are resized (nearest neighbour) per batch.
        mean: (3,) per-channel RGB mean in 0..255 units, subtracted (default IMAGENET_MEAN;
            pass dataset.channel_mean() for your data).
        std: None (default, the paper: no division) or (3,) per-channel divisor in 0..255 units.
        flip: mirror left-right with probability 0.5.
        random_crop: True (the paper): the crop's corner is drawn per sample; False: always the
            centre crop, as EvalTransform takes it (mirror and lighting still apply).
        lighting_std: σ of the PCA lighting coefficients α_j ~ N(0, σ) (paper: 0.1; 0 disables).
        eigval, eigvec: (3,) eigenvalues and (3, 3) eigenvector columns of the RGB covariance in
            [0, 1] pixel units (default IMAGENET_EIGVAL / IMAGENET_EIGVEC; or the result of
            dataset.pca_lighting()).
        seed: int >= 0; with (epoch, sample index) it determines every random choice.

    Call: transform(images, indices, epoch) -> (N, 3, crop, crop) float32 C-contiguous, with
        images (N, H, W, C) uint8, indices (N,) the samples' indices in the data set (ints >= 0),
        epoch int >= 0. Units: see the module docstring.
    """

    def __init__(self, crop=227, size=256, mean=IMAGENET_MEAN, std=None, flip=True,
                 lighting_std=0.1, eigval=None, eigvec=None, seed=0, random_crop=True):
        func = "TrainTransform"
        self.crop, self.size = _check_geometry(func, crop, size)
        self.mean = check_rgb(func, "mean", mean)
        self.std = None if std is None else check_rgb(func, "std", std, positive=True)
        self.flip = bool(flip)
        self.random_crop = bool(random_crop)
        number = isinstance(lighting_std, (int, float, np.floating)) \
            and not isinstance(lighting_std, bool)
        if not number or not lighting_std >= 0:
            raise ValueError(f"{func}: lighting_std must be a number >= 0, got {lighting_std!r}")
        self.lighting_std = float(lighting_std)
        eigval = IMAGENET_EIGVAL if eigval is None else np.asarray(eigval, dtype=np.float32)
        eigvec = IMAGENET_EIGVEC if eigvec is None else np.asarray(eigvec, dtype=np.float32)
        if eigval.shape != (3,) or eigvec.shape != (3, 3):
            raise ValueError(f"{func}: eigval must have shape (3,) and eigvec (3, 3), "
                             f"got {eigval.shape} and {eigvec.shape}")
        self.eigval, self.eigvec = eigval, eigvec
        self.seed = check_int(func, "seed", seed, minimum=0)

    def sample_params(self, indices, epoch):
        """The random choices for each sample, drawn from its own counter-based generator.

        Sample `index` in `epoch` uses np.random.default_rng([stream, seed, epoch, index]) and
        draws, always in this order and whatever the options: top row, left column, mirror coin,
        three standard normals. Switching the random crop, flip or lighting off therefore
        leaves the other choices unchanged.

        Returns: (top, left, flip, alpha): top, left (N,) int64 crop corner in size×size pixels,
            each in 0..size-crop ((size-crop)//2, the centre, without random_crop); flip (N,)
            bool; alpha (N, 3) float64 lighting coefficients (already multiplied by
            lighting_std).
        """
        indices = np.asarray(indices)
        integers = np.issubdtype(indices.dtype, np.integer) or indices.size == 0
        if indices.ndim != 1 or not integers or (indices.size and indices.min() < 0):
            raise ValueError(f"TrainTransform: indices must be a 1-d array of ints >= 0 (N,), "
                             f"got {indices.dtype} array of shape {indices.shape}")
        epoch = check_int("TrainTransform", "epoch", epoch, minimum=0)
        n, span = len(indices), self.size - self.crop + 1
        top = np.empty(n, np.int64)
        left = np.empty(n, np.int64)
        flip = np.empty(n, bool)
        alpha = np.empty((n, 3), np.float64)
        for k, index in enumerate(indices.tolist()):
            rng = np.random.default_rng([_AUGMENT_STREAM, self.seed, epoch, index])
            top[k], left[k] = rng.integers(0, span, size=2)
            flip[k] = rng.random() < 0.5
            alpha[k] = rng.standard_normal(3)
        if not self.random_crop:
            top[:] = left[:] = (self.size - self.crop) // 2
        return top, left, flip & self.flip, alpha * self.lighting_std

    def lighting(self, alpha):
        """PCA lighting offsets: Σ_j eigvec[:, j] · alpha_j · eigval_j for each image.

        Args: alpha (N, 3) coefficients. Returns: (N, 3) float32 RGB offsets in [0, 1] pixel units.
        """
        return ((alpha * self.eigval) @ self.eigvec.T).astype(np.float32)

    def __call__(self, images, indices, epoch):
        images = _prepare("TrainTransform", images, self.size)
        top, left, flip, alpha = self.sample_params(indices, epoch)
        if len(top) != len(images):
            raise ValueError(f"TrainTransform: got {len(images)} images but {len(top)} indices; "
                             f"one index per image is needed")
        out = _crop_to_float(images, np.arange(len(images)), top, left, flip, self.crop)
        # One RGB shift per image: − mean + 255 · lighting, both in 0..255 units.
        shift = 255.0 * self.lighting(alpha) - self.mean                # (N, 3)
        out += shift[:, :, None, None]
        if self.std is not None:
            out /= self.std[None, :, None, None]
        return out


class EvalTransform:
    """Test-time input of AlexNet: the centre crop, the centre crop and its mirror, or ten crops;
    mean subtraction; no randomness.

    Args:
        crop, size, mean, std: as for TrainTransform.
        crops: 1 (default): the centre crop, output (N, 3, crop, crop).
            2: the centre crop and the same window mirrored left-right, output
            (N, 2, 3, crop, crop): a network trained with random mirrors sees both, and averaging
            its softmax over the two is the cheapest part of the paper's ten-crop test.
            10: output (N, 10, 3, crop, crop) with crops in Caffe's order: 0 top-left,
            1 top-right, 2 bottom-left, 3 bottom-right, 4 centre, then 5..9 the same five mirrored
            left-right.
            With 2 or 10, average the network's softmax over axis 1 (docs/alexnet.md, "Data").
        ten_crop: True is crops=10 (the older spelling).

    Call: transform(images, indices=None, epoch=None) -> float32 C-contiguous, images
        (N, H, W, C) uint8; indices and epoch are accepted (so DataLoader can call any
        transform alike) and ignored.
    """

    CROPS = (1, 2, 10)

    def __init__(self, crop=227, size=256, mean=IMAGENET_MEAN, std=None, crops=1, ten_crop=False):
        func = "EvalTransform"
        self.crop, self.size = _check_geometry(func, crop, size)
        self.mean = check_rgb(func, "mean", mean)
        self.std = None if std is None else check_rgb(func, "std", std, positive=True)
        if crops not in self.CROPS or isinstance(crops, bool):
            raise ValueError(f"{func}: crops must be one of {self.CROPS}, got {crops!r}")
        if ten_crop and crops not in (1, 10):
            raise ValueError(f"{func}: ten_crop=True is crops=10, but crops={crops} was given too")
        self.crops = 10 if ten_crop else crops

    def __call__(self, images, indices=None, epoch=None):
        images = _prepare("EvalTransform", images, self.size)
        n, far, mid = len(images), self.size - self.crop, (self.size - self.crop) // 2
        if self.crops == 10:
            # (top, left) of the five windows, repeated for the mirrored five.
            top = np.array([0, 0, far, far, mid] * 2)
            left = np.array([0, far, 0, far, mid] * 2)
            flip = np.repeat([False, True], 5)
        else:  # the centre window, and with crops=2 also its mirror
            top = left = np.full(self.crops, mid)
            flip = np.arange(self.crops) == 1
        k = self.crops
        # Entry i*k + j is crop j of image i.
        which = np.repeat(np.arange(n), k)
        out = _crop_to_float(images, which, np.tile(top, n), np.tile(left, n), np.tile(flip, n),
                             self.crop)
        out -= self.mean[None, :, None, None]
        if self.std is not None:
            out /= self.std[None, :, None, None]
        if k > 1:
            return out.reshape(n, k, 3, self.crop, self.crop)
        return out
