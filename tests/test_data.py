"""Tests of tinynet.data: data sets, transforms and the loader (tiny sizes: runs in seconds)."""

import gzip
import os
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from tinynet.data import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, SHAPE_CLASSES, ArrayDataset,
                          DataLoader, EvalTransform, TrainTransform, load_fashion_mnist,
                          load_image_folder, load_image_folders, make_shapes, read_idx,
                          render_shape_image, resize_nearest, shapes_class_names, split_dataset,
                          stratified_split_indices)
from tinynet.data import shapes as shapes_module


def coordinate_images(n, size):
    """(n, size, size, 3) uint8 whose pixel (y, x) of image k holds (y, x, k): every output
    pixel of a transform then says where it came from."""
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = np.empty((n, size, size, 3), np.uint8)
    images[..., 0], images[..., 1] = y, x
    images[..., 2] = np.arange(n)[:, None, None]
    return images


def random_dataset(n=50, size=8, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n) % num_classes, [f"c{k}" for k in range(num_classes)])


# ------------------------------------------------------------------------------------------
# Procedural shapes
# ------------------------------------------------------------------------------------------

SMALL = dict(num_classes=10, train_per_class=3, val_per_class=2, size=64)


def test_shapes_deterministic_by_seed(tmp_path):
    train_a, val_a = make_shapes(tmp_path / "a", seed=5, **SMALL)
    train_b, val_b = make_shapes(tmp_path / "b", seed=5, **SMALL)
    train_c, _ = make_shapes(tmp_path / "c", seed=6, **SMALL)
    assert train_a.images.shape == (30, 64, 64, 3) and train_a.images.dtype == np.uint8
    assert isinstance(train_a.images, np.memmap)
    assert np.array_equal(train_a.images, train_b.images)
    assert np.array_equal(val_a.images, val_b.images)
    assert not np.array_equal(train_a.images, train_c.images)
    assert not np.array_equal(train_a.images[:20], val_a.images)   # splits are seeded apart
    assert np.array_equal(train_a.labels, np.arange(30) % 10)
    assert train_a.classes == list(SHAPE_CLASSES[:10]) == shapes_class_names(10)


def test_shapes_image_depends_only_on_seed_split_index(tmp_path):
    # A larger set starts with exactly the images of a smaller one: no sequential RNG state.
    small, _ = make_shapes(tmp_path / "small", seed=1, **SMALL)
    large, _ = make_shapes(tmp_path / "large", seed=1, **dict(SMALL, train_per_class=5))
    assert np.array_equal(large.images[:30], small.images)


def test_shapes_cache_reused_then_regenerated(tmp_path, monkeypatch):
    first, _ = make_shapes(tmp_path, seed=0, **SMALL)
    kept = np.array(first.images)

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(shapes_module, "render_shape_image", fail)
    again, _ = make_shapes(tmp_path, seed=0, **SMALL)
    assert np.array_equal(again.images, kept)
    monkeypatch.undo()

    changed, _ = make_shapes(tmp_path, seed=0, **dict(SMALL, difficulty="easy"))
    assert not np.array_equal(changed.images, kept)
    assert '"easy"' in (tmp_path / "shapes.json").read_text()


def test_shapes_colour_and_brightness_carry_no_label():
    # One-way analysis of variance of each image's mean R, G, B and brightness over the classes:
    # F = between-class variance / within-class variance is about 1 when the class does not
    # shift the mean; 3.5 is far beyond chance for 16 classes × 30 images (p < 1e-4).
    per_class = 30
    for difficulty in ("easy", "hard"):
        features = np.array([
            [render_shape_image(label, np.random.default_rng([label, k]), 32, difficulty)
             .reshape(-1, 3).mean(axis=0) for k in range(per_class)]
            for label in range(len(SHAPE_CLASSES))])               # (classes, per_class, 3)
        features = np.concatenate([features, features.mean(axis=2, keepdims=True)], axis=2)
        class_means = features.mean(axis=1)                          # (classes, 4)
        between = per_class * class_means.var(axis=0, ddof=1)
        within = features.var(axis=1, ddof=1).mean(axis=0)
        f_stat = between / within
        assert np.all(f_stat < 3.5), (difficulty, f_stat)


