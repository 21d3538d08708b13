"""A procedural image set whose classes differ only in shape: a small stand-in for ImageNet.

Each image shows one object of its class (a circle, a star, two discs side by side, ...) drawn
with Pillow on a solid or linear-gradient background, optionally with clutter and noise.
Everything that is not shape is random and independent of the class: the object's colour, the
background's colours and gradient direction, the position, size and rotation. So colour and
brightness carry no information about the label; a network has to learn spatial features.

Classes (labels 0..15; make_shapes(num_classes=k) uses the first k):

    0 circle        4 plus            8 l_shape        12 square_frame
    1 square        5 ring            9 arrow          13 t_shape
    2 triangle      6 two_horizontal 10 crescent       14 three_dots
    3 star          7 two_vertical   11 hexagon        15 half_disc

two_horizontal and two_vertical differ only in the arrangement of two discs, so their rotation
is limited to ±25° at every difficulty (otherwise one would turn into the other).

Difficulty levels (`size` is the image side; an object's scale is its diameter / size):

    easy      scale 0.45–0.70, centre within ±10 % of the image centre, rotation ±20°,
              no clutter, no noise. Meant to be learnt by a small convnet in a few epochs.
    standard  scale 0.25–0.55, anywhere in the image (fully inside), any rotation,
              0–3 clutter strokes/dots, Gaussian brightness noise σ = 4 (0..255 units, one
              value per pixel added to R, G and B).
    hard      scale 0.14–0.30, anywhere, any rotation, 6–14 clutter strokes/dots,
              brightness noise σ = 10: small objects in clutter.

Clutter: short straight strokes (length 4–15 % of size, 1–3 px wide) and small dots (radius at
most 1.2 % of size) in random colours, drawn behind the object; none is a class shape.

Determinism: image `index` of split "train"/"val" is drawn from a generator seeded with
(seed, split, index) alone and has label index % num_classes, so the same seed gives identical
bytes in any generation order, and a larger set starts with the images of a smaller one.

Measured speed, make_shapes(root) with the defaults (10 classes × (500 + 100) = 6,000 images at
256×256, 1.2 GB written), one core of the shared 2-core development machine, numpy 2.4,
Pillow 13: "easy" 9 s, "standard" 14 s, "hard" 16 s, writing included. A cached set opens in
milliseconds.
"""

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from .. import files
from .dataset import ArrayDataset, check_int, load_json, save_json_atomic, save_npy_atomic

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "plus", "ring", "two_horizontal",
                 "two_vertical", "l_shape", "arrow", "crescent", "hexagon", "square_frame",
                 "t_shape", "three_dots", "half_disc")

DIFFICULTIES = {
    # scale: object diameter / image side; jitter: max centre offset / side (None: anywhere);
    # rotation: max |angle| in degrees; clutter: (min, max) number of strokes/dots;
    # noise: σ of Gaussian brightness noise in 0..255 units.
    "easy":     dict(scale=(0.45, 0.70), jitter=0.10, rotation=20.0, clutter=(0, 0), noise=0.0),
    "standard": dict(scale=(0.25, 0.55), jitter=None, rotation=180.0, clutter=(0, 3), noise=4.0),
    "hard":     dict(scale=(0.14, 0.30), jitter=None, rotation=180.0, clutter=(6, 14), noise=10.0),
}

# Bump when the drawing changes: caches made by an older version are then regenerated.
GENERATOR_VERSION = 2  # 2: plus, l_shape, t_shape and half_disc shrunk into the unit disc

# First word of every image generator's key (see transforms._AUGMENT_STREAM); then seed, split.
_SHAPES_STREAM = 0x53484150
_SPLIT_IDS = {"train": 0, "val": 1}

# Classes whose identity depends on orientation: their rotation is capped at this many degrees.
_ORIENTED = {"two_horizontal": 25.0, "two_vertical": 25.0}


# ------------------------------------------------------------------------------------------
# Shape geometry, in unit coordinates: the object fits in the disc of radius 1 around (0, 0),
# x to the right, y downwards (image convention). A shape is a list of primitives drawn in
# order on a mask: ("poly", (P, 2) vertices, fill) or ("disc", (cx, cy), radius, fill), where
# fill 255 adds to the shape and fill 0 cuts a hole.
# ------------------------------------------------------------------------------------------

