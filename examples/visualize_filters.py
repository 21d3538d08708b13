"""Draw AlexNet's 96 conv1 filters, split by tower as in the paper's Figure 3, and the
feature maps they make of one image.

    python examples/visualize_filters.py                                   # a fresh (random) AlexNet
    python examples/visualize_filters.py --checkpoint runs/alexnet/version_0/best.npz
    python examples/visualize_filters.py --checkpoint runs/alexnet/version_0/best.npz --image photo.jpg
    python examples/visualize_filters.py --shape star                      # which built-in shape to show

Writes two PNG files into --out, a folder that must hold no such pictures yet and no training
run (pictures never replace others); by default a new runs/filters/version_N:

  conv1_filters.png       the 96 filters, each 11x11 pixels x 3 colours, enlarged; filters 0-47
                          (tower 0) on top, 48-95 (tower 1) below.  In the paper the towers
                          learnt different things: mostly colour-blind edges on one GPU, colour
                          blobs on the other.  A fresh model's filters are noise.
  conv1_feature_maps.png  the input image (the 227x227 crop the network sees) and the 96
                          outputs of conv1 after ReLU (55x55 each), in the same tower layout.

Each filter and each feature map is stretched to the full 0..255 range on its own (its
minimum black, its maximum white), so weak and strong filters are equally visible; compare
shapes, not brightness, between tiles (a feature map that is zero everywhere stays black).
Filters change slowly: after a short run they may still look much like their random start;
the paper's edge and colour-blob filters took days of training on ImageNet.
Only Pillow and NumPy are needed.
"""

import argparse
import os
import sys

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import numpy as np  # noqa: E402  (after tinynet, which sets BLAS's idle threads to sleep)
import tinynet.functional as F  # noqa: E402
from tinynet import data as tdata  # noqa: E402
from tinynet import runs  # noqa: E402
from tinynet.checkpoint import load_checkpoint  # noqa: E402
from tinynet.models import AlexNet  # noqa: E402
from tinynet.plot import GAP, LABEL_HEIGHT, filter_picture, stretch, tower_grid  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Draw AlexNet's conv1 filters and feature maps.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", metavar="PATH",
                    help="a .npz written by examples/alexnet_train.py (default: a fresh model)")
    ap.add_argument("--image", metavar="PATH", help="an image file for the feature maps "
                    "(default: a picture from the built-in shapes set)")
    ap.add_argument("--shape", default="star", choices=tdata.SHAPE_CLASSES,
                    help="which built-in shape to draw when --image is not given")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fresh model and of the shape picture")
    ap.add_argument("--scale", type=int, default=4, help="each filter pixel becomes scale x scale pixels")
    ap.add_argument("--out", help="folder for the PNG files: one without them and without a training "
                                  "run (default: a new runs/filters/version_N)")
    return ap.parse_args(argv)


PICTURES = ("conv1_filters.png", "conv1_feature_maps.png")


def output_folder(out):
    """The folder for the pictures: `out`, made if missing, unless it holds a training run's
    files or pictures already (ValueError: a training run's own conv1_filters.png, or an earlier
    picture, would be replaced without a word); without --out a new runs/filters/version_N."""
    if out is None:
        return runs.next_version_dir(os.path.join("runs", "filters"))
    there = sorted(set(runs.run_files(out)) | {n for n in PICTURES if os.path.exists(os.path.join(out, n))})
    if there:
        raise ValueError(f"--out {out} already holds {', '.join(there)}; pictures never replace a "
                         f"run's files or earlier pictures: give another --out (or none, for a new "
                         f"runs/filters/version_N)")
    os.makedirs(out, exist_ok=True)
    return out


# ----------------------------------------------------------------------------
# Weights and input
# ----------------------------------------------------------------------------