def test_every_shape_fits_the_unit_disc_so_it_stays_inside_the_image():
    from tinynet.data.shapes import SHAPES, shape_extent
    for name, primitives in SHAPES.items():
        assert shape_extent(primitives) <= 1 + 1e-12, name
    # placed as "standard" places it (its widest scale), the T never reaches the image's edge
    label = SHAPE_CLASSES.index("t_shape")
    for k in range(40):
        image = render_shape_image(label, np.random.default_rng([label, k]), 64, "standard")
        assert image.shape == (64, 64, 3)


def test_shapes_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="difficulty"):
        make_shapes(tmp_path, difficulty="medium", **SMALL)
    with pytest.raises(ValueError, match="num_classes"):
        make_shapes(tmp_path, **dict(SMALL, num_classes=17))
    with pytest.raises(TypeError, match="train_per_class"):
        make_shapes(tmp_path, **dict(SMALL, train_per_class=2.5))
    assert shapes_class_names(16) == list(SHAPE_CLASSES)


# ------------------------------------------------------------------------------------------
# ArrayDataset
# ------------------------------------------------------------------------------------------

def test_channel_mean_and_pca_lighting():
    rng = np.random.default_rng(0)
    # R = G = B: all variance lies along (1, 1, 1)/√3, with eigenvalue 3·var(grey / 255).
    grey = rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    ds = ArrayDataset(np.repeat(grey, 3, axis=3), np.zeros(300, int), ["a"])
    np.testing.assert_allclose(ds.channel_mean(), grey.mean(), rtol=1e-6)
    assert ds.channel_mean().dtype == np.float32
    eigval, eigvec = ds.pca_lighting(num_pixels=20_000)
    np.testing.assert_allclose(eigval[0], 3 * (grey / 255.0).var(), rtol=0.05)
    assert eigval[1] < 1e-6 and eigval[2] < 1e-6
    np.testing.assert_allclose(np.abs(eigvec[:, 0]), np.full(3, 3 ** -0.5), atol=1e-4)
    # A grey set stored as (N, H, W, 1) gives the same statistics.
    grey_ds = ArrayDataset(grey[..., 0], np.zeros(300, int), ["a"])
    np.testing.assert_allclose(grey_ds.channel_mean(), ds.channel_mean(), rtol=1e-6)
    np.testing.assert_allclose(grey_ds.pca_lighting(num_pixels=20_000)[0], eigval, atol=1e-6)