def _regular(n, radius=1.0, phase=-math.pi / 2):
    """(n, 2) vertices of a regular n-gon, the first one straight up."""
    a = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _star(points=5, outer=1.0, inner=0.4):
    """(2·points, 2) vertices of a star, alternating outer and inner radius."""
    a = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _poly(*xy):
    return np.array(xy, dtype=np.float64)


_HALF = math.sqrt(0.5)          # half-side of the square inscribed in the unit circle
_ARC = np.linspace(0, math.pi, 25)

SHAPES = {
    "circle": [("disc", (0.0, 0.0), 1.0, 255)],
    "square": [("poly", _regular(4, phase=math.pi / 4), 255)],
    "triangle": [("poly", _regular(3), 255)],
    "star": [("poly", _star(), 255)],
    "plus": [("poly", _poly((-0.2, -1), (0.2, -1), (0.2, 1), (-0.2, 1)), 255),
             ("poly", _poly((-1, -0.2), (1, -0.2), (1, 0.2), (-1, 0.2)), 255)],
    "ring": [("disc", (0.0, 0.0), 1.0, 255), ("disc", (0.0, 0.0), 0.6, 0)],
    "two_horizontal": [("disc", (-0.55, 0.0), 0.42, 255), ("disc", (0.55, 0.0), 0.42, 255)],
    "two_vertical": [("disc", (0.0, -0.55), 0.42, 255), ("disc", (0.0, 0.55), 0.42, 255)],
    "l_shape": [("poly", _poly((-0.6, -0.9), (-0.2, -0.9), (-0.2, 0.5), (0.7, 0.5), (0.7, 0.9),
                               (-0.6, 0.9)), 255)],
    "arrow": [("poly", _poly((-0.95, -0.15), (0.2, -0.15), (0.2, -0.5), (0.95, 0.0), (0.2, 0.5),
                             (0.2, 0.15), (-0.95, 0.15)), 255)],
    "crescent": [("disc", (0.0, 0.0), 1.0, 255), ("disc", (0.45, 0.0), 0.85, 0)],
    "hexagon": [("poly", _regular(6), 255)],
    "square_frame": [("poly", _regular(4, phase=math.pi / 4), 255),
                     ("poly", _regular(4, radius=0.6, phase=math.pi / 4), 0)],
    "t_shape": [("poly", _poly((-0.85, -0.85), (0.85, -0.85), (0.85, -0.45), (0.2, -0.45),
                               (0.2, 0.95), (-0.2, 0.95), (-0.2, -0.45), (-0.85, -0.45)), 255)],
    "three_dots": [("disc", tuple(p), 0.32, 255) for p in _regular(3, radius=0.66)],
    "half_disc": [("poly", np.stack([np.cos(_ARC), np.sin(_ARC) - 0.5], axis=1), 255)],
}
assert tuple(SHAPES) == SHAPE_CLASSES


def shape_extent(primitives):
    """How far from (0, 0) a shape reaches: its farthest vertex or disc edge."""
    return max(float(np.hypot(*prim[1].T).max()) if prim[0] == "poly" else math.hypot(*prim[1]) + prim[2]
               for prim in primitives)


def _fit_unit_disc(primitives):
    """The shape scaled about (0, 0) to reach radius 1 at most, so that placing its centre
    r pixels from every edge keeps it inside the image, and every class is drawn at the scale
    it is given (the plus, the L, the T and the half disc, as written above, reach 1.02-1.20)."""
    s = min(1.0, 1.0 / shape_extent(primitives))
    fitted = []
    for prim in primitives:
        if prim[0] == "poly":
            _, vertices, fill = prim
            fitted.append(("poly", vertices * s, fill))
        else:
            _, (cx, cy), radius, fill = prim
            fitted.append(("disc", (cx * s, cy * s), radius * s, fill))
    return fitted


SHAPES = {name: _fit_unit_disc(primitives) for name, primitives in SHAPES.items()}


def shapes_class_names(num_classes=10):
    """The names of the first `num_classes` shape classes (list of str, label order)."""
    num_classes = check_int("shapes_class_names", "num_classes", num_classes, minimum=2)
    if num_classes > len(SHAPE_CLASSES):
        raise ValueError(f"shapes_class_names: num_classes must be at most {len(SHAPE_CLASSES)}, "
                         f"got {num_classes}")
    return list(SHAPE_CLASSES[:num_classes])