def load_conv1(checkpoint, seed):
    """conv1's weight (96, 3, 11, 11), bias (96,) and the preprocessing (mean, std) of the run.

    From a checkpoint only conv1 is read (no need to build the 61M-parameter model); without
    one, a fresh AlexNet is built with the paper's initialisation, N(0, 0.01)."""
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        state, config = ckpt["model"], ckpt["meta"].get("config", {})
        if "conv1.weight" not in state:
            raise ValueError(f"visualize_filters: {checkpoint} has no conv1.weight (not an AlexNet checkpoint)")
        weight, bias = state["conv1.weight"], state["conv1.bias"]
        if weight.shape != (96, 3, 11, 11):
            raise ValueError(f"visualize_filters: conv1.weight has shape {weight.shape}, expected (96, 3, 11, 11)")
        return weight, bias, config.get("mean"), config.get("std"), f"checkpoint {checkpoint}"
    model = AlexNet(num_classes=10, seed=seed)
    return model.conv1.weight.numpy(), model.conv1.bias.numpy(), None, None, f"a fresh AlexNet (seed {seed})"


def load_image(path, shape, seed):
    """One image as AlexNet's data pipeline stores it: (256, 256, 3) uint8."""
    if path:
        return tdata.decode_image(path, size=256)
    label = tdata.SHAPE_CLASSES.index(shape)
    return tdata.render_shape_image(label, np.random.default_rng(seed), size=256, difficulty="easy")


# ----------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------


def draw_filters(weight, scale, source):
    """The 96 filters as colour tiles: weight (96, 3, 11, 11) -> tiles (11*scale, 11*scale, 3),
    tower 0 on top (tinynet.plot.filter_picture)."""
    return filter_picture(weight, f"conv1 filters (96 x 3x11x11) of {source}", scale=scale)


def draw_feature_maps(image_crop, maps, source):
    """The input crop on the left, the 96 ReLU(conv1) maps (96, 55, 55) in tower layout on the right."""
    # a map that is zero everywhere (the filter found nothing in this image) stays black
    grid = tower_grid([stretch(m, constant=0) for m in maps], f"ReLU(conv1) feature maps, 96 x 55x55, {source}")
    crop = Image.fromarray(image_crop)
    canvas = Image.new("RGB", (crop.width + GAP * 4 + grid.width, max(crop.height + LABEL_HEIGHT, grid.height)),
                       "white")
    ImageDraw.Draw(canvas).text((GAP, 1), "input (227x227 crop)", fill="black")
    canvas.paste(crop, (GAP, LABEL_HEIGHT))
    canvas.paste(grid, (crop.width + GAP * 4, 0))
    return canvas


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.scale < 1:
        raise SystemExit("visualize_filters.py: error: --scale must be >= 1")
    weight, bias, mean, std, source = load_conv1(args.checkpoint, args.seed)
    image = load_image(args.image, args.shape, args.seed)                  # (256, 256, 3) uint8

    # The network's view of the image: the centre 227x227 crop, mean subtracted (and divided by
    # the std if the run did that), NCHW float32 -- what EvalTransform gives the model.
    if mean is None:  # a fresh model has no training set: use this image's own mean
        mean = image.reshape(-1, 3).mean(axis=0)
    x = tdata.EvalTransform(mean=mean, std=std)(image[None])               # (1, 3, 227, 227)
    offset = (256 - 227) // 2
    crop = image[offset:offset + 227, offset:offset + 227]

    # conv1 + ReLU, exactly as AlexNet.features runs it (11x11, stride 4): (1, 96, 55, 55)
    with tn.no_grad():
        maps = F.relu(F.conv2d(tn.tensor(x), tn.tensor(weight), tn.tensor(bias), stride=4)).numpy()[0]

    out = output_folder(args.out)
    filters_path = os.path.join(out, "conv1_filters.png")
    maps_path = os.path.join(out, "conv1_feature_maps.png")
    draw_filters(weight, args.scale, source).save(filters_path)
    draw_feature_maps(crop, maps, source).save(maps_path)
    print(f"wrote {filters_path} (96 filters of {source}, tower 0 on top) and {maps_path}")
    return filters_path, maps_path


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"visualize_filters.py: error: {e}", file=sys.stderr)
        sys.exit(2)