def test_array_dataset_rejects_bad_input():
    good = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="ArrayDataset: images must be uint8"):
        ArrayDataset(good.astype(np.float32), [0, 1, 0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="labels has 3 entries"):
        ArrayDataset(good, [0, 1, 0], ["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        ArrayDataset(good, [0, 1, 2, 0], ["a", "b"])
    ds = ArrayDataset(good, [0, 1, 0, 1], ["a", "b"])
    assert len(ds) == 4 and ds.num_classes == 2 and ds.labels.dtype == np.int64


def test_split_dataset_is_stratified_and_seeded():
    labels = np.array([0] * 20 + [1] * 10 + [2] * 5 + [3] * 1)
    ds = ArrayDataset(np.zeros((36, 4, 4, 3), np.uint8), labels, ["a", "b", "c", "d"])
    train, val = split_dataset(ds, val_fraction=0.2, seed=3)
    assert np.bincount(val.labels, minlength=4).tolist() == [4, 2, 1, 0]
    assert np.bincount(train.labels, minlength=4).tolist() == [16, 8, 4, 1]
    tr_idx, va_idx = stratified_split_indices(labels, 0.2, 3)
    assert sorted(np.concatenate([tr_idx, va_idx]).tolist()) == list(range(36))
    assert not np.array_equal(va_idx, stratified_split_indices(labels, 0.2, 4)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        split_dataset(ds, val_fraction=1.0)


# ------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------

def test_train_crops_lie_inside_and_cover_all_offsets():
    size, crop, n = 64, 57, 40
    images = coordinate_images(n, size)
    t = TrainTransform(crop=crop, size=size, mean=0, lighting_std=0, seed=3)
    tops, lefts, flips = [], [], []
    for epoch in range(5):
        out = t(images, np.arange(n), epoch)
        assert out.shape == (n, 3, crop, crop) and out.dtype == np.float32
        assert out.flags.c_contiguous
        ys, xs, ks = out[:, 0], out[:, 1], out[:, 2]
        assert np.array_equal(ks, np.broadcast_to(np.arange(n)[:, None, None], ks.shape))
        top, left = ys[:, 0, 0], xs[:, 0, :].min(axis=1)
        flipped = xs[:, 0, 0] > xs[:, 0, -1]
        ramp = np.arange(crop)
        # Rows: top .. top+crop-1 down the crop; columns: left .. left+crop-1, or reversed.
        assert np.array_equal(ys, np.broadcast_to((top[:, None] + ramp)[:, :, None], ys.shape))
        cols = np.where(flipped[:, None], (left[:, None] + ramp)[:, ::-1], left[:, None] + ramp)
        assert np.array_equal(xs, np.broadcast_to(cols[:, None, :], xs.shape))
        tops += top.tolist()
        lefts += left.tolist()
        flips += flipped.tolist()
    # Every legal offset 0..size-crop occurs, nothing outside; both mirror states occur.
    assert set(tops) == set(lefts) == set(range(size - crop + 1))
    assert 0.3 < np.mean(flips) < 0.7


@given(size=st.integers(8, 40), crop_margin=st.integers(0, 10), n=st.integers(1, 6),
       seed=st.integers(0, 2**32))
def test_train_crop_geometry_any_size(size, crop_margin, n, seed):
    crop = max(1, size - crop_margin)
    out = TrainTransform(crop=crop, size=size, mean=0, lighting_std=0, seed=seed)(
        coordinate_images(n, size), np.arange(n), 0)
    assert out.shape == (n, 3, crop, crop)
    assert out[:, :2].min() >= 0 and out[:, :2].max() <= size - 1


def test_flip_is_an_exact_mirror_and_keeps_other_choices():
    images = np.random.default_rng(0).integers(0, 256, (32, 20, 20, 3), dtype=np.uint8)
    args = dict(crop=15, size=20, mean=(10, 20, 30), seed=7)
    with_flip = TrainTransform(flip=True, **args)
    without = TrainTransform(flip=False, **args)
    a, b = with_flip(images, np.arange(32), 4), without(images, np.arange(32), 4)
    flipped = with_flip.sample_params(np.arange(32), 4)[2]
    assert 0 < flipped.sum() < 32
    assert np.array_equal(a[flipped], b[flipped][..., ::-1])
    assert np.array_equal(a[~flipped], b[~flipped])


def test_centre_crop_training_takes_evaluations_window_and_keeps_other_choices():
    """random_crop=False: every sample's window is the centre one EvalTransform takes; the
    mirror and lighting draws stay those of the random-crop transform."""
    images = np.random.default_rng(1).integers(0, 256, (32, 20, 20, 3), dtype=np.uint8)
    args = dict(crop=15, size=20, mean=(10, 20, 30), seed=7)
    random, centre = TrainTransform(**args), TrainTransform(random_crop=False, **args)
    top, left, flip, alpha = random.sample_params(np.arange(32), 4)
    ctop, cleft, cflip, calpha = centre.sample_params(np.arange(32), 4)
    assert len(set(top.tolist())) > 1 and set(ctop.tolist()) == set(cleft.tolist()) == {2}
    assert np.array_equal(flip, cflip) and np.array_equal(alpha, calpha)
    plain = TrainTransform(random_crop=False, flip=False, lighting_std=0, **args)
    assert np.array_equal(plain(images, np.arange(32), 4),
                          EvalTransform(crop=15, size=20, mean=(10, 20, 30))(images))


def test_lighting_covariance_matches_pca():
    n, sigma = 4000, 0.1
    t = TrainTransform(crop=2, size=2, mean=0, flip=False, lighting_std=sigma, seed=11)
    out = t(np.zeros((n, 2, 2, 3), np.uint8), np.arange(n), 0)
    # Zero images and zero mean: the output is 255 · the per-image RGB offset, same everywhere.
    assert np.array_equal(out, np.broadcast_to(out[:, :, :1, :1], out.shape))
    offsets = out[:, :, 0, 0].astype(np.float64) / 255.0             # (n, 3) in [0, 1] units
    variances = (sigma * IMAGENET_EIGVAL.astype(np.float64)) ** 2
    expected = IMAGENET_EIGVEC @ np.diag(variances) @ IMAGENET_EIGVEC.T
    cov = np.cov(offsets, rowvar=False)
    np.testing.assert_allclose(cov, expected, atol=0.08 * variances[0])
    # In the eigenvector basis: variances (σλ_j)² within 10 %, correlations near 0.
    q = IMAGENET_EIGVEC.T @ cov @ IMAGENET_EIGVEC
    np.testing.assert_allclose(np.diag(q), variances, rtol=0.1)
    corr = q / np.sqrt(np.outer(np.diag(q), np.diag(q)))
    assert np.abs(corr - np.eye(3)).max() < 0.1
    assert np.all(np.abs(offsets.mean(axis=0)) < 4 * np.sqrt(np.diag(cov) / n))


def test_augmentation_is_per_sample_whatever_the_batch():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    indices = np.arange(100, 112)
    t = TrainTransform(crop=11, size=16, mean=(120, 110, 100), seed=2)
    whole = t(images, indices, 3)
    order = rng.permutation(12)
    first, rest = order[:5], order[5:]
    parts = [t(images[first], indices[first], 3), t(images[rest], indices[rest], 3)]
    assert np.array_equal(np.concatenate(parts), whole[order])
    assert not np.array_equal(t(images, indices, 4), whole)          # a new epoch, new draws


def test_eval_centre_and_ten_crops():
    size, crop, n = 64, 57, 3
    images = coordinate_images(n, size)
    ten = EvalTransform(crop=crop, size=size, mean=0, ten_crop=True)(images)
    assert ten.shape == (n, 10, 3, crop, crop) and ten.dtype == np.float32
    assert ten.flags.c_contiguous
    far, mid = size - crop, (size - crop) // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    for j, (top, left) in enumerate(corners):
        assert np.all(ten[:, j, 0, :, 0] == top + np.arange(crop))       # rows
        assert np.all(ten[:, j, 1, 0, :] == left + np.arange(crop))      # columns
        assert np.array_equal(ten[:, j + 5], ten[:, j][..., ::-1])       # its mirror
    assert np.array_equal(ten[:, :, 2], np.broadcast_to(np.arange(n)[:, None, None, None],
                                                        ten[:, :, 2].shape))
    centre = EvalTransform(crop=crop, size=size, mean=0)(images, np.arange(n), 0)
    assert np.array_equal(centre, ten[:, 4])


def test_eval_centre_and_its_mirror():
    size, crop, n = 64, 57, 3
    images = coordinate_images(n, size)
    two = EvalTransform(crop=crop, size=size, mean=0, crops=2)(images)
    assert two.shape == (n, 2, 3, crop, crop) and two.flags.c_contiguous
    ten = EvalTransform(crop=crop, size=size, mean=0, crops=10)(images)
    assert np.array_equal(two[:, 0], ten[:, 4]) and np.array_equal(two[:, 1], ten[:, 9])
    assert np.array_equal(two[:, 1], two[:, 0][..., ::-1])
    for bad in (0, 3, True, "2"):
        with pytest.raises(ValueError, match="EvalTransform: crops must be one of"):
            EvalTransform(crops=bad)
    with pytest.raises(ValueError, match="ten_crop=True is crops=10"):
        EvalTransform(crops=2, ten_crop=True)


def test_output_units_mean_and_std():
    images = np.full((2, 8, 8, 3), 200, np.uint8)
    out = EvalTransform(crop=4, size=8, mean=(100, 150, 200), std=(50, 25, 10))(images)
    np.testing.assert_allclose(out[:, :, 0, 0], [[2, 2, 0]] * 2)
    out = TrainTransform(crop=4, size=8, mean=(100, 150, 200), lighting_std=0)(images, [0, 1], 0)
    np.testing.assert_allclose(out[:, :, 0, 0], [[100, 50, 0]] * 2)


def test_small_grey_images_are_enlarged_per_batch():
    grey = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1) * 50
    big = resize_nearest(grey, 4)
    assert np.array_equal(big[0, :, :, 0], [[0, 0, 50, 50], [0, 0, 50, 50],
                                            [100, 100, 150, 150], [100, 100, 150, 150]])
    fashion_like = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    out = EvalTransform(crop=50, size=56, mean=0)(fashion_like)
    assert out.shape == (5, 3, 50, 50)
    assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 0], out[:, 2])
    # 28 -> 56 doubles every pixel; the centre crop starts at pixel 3 of the 56×56 image, so
    # crop pixel 1 is enlarged pixel 4, source pixel 2.
    assert np.array_equal(out[:, 0, 1::2, 1::2], fashion_like[:, 2:27, 2:27])
    out = TrainTransform(crop=50, size=56, mean=0)(fashion_like, np.arange(5), 0)
    assert out.shape == (5, 3, 50, 50)


def test_transform_argument_errors():
    with pytest.raises(ValueError, match=r"TrainTransform: crop \(300\) must not exceed size"):
        TrainTransform(crop=300)
    with pytest.raises(ValueError, match="EvalTransform: mean must be 3 finite numbers"):
        EvalTransform(mean=(1, 2))
    with pytest.raises(ValueError, match="TrainTransform: images must be uint8"):
        TrainTransform(crop=4, size=8)(np.zeros((2, 8, 8, 3)), [0, 1], 0)
    with pytest.raises(ValueError, match="one index per image"):
        TrainTransform(crop=4, size=8)(np.zeros((2, 8, 8, 3), np.uint8), [0], 0)


# ------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------

def _save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def image_tree(tmp_path):
    """root/cat and root/dog with one image of every awkward kind and one corrupt file."""
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    _save(root / "cat" / "rgb.jpg", Image.fromarray(photo))
    _save(root / "cat" / "grey.png", Image.new("L", (20, 20), 90))
    _save(root / "cat" / "clear.png", Image.new("RGBA", (20, 20), (255, 0, 0, 0)))   # transparent
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    _save(root / "cat" / "palette.gif", palette)
    _save(root / "dog" / "nested" / "cmyk.jpg", Image.new("CMYK", (20, 20), (0, 0, 0, 0)))
    _save(root / "dog" / "deep.png", Image.fromarray(np.full((20, 20), 32768, np.uint16)))
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    (root / "dog" / "notes.txt").write_text("not an image: left out, with a warning")
    return root


def test_image_folder_converts_skips_and_caches(image_tree, tmp_path):
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = load_image_folder(image_tree, size=16, cache_dir=cache)
    assert ds.classes == ["cat", "dog"]
    assert ds.skipped == [str(image_tree / "dog" / "broken.jpg")]
    assert ds.images.shape == (6, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    # Files in sorted order: cat/clear, grey, palette, rgb; dog/deep, nested/cmyk.
    clear, grey, palette, _, deep, cmyk = (ds.images[i] for i in range(6))
    assert np.all(clear == 255)                                   # transparent -> white
    assert np.all(grey == 90)                                     # grey -> R = G = B
    assert np.all(palette == [10, 200, 30])                       # palette looked up
    assert np.all(np.abs(deep.astype(int) - 128) <= 1)            # 16-bit scaled, not clipped
    assert np.all(cmyk >= 250)                                    # CMYK (0,0,0,0) is white

    # Second call: read from the cache, no decoding; the skipped file is still said out loud.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = load_image_folder(image_tree, size=16, cache_dir=cache)
    assert [str(w.message) for w in caught if "broken.jpg" in str(w.message)] == [
        f"load_image_folder: 1 file(s) were skipped when the cache "
        f"{os.path.join(cache, os.listdir(cache)[0])} was built, as no decodable image: "
        f"{str(image_tree / 'dog' / 'broken.jpg')!r}"]
    assert isinstance(again.images, np.memmap)
    assert np.array_equal(again.images, ds.images) and again.skipped == ds.skipped
    # A new file changes the key: a new cache with one more image.
    _save(image_tree / "cat" / "more.png", Image.new("RGB", (20, 20), (1, 2, 3)))
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert len(load_image_folder(image_tree, size=16, cache_dir=cache)) == 7


def test_image_folder_rescales_shorter_side_and_takes_the_centre(tmp_path):
    # 120 × 60: left quarter red, middle half green, right quarter blue.
    image = np.zeros((60, 120, 3), np.uint8)
    image[:, :30] = (255, 0, 0)
    image[:, 30:90] = (0, 255, 0)
    image[:, 90:] = (0, 0, 255)
    _save(tmp_path / "d" / "a" / "wide.png", Image.fromarray(image))
    _save(tmp_path / "d" / "b" / "tall.png", Image.fromarray(image.transpose(1, 0, 2).copy()))
    ds = load_image_folder(tmp_path / "d", size=30, cache_dir=tmp_path / "cache")
    for k in range(2):
        inner = ds.images[k, 1:-1, 1:-1]
        assert np.all(inner == (0, 255, 0)), k
        assert ds.images[k, ..., 1].min() > 120            # the border only blends a little


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", cache_dir=tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path / "empty", cache_dir=tmp_path / "c")
    _save(tmp_path / "one" / "only" / "x.png", Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="single class"):
        load_image_folder(tmp_path / "one", cache_dir=tmp_path / "c")
    _save(tmp_path / "two" / "full" / "x.png", Image.new("RGB", (8, 8)))
    (tmp_path / "two" / "hollow").mkdir()
    with pytest.raises(ValueError, match="hollow"):
        load_image_folder(tmp_path / "two", cache_dir=tmp_path / "c")
    _save(tmp_path / "bad" / "ok" / "x.png", Image.new("RGB", (8, 8)))
    _save(tmp_path / "bad" / "rotten" / "y.png", Image.new("RGB", (8, 8)))
    (tmp_path / "bad" / "rotten" / "y.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable image.*rotten"):
        load_image_folder(tmp_path / "bad", cache_dir=tmp_path / "c")


def _tiny_pngs(folder, count, colour):
    for i in range(count):
        _save(folder / f"{i:03d}.png", Image.new("RGB", (8, 8), colour))


def test_image_folders_both_layouts(tmp_path):
    cache = tmp_path / "cache"
    flat = tmp_path / "flat"
    _tiny_pngs(flat / "a", 10, (255, 0, 0))
    _tiny_pngs(flat / "b", 5, (0, 0, 255))
    train, val = load_image_folders(flat, val_fraction=0.2, seed=1, size=8, cache_dir=cache)
    assert np.bincount(val.labels).tolist() == [2, 1]
    assert np.bincount(train.labels).tolist() == [8, 4]
    assert np.all(train.images[train.labels == 0] == (255, 0, 0))
    _, again_val = load_image_folders(flat, val_fraction=0.2, seed=1, size=8, cache_dir=cache)
    assert np.array_equal(again_val.labels, val.labels)
    assert np.array_equal(again_val.images, val.images)

    tree = tmp_path / "tree"
    for split, n in (("train", 4), ("val", 2)):
        _tiny_pngs(tree / split / "a", n, (255, 0, 0))
        _tiny_pngs(tree / split / "b", n, (0, 0, 255))
    train, val = load_image_folders(tree, size=8, cache_dir=cache)
    assert (len(train), len(val)) == (8, 4) and train.classes == val.classes == ["a", "b"]

    _tiny_pngs(tree / "val" / "c", 1, (0, 255, 0))
    with pytest.raises(ValueError, match=r"only in train \[\], only in val \['c'\]"):
        load_image_folders(tree, size=8, cache_dir=cache)


# ------------------------------------------------------------------------------------------
# Fashion-MNIST (synthetic IDX files; the real package is not needed)
# ------------------------------------------------------------------------------------------

def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(30) % 10, compress=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test_images, compress=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(20)[::-1] % 10, compress=False)

    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte"), test_images)
    train, val = load_fashion_mnist(search_dirs=[tmp_path])
    assert train.images.shape == (30, 28, 28, 1) and val.images.shape == (20, 28, 28, 1)
    assert np.array_equal(train.images[..., 0], train_images)
    assert np.array_equal(val.labels, np.arange(20)[::-1] % 10)
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10

    train, val = load_fashion_mnist(limit_per_class=2, size=56, search_dirs=[tmp_path])
    assert train.images.shape == (20, 56, 56, 1)
    assert np.bincount(train.labels).tolist() == [2] * 10
    assert np.array_equal(train.images[:, ::2, ::2, 0], train_images[:20])   # first 2 per class

    # a black border of 2 pixels: 32x32 images, the 28x28 ones inside; then any resizing
    train, val = load_fashion_mnist(search_dirs=[tmp_path], pad=2)
    assert train.images.shape == (30, 32, 32, 1) and val.images.shape == (20, 32, 32, 1)
    assert np.array_equal(train.images[:, 2:30, 2:30, 0], train_images)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not train.images[:, border].any() and not val.images[:, border].any()
    train, _ = load_fashion_mnist(search_dirs=[tmp_path], pad=2, size=64)
    assert np.array_equal(train.images[:, 1::2, 1::2, 0][:, 2:30, 2:30], train_images)
    with pytest.raises(ValueError, match="load_fashion_mnist: pad must be >= 0, got -1"):
        load_fashion_mnist(search_dirs=[tmp_path], pad=-1)
    with pytest.raises(TypeError, match="pad must be an int"):
        load_fashion_mnist(search_dirs=[tmp_path], pad=True)

    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    with pytest.raises(ValueError, match="read_idx"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(search_dirs=[tmp_path / "nothing-here"])


# ------------------------------------------------------------------------------------------
# DataLoader
# ------------------------------------------------------------------------------------------

def _collect(batches):
    return [(x.copy(), y.copy(), i.copy()) for x, y, i in batches]


def test_loader_covers_every_sample_once_and_reshuffles():
    ds = random_dataset(n=50)
    loader = DataLoader(ds, batch_size=8, shuffle=True, seed=4, drop_last=False)
    assert len(loader) == 7 and len(DataLoader(ds, batch_size=8)) == 6
    orders = []
    for epoch in range(2):
        batches = _collect(loader.epoch_batches(epoch))
        assert [len(b[2]) for b in batches] == [8] * 6 + [2]
        for x, y, idx in batches:
            assert np.array_equal(x, ds.images[idx]) and np.array_equal(y, ds.labels[idx])
        order = np.concatenate([b[2] for b in batches])
        assert sorted(order.tolist()) == list(range(50))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    # Same (seed, epoch) -> same order, prefetching or not.
    same = DataLoader(ds, batch_size=8, seed=4, drop_last=False, prefetch=0)
    assert np.array_equal(np.concatenate([b[2] for b in same.epoch_batches(1)]), orders[1])


def test_loader_resume_reproduces_the_rest_of_the_epoch():
    ds = random_dataset(n=40)
    transform = TrainTransform(crop=5, size=8, mean=(128, 128, 128), seed=9)
    loader = DataLoader(ds, batch_size=6, transform=transform, seed=2)
    full = _collect(loader.epoch_batches(3))
    resumed = _collect(DataLoader(ds, batch_size=6, transform=transform, seed=2, prefetch=1)
                       .epoch_batches(3, start_step=4))
    assert len(resumed) == len(full) - 4
    for (x1, y1, i1), (x2, y2, i2) in zip(full[4:], resumed):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and np.array_equal(i1, i2)
    assert full[0][0].shape == (6, 3, 5, 5) and full[0][0].dtype == np.float32


def test_sharded_ranks_split_each_global_batch():
    ds = random_dataset(n=45)
    transform = TrainTransform(crop=5, size=8, seed=1)
    whole = _collect(DataLoader(ds, 12, transform, seed=3).epoch_batches(1))
    ranks = [_collect(DataLoader(ds, 12, transform, seed=3, rank=r, world_size=4).epoch_batches(1))
             for r in range(4)]
    assert all(len(r) == len(whole) == 3 for r in ranks)
    for step, (x, y, idx) in enumerate(whole):
        parts = [ranks[r][step] for r in range(4)]
        assert all(len(p[2]) == 3 for p in parts)
        # The slices are disjoint and together are the global batch, in order.
        assert np.array_equal(np.concatenate([p[2] for p in parts]), idx)
        assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
    # Keeping the last partial batch (45 = 3·12 + 9): split 3, 2, 2, 2 over the ranks.
    last = [list(DataLoader(ds, 12, None, seed=3, drop_last=False, rank=r, world_size=4)
                 .epoch_batches(0))[-1][2] for r in range(4)]
    assert [len(p) for p in last] == [3, 2, 2, 2]


def test_loader_reraises_errors_from_the_worker():
    calls = []

    def exploding_transform(images, indices, epoch):
        calls.append(len(indices))
        if len(calls) == 3:
            raise RuntimeError("bad sample in batch 3")
        return images.astype(np.float32)

    loader = DataLoader(random_dataset(), 10, exploding_transform, prefetch=2)
    seen = 0
    with pytest.raises(RuntimeError, match="bad sample in batch 3") as info:
        for _ in loader.epoch_batches(0):
            seen += 1
    assert seen == 2
    assert any(entry.name == "exploding_transform" for entry in info.traceback)


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "tinynet-data-loader" and t.is_alive()]


def test_loader_stops_its_thread_on_early_exit():
    def slow(images, indices, epoch):
        time.sleep(0.02)
        return images

    loader = DataLoader(random_dataset(n=200), 4, slow, prefetch=2)
    start = time.perf_counter()
    for _ in loader.epoch_batches(0):
        break                               # the generator is dropped and closed here
    batches = loader.epoch_batches(1)
    next(batches)
    batches.close()
    assert time.perf_counter() - start < 5
    assert not _loader_threads()


def test_loader_argument_errors():
    ds = random_dataset(n=10)
    with pytest.raises(ValueError, match="DataLoader: batch_size must be >= 1"):
        DataLoader(ds, 0)
    with pytest.raises(ValueError, match=r"batch_size \(11\) is larger than the data set"):
        DataLoader(ds, 11)
    with pytest.raises(ValueError, match="divisible by world_size"):
        DataLoader(ds, 6, world_size=4)
    with pytest.raises(ValueError, match="rank must be in"):
        DataLoader(ds, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_step"):
        DataLoader(ds, 5).epoch_batches(0, start_step=3)
    with pytest.raises(TypeError, match="dataset must have"):
        DataLoader(np.zeros((10, 8, 8, 3), np.uint8), 2)