# ------------------------------------------------------------------------------------------
# Drawing one image
# ------------------------------------------------------------------------------------------

_GRID_CACHE = {}


def _grid(size):
    """Pixel-centre coordinates (size, size) float32 x and y in 0..1, cached per size."""
    if size not in _GRID_CACHE:
        t = (np.arange(size, dtype=np.float32) + 0.5) / size
        _GRID_CACHE[size] = (t[None, :], t[:, None])
    return _GRID_CACHE[size]


def _background(rng, size):
    """Solid (p = ½) or linear-gradient background. Returns (image (size, size, 3) uint8,
    colours (2, 3) float: the two end colours, equal for a solid background)."""
    c0 = rng.uniform(0, 255, 3)
    solid = rng.random() < 0.5
    c1 = c0 if solid else rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    if solid:
        image = np.empty((size, size, 3), np.uint8)
        image[:] = np.round(c0).astype(np.uint8)
    else:
        x, y = _grid(size)
        # t goes from 0 to 1 across the image along direction `angle` (clipped at the corners).
        t = np.clip((x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle) + 0.5, 0, 1)
        image = (c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32))
        image = image.astype(np.uint8)
    return image, np.stack([c0, c1])


def _object_colour(rng, background_colours, min_distance=100.0):
    """A random RGB colour at least `min_distance` (Euclidean, 0..255 units) from both
    background colours, so the object is visible; the rule is the same for every class."""
    for _ in range(32):
        colour = rng.uniform(0, 255, 3)
        if np.min(np.linalg.norm(background_colours - colour, axis=1)) >= min_distance:
            return colour
    return 255.0 - background_colours[0]        # rare fallback: the complement of the background


