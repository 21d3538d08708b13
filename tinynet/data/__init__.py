"""tinynet.data: the data pipeline of AlexNet (docs/alexnet.md, "Data"), in NumPy and Pillow.

Data sets (all return ArrayDataset: images (N, H, W, C) uint8 0..255, labels (N,) int64):
    make_shapes            procedural shapes, classes that differ only in shape (cached .npy)
    load_image_folder(s)   root/<class>/*.jpg, decoded once to a memory-mapped .npy cache
    load_fashion_mnist     Debian's dataset-fashion-mnist, kept at 28×28 grey
    split_dataset          stratified train/validation split
    stratified_subset_indices  a smaller set with every class's share kept

Transforms (uint8 NHWC batch -> float32 NCHW network input, pixel units 0..255 minus the mean):
    TrainTransform         random 227 crop (or the centre one), mirror, PCA lighting;
                           randomness keyed by (seed, epoch, sample index)
    EvalTransform          centre crop, it and its mirror, or ten crops

DataLoader                 reproducible, resumable, shardable batches, prepared in a
                           background thread
"""

from .dataset import (ArrayDataset, split_dataset, stratified_split_indices,
                      stratified_subset_indices)
from .fashion_mnist import FASHION_MNIST_CLASSES, has_fashion_mnist_files, load_fashion_mnist, read_idx
from .folder import (HELD_OUT_NAMES, IMAGE_EXTENSIONS, decode_image, find_layout,
                     load_image_folder, load_image_folders, printable)
from .loader import DataLoader
from .shapes import DIFFICULTIES, SHAPE_CLASSES, make_shapes, render_shape_image, shapes_class_names
from .transforms import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN, EvalTransform,
                         TrainTransform, resize_nearest)

__all__ = [
    "ArrayDataset", "split_dataset", "stratified_split_indices", "stratified_subset_indices",
    "make_shapes", "shapes_class_names", "render_shape_image", "SHAPE_CLASSES", "DIFFICULTIES",
    "load_image_folder", "load_image_folders", "decode_image", "find_layout",
    "IMAGE_EXTENSIONS", "HELD_OUT_NAMES", "printable",
    "load_fashion_mnist", "has_fashion_mnist_files", "read_idx", "FASHION_MNIST_CLASSES",
    "TrainTransform", "EvalTransform", "resize_nearest",
    "IMAGENET_MEAN", "IMAGENET_EIGVAL", "IMAGENET_EIGVEC",
    "DataLoader",
]