def _draw_clutter(draw, rng, size, count):
    """`count` short strokes and small dots in random colours."""
    for _ in range(count):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, size, 2)
        if rng.random() < 0.6:
            length = rng.uniform(0.04, 0.15) * size
            angle = rng.uniform(0, 2 * math.pi)
            width = int(rng.integers(1, 4))
            draw.line([(x, y), (x + length * math.cos(angle), y + length * math.sin(angle))],
                      fill=colour, width=width)
        else:
            r = rng.uniform(0.3, 1.0) * 0.012 * size + 0.5
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def render_shape_image(label, rng, size=256, difficulty="standard"):
    """Draw one image of class `label` (index into SHAPE_CLASSES).

    Args:
        label: int 0..15.
        rng: np.random.Generator, the only source of randomness.
        size: image side in pixels.
        difficulty: "easy", "standard" or "hard" (see the module docstring).
    Returns: (size, size, 3) uint8 RGB, values 0..255.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"render_shape_image: difficulty must be one of {sorted(DIFFICULTIES)}, "
                         f"got {difficulty!r}")
    label = check_int("render_shape_image", "label", label, minimum=0)
    if label >= len(SHAPE_CLASSES):
        raise ValueError(f"render_shape_image: label must be < {len(SHAPE_CLASSES)}, got {label}")
    size = check_int("render_shape_image", "size", size, minimum=16)
    level = DIFFICULTIES[difficulty]
    name = SHAPE_CLASSES[label]
    image, bg_colours = _background(rng, size)
    canvas = Image.fromarray(image)
    _draw_clutter(ImageDraw.Draw(canvas), rng, size, int(rng.integers(level["clutter"][0],
                                                                      level["clutter"][1] + 1)))

    # Placement: radius r in pixels, centre (cx, cy), rotation theta.
    r = 0.5 * size * rng.uniform(*level["scale"])
    if level["jitter"] is None:
        cx, cy = rng.uniform(r, size - r, 2)
    else:
        cx, cy = size / 2 + rng.uniform(-1, 1, 2) * level["jitter"] * size
        cx, cy = np.clip([cx, cy], r, size - r)
    max_angle = min(level["rotation"], _ORIENTED.get(name, 180.0))
    theta = math.radians(rng.uniform(-max_angle, max_angle))
    # Unit coordinates -> pixels: p_pixel = r · R(theta) · p + centre, R a rotation matrix.
    to_pixels = r * np.array([[math.cos(theta), -math.sin(theta)],
                              [math.sin(theta), math.cos(theta)]])
    centre = np.array([cx, cy])

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for prim in SHAPES[name]:
        if prim[0] == "poly":
            points = prim[1] @ to_pixels.T + centre
            draw.polygon([tuple(p) for p in points.tolist()], fill=prim[2])
        else:
            (px, py), radius = to_pixels @ np.array(prim[1]) + centre, prim[2] * r
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=prim[3])
    colour = tuple(int(v) for v in np.round(_object_colour(rng, bg_colours)))
    canvas.paste(colour, (0, 0, size, size), mask)

    out = np.asarray(canvas)
    if level["noise"] > 0:
        # Brightness noise: one Gaussian value per pixel, added to R, G and B alike (a third of
        # the random numbers of independent per-channel noise, and looks like sensor noise).
        noise = rng.standard_normal((size, size), dtype=np.float32)
        noise *= np.float32(level["noise"])
        noisy = out.astype(np.int16)
        noisy += np.rint(noise).astype(np.int16)[..., None]
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------
# The cached data set
# ------------------------------------------------------------------------------------------

def _generate_split(path, split, count, num_classes, size, seed, difficulty):
    """Render `count` images straight into a .npy memory map at `path` (atomically)."""
    def write(tmp):
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                           shape=(count, size, size, 3))
        for index in range(count):
            rng = np.random.default_rng([_SHAPES_STREAM, seed, _SPLIT_IDS[split], index])
            images[index] = render_shape_image(index % num_classes, rng, size, difficulty)
        images.flush()
        del images

    files.replace_atomically(path, write)


def make_shapes(root, num_classes=10, train_per_class=500, val_per_class=100, size=256, seed=0,
                difficulty="standard"):
    """The procedural shapes set, generated once and cached under `root`.

    Args:
        root: folder for the cache (created if needed): train_images.npy, train_labels.npy,
            val_images.npy, val_labels.npy and shapes.json (the parameters). If shapes.json
            records other parameters (or an older generator), the set is regenerated.
        num_classes: 2..16, uses the first num_classes of SHAPE_CLASSES.
        train_per_class, val_per_class: images per class in each split (>= 1).
        size: image side in pixels (>= 16); AlexNet wants 256.
        seed: int >= 0. Same seed and parameters -> identical bytes.
        difficulty: "easy", "standard" or "hard" (see the module docstring).

    Returns: (train, val): ArrayDatasets with images (N, size, size, 3) uint8 RGB, read-only
        memory maps of the cache, N = per_class · num_classes, label of image i = i % num_classes.
    """
    func = "make_shapes"
    classes = shapes_class_names(num_classes)
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_classes": len(classes),
        "train_per_class": check_int(func, "train_per_class", train_per_class, minimum=1),
        "val_per_class": check_int(func, "val_per_class", val_per_class, minimum=1),
        "size": check_int(func, "size", size, minimum=16),
        "seed": check_int(func, "seed", seed, minimum=0),
        "difficulty": difficulty,
    }
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"{func}: difficulty must be one of {sorted(DIFFICULTIES)}, "
                         f"got {difficulty!r}")
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    meta_path = os.path.join(root, "shapes.json")
    paths = {split: (os.path.join(root, f"{split}_images.npy"),
                     os.path.join(root, f"{split}_labels.npy")) for split in _SPLIT_IDS}
    complete = all(os.path.exists(p) for pair in paths.values() for p in pair)

    if load_json(meta_path) != params or not complete:
        # Remove the old parameter file first: if generation is interrupted, the next call sees
        # no valid cache instead of new parameters beside half-old images. (Several processes,
        # e.g. data-parallel ranks, may regenerate at once: each writes its own temporary files
        # and renames them into place, and all write the same bytes.)
        try:
            os.unlink(meta_path)
        except FileNotFoundError:
            pass
        for split, (image_path, label_path) in paths.items():
            count = params[f"{split}_per_class"] * len(classes)
            _generate_split(image_path, split, count, len(classes), params["size"],
                            params["seed"], difficulty)
            save_npy_atomic(label_path, np.arange(count, dtype=np.int64) % len(classes))
        save_json_atomic(meta_path, params)

    sets = []
    for split, (image_path, label_path) in paths.items():
        images = np.load(image_path, mmap_mode="r")
        sets.append(ArrayDataset(images, np.load(label_path), classes))
    return tuple(sets)
