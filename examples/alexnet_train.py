"""Train AlexNet with tinynet.

    python examples/alexnet_train.py                    # the short recipe on built-in shapes (~15 min, 2-core CPU)
    python examples/alexnet_train.py --preset demo      # REDUCED classroom demo, a minute or two
    python examples/alexnet_train.py --preset paper     # the paper's own recipe (needs days and real data)
    python examples/alexnet_train.py --data DIR         # your own image folders: DIR/train/<class>/*.jpg, DIR/val/...
    python examples/alexnet_train.py --resume runs/alexnet/version_0/latest.npz
    python examples/alexnet_train.py --preset demo --batch-size 1 --trace   # print every op of ONE step, exit
    mpiexec -n 2 python examples/alexnet_train.py --data-parallel   # 2 processes, docs/distributed.md

The network is always the full AlexNet of the paper (60.97M parameters at
1000 classes); presets change only the training recipe and the data.  Each
run writes to a folder of its own (tinynet/runs.py): a new runs/alexnet/version_N,
or --out, which must be new or empty: config.json (everything that ran,
including which preset), metrics.jsonl, curves.png, latest.npz and best.npz.
--resume continues a run in its own folder.
"""

import argparse
import hashlib
import json
import math
import os
import shlex
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import numpy as np  # noqa: E402  (after tinynet, which sets BLAS's idle threads to sleep)
import tinynet.distributed as dist  # noqa: E402
import tinynet.functional as F  # noqa: E402
from tinynet import data as tdata  # noqa: E402
from tinynet import files, runs  # noqa: E402
from tinynet.checkpoint import link_checkpoint, load_checkpoint, restore, save_checkpoint  # noqa: E402
from tinynet.models import AlexNet, he_weight_std  # noqa: E402
from tinynet.ops import linear  # noqa: E402
from tinynet.optim import SGD, ReduceLROnPlateau  # noqa: E402
from tinynet.plot import filter_picture, line_chart  # noqa: E402
from tinynet.training import RateMeter, StopOnSignal, TimeBudget, budget_lr  # noqa: E402

# ----------------------------------------------------------------------------
# Recipes.  Architecture never changes; these are training hyper-parameters.
# ----------------------------------------------------------------------------

PRESETS = {
    # The paper (section 5): batch 128, lr 0.01 divided by 10 on plateaus (3 times),
    # momentum 0.9, weight decay 5e-4, N(0, 0.01) weights, biases 1, dropout 0.5, ~90 epochs.
    "paper": dict(batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, epochs=90,
                  warmup_steps=0, bias_init="paper", init="paper", dropout=0.5, crop="random",
                  input_std=False, mirror=True, lighting_std=0.1, lighting_pca="data",
                  difficulty="standard", train_per_class=500, val_per_class=100, patience=2,
                  time_budget=0, lr_schedule="plateau", eval_crops=1),
    # The short recipe: the default run, found by measurement to learn inside ~15 minutes
    # on a 2-core CPU (see docs/training.md for the runs behind it).
    "short": dict(batch_size=16, lr=0.01, momentum=0.9, weight_decay=5e-4, epochs=4,
                  warmup_steps=100, bias_init="zero", init="he", dropout=0.0, crop="centre",
                  input_std=True, mirror=True, lighting_std=0.1, lighting_pca="data",
                  difficulty="easy", train_per_class=500, val_per_class=100, patience=1,
                  time_budget=14.5 * 60, lr_schedule="budget", eval_crops=2),
    # REDUCED: a classroom demo of a minute or two on 2 cores (fewer, easier images). No
    # time budget: every machine does the same work, all 2,000 images once, and shows the same
    # result, sooner or later (a budget cut it to half the images in a slow hour).
    "demo": dict(batch_size=16, lr=0.01, momentum=0.9, weight_decay=5e-4, epochs=1,
                 warmup_steps=30, bias_init="zero", init="he", dropout=0.5, crop="random",
                 input_std=True, mirror=True, lighting_std=0.1, lighting_pca="data",
                 difficulty="easy", train_per_class=200, val_per_class=20, patience=1,
                 time_budget=0, lr_schedule="plateau", eval_crops=1),
}


DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tinynet")


class ConfigError(Exception):
    """A bad option or data set: reported as one line, no traceback."""


# Options that choose the recipe or the data: a resumed run keeps its own, so they are refused
# with --resume (only the run's length, --epochs and --time-budget, may change).
RECIPE_OPTIONS = ("preset", "data", "dataset", "val_fraction", "num_classes", "difficulty",
                  "batch_size", "lr", "momentum", "weight_decay", "max_train_images",
                  "max_val_images", "seed", "data_seed", "lr_schedule", "warmup_steps", "dropout", "crop",
                  "mirror", "lighting_std", "pad")
# ... except that --eval-only may choose how the weights are scored
EVAL_OPTIONS = ("max_val_images", "batch_size")

# How many crops of each held-out image an evaluation scores (tdata.EvalTransform)
EVAL_CROPS = tdata.EvalTransform.CROPS
CROPS_SAID = {1: "the centre crop", 2: "the centre crop and its mirror", 10: "ten crops"}

# Built-in defaults of the options whose default depends on the data (None in argparse, so
# that an option the user gave can be told from one left alone).
DATA_DEFAULTS = dict(dataset="shapes", val_fraction=0.1, num_classes=10)
# Black pixels around each 28x28 Fashion-MNIST image (--pad): 32x32 is enlarged x8 to 256, and
# the centre 227 window then holds the whole item (docs/training.md, row 20)
FASHION_MNIST_PAD = 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except where the help text says it (options whose default
    is None: the preset's, or the data's)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Train the paper's AlexNet with tinynet.", allow_abbrev=False,
        formatter_class=HelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="short",
                    help="training recipe: 'short' (default, ~15 min on 2 CPU cores), 'paper' "
                         "(the paper's recipe), 'demo' (REDUCED: a classroom demo of a minute or two, no time budget)")
    ap.add_argument("--data", metavar="DIR",
                    help="image folders: DIR/train/<class>/*.jpg and DIR/val/<class>/*, or one "
                         "DIR/<class>/* tree split by --val-fraction; default: built-in shapes")
    ap.add_argument("--dataset", choices=["shapes", "fashion-mnist"],
                    help="built-in data when --data is not given (default: shapes)")
    ap.add_argument("--pad", type=int, metavar="PIXELS",
                    help="Fashion-MNIST: black pixels added on each side of the 28x28 images "
                         f"before they are enlarged to 256 (default: {FASHION_MNIST_PAD}, so that "
                         "the centre 227 window holds the whole item; 0: none)")
    ap.add_argument("--val-fraction", type=float,
                    help="held-out fraction when --data has no held-out folder (default: 0.1)")
    ap.add_argument("--num-classes", type=int,
                    help=f"classes of the shapes set, 2-{len(tdata.SHAPE_CLASSES)} (default: 10)")
    ap.add_argument("--difficulty", choices=["easy", "standard", "hard"],
                    help="difficulty of the shapes set (default: the preset's)")
    ap.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    ap.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    ap.add_argument("--lr", type=float, help="initial learning rate (default: the preset's)")
    ap.add_argument("--warmup-steps", type=int,
                    help="steps over which the rate ramps up linearly to --lr (default: the preset's)")
    ap.add_argument("--lr-schedule", choices=["plateau", "budget"],
                    help="after warm-up: 'plateau' divides the rate by 10 when the held-out error "
                         "stops improving (the paper); 'budget' decays it linearly to zero at the "
                         "end of --time-budget, or at the end of the last epoch if that comes first "
                         "(default: the preset's)")
    ap.add_argument("--momentum", type=float, help="momentum (default: the preset's)")
    ap.add_argument("--weight-decay", type=float, help="weight decay (default: the preset's)")
    ap.add_argument("--dropout", type=float,
                    help="dropout probability of fc6 and fc7, 0 <= p < 1 (the paper: 0.5; "
                         "default: the preset's)")
    ap.add_argument("--crop", choices=["random", "centre"],
                    help="training crop: 'random' (the paper: a random 227 window of the 256 "
                         "image) or 'centre' (the window evaluation uses; mirror and lighting "
                         "still apply) (default: the preset's)")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction,
                    help="--mirror: mirror each training image left-right with probability 0.5 "
                         "(the paper); --no-mirror: never (default: the preset's)")
    ap.add_argument("--lighting-std", type=float,
                    help="sigma of the PCA lighting of training images (the paper: 0.1; 0: "
                         "none; default: the preset's)")
    ap.add_argument("--time-budget", type=float,
                    help="wall-clock seconds for the whole run, data preparation and evaluations "
                         "included: training stops early enough to finish the final evaluation "
                         "in time (0: none; default: the preset's)")
    ap.add_argument("--max-train-images", type=int, default=0,
                    help="use only this many training images, every class keeping its share "
                         "(0: all)")
    ap.add_argument("--max-val-images", type=int, default=0,
                    help="use only this many validation images, every class keeping its share "
                         "(0: all)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed for the initial weights, dropout, shuffling and augmentation")
    ap.add_argument("--data-seed", type=int, default=0,
                    help="seed of the data itself: the shapes set, the held-out split of a "
                         "--data folder and --max-*-images subsets (kept apart from --seed, so "
                         "runs with different seeds are scored on the same images)")
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:N]'")
    ap.add_argument("--resume", metavar="PATH",
                    help="continue a run from its checkpoint (RUN/latest.npz), in its own folder")
    ap.add_argument("--out", metavar="DIR",
                    help="run folder, new or empty (default: a new runs/alexnet/version_N); "
                         "with --resume: the checkpoint's own folder, or a new one to branch into")
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                    help="where the shapes set and the decoded images of a --data folder are kept "
                         "(Fashion-MNIST is looked for where tinynet.data.fashion_mnist says)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate --resume's weights and exit")
    ap.add_argument("--eval-crops", type=int, choices=EVAL_CROPS,
                    help="crops per held-out image, softmax averaged: 1 the centre, 2 the centre "
                         "and its mirror, 10 the paper's ten (corners + centre, mirrored) "
                         "(default: the preset's; 1 with --no-mirror)")
    ap.add_argument("--ten-crop", action="store_true", help="the same as --eval-crops 10")
    ap.add_argument("--data-parallel", action="store_true",
                    help="data parallelism over MPI: start with mpiexec -n N; --batch-size is the "
                         "GLOBAL batch, each rank takes batch/N images (docs/distributed.md)")
    ap.add_argument("--towers", type=int, default=1, choices=[1, 2],
                    help="2: split every layer's filters across two devices, as the paper's two "
                         "GPUs (with --device cuda: TINYNET_DEVICES=0,1 for two GPUs, 0,0 for both "
                         "towers on one GPU; with --device cpu: two CPU 'devices', for checking)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--stop-after-steps", type=int, default=0, metavar="K",
                    help="behave as if interrupted (Ctrl-C) after K steps of this invocation: "
                         "saves latest.npz and exits with status 0 (for testing --resume)")
    ap.add_argument("--trace", action="store_true",
                    help="print every op of ONE training step (forward and backward: shapes, and for "
                         "convolutions the im2col and GEMM shapes and cost), then exit without "
                         "updating the weights or writing any file; --batch-size 1 gives "
                         "per-image numbers")
    args = ap.parse_args(argv)
    # the options written on the command line (abbreviations are off, so each is spelt in full)
    tokens = sys.argv[1:] if argv is None else list(argv)
    args.given = {a.dest for a in ap._actions
                  if any(t == o or t.startswith(o + "=") for o in a.option_strings for t in tokens)}
    return args


def check_options(args):
    """Refuse option values that cannot be right, naming the option (ConfigError)."""
    def bad(option, expected, value):
        raise ConfigError(f"{option} must be {expected}, got {value}")

    if args.pad is not None and not 0 <= args.pad <= 100:
        bad("--pad", "pixels in 0..100", args.pad)
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    for name in ("seed", "data_seed", "stop_after_steps"):
        if getattr(args, name) < 0:
            bad("--" + name.replace("_", "-"), ">= 0", getattr(args, name))
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget >= 0):
        bad("--time-budget", "seconds >= 0 (0: no budget)", args.time_budget)
    if args.num_classes is not None and not 2 <= args.num_classes <= len(tdata.SHAPE_CLASSES):
        bad("--num-classes", f"in 2..{len(tdata.SHAPE_CLASSES)} (the shapes set's classes)",
            args.num_classes)
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        bad("--val-fraction", "strictly between 0 and 1", args.val_fraction)
    for name in ("lr", "momentum", "weight_decay"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            bad("--" + name.replace("_", "-"), "a finite number >= 0", value)
    if args.ten_crop and args.eval_crops not in (None, 10):
        raise ConfigError(f"--ten-crop is --eval-crops 10, but --eval-crops {args.eval_crops} was "
                          f"given too; give one of them")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out} is a file, not a folder; give a folder for the run")


def options(names):
    """Option names as written on the command line: ["time_budget"] -> "--time-budget"."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


def uses_fashion_mnist(dataset, data):
    """Whether the data is Fashion-MNIST: the built-in set, or a --data folder of its IDX files."""
    return dataset == "fashion-mnist" or bool(data and os.path.isdir(data) and tdata.has_fashion_mnist_files(data))


def check_applicable(args):
    """Refuse options that the chosen data or --resume would not use (ConfigError): an option
    given is an option honoured, never one recorded as if it had been."""
    given = args.given
    if args.resume:
        ignored = [o for o in RECIPE_OPTIONS if o in given and not (args.eval_only and o in EVAL_OPTIONS)]
        if ignored:
            raise ConfigError(
                f"--resume continues a run with its own recipe and data, so {options(ignored)} cannot "
                f"change; only --epochs and --time-budget can (to train something else, start a new run)")
    # modes that write nothing: the options that shape a run's length or its files do nothing there
    for mode, does, other in (("eval_only", "scores the weights", "trace"),
                              ("trace", "prints one training step", "eval_only")):
        unused = [o for o in ("out", "time_budget", "epochs", "stop_after_steps", other) if o in given]
        if getattr(args, mode) and unused:
            raise ConfigError(f"{options([mode])} {does} and writes nothing, so {options(unused)} "
                              f"would do nothing; leave it out")
    if args.resume:
        return
    fashion = uses_fashion_mnist(args.dataset, args.data)
    if "pad" in given and not fashion:  # also --pad 0, which the data's own check lets pass
        raise ConfigError(f"--pad {args.pad} applies to Fashion-MNIST's 28x28 images; this data's "
                          f"images are enlarged or cropped to 256 as they are")
    if args.data:
        unused = [o for o in ("dataset", "num_classes", "difficulty") if o in given]
        if unused:
            raise ConfigError(f"{options(unused)} describe(s) the built-in data; with --data DIR the "
                              f"classes are DIR's folders")
        if "val_fraction" in given and fashion:
            raise ConfigError(f"--val-fraction splits a folder of class folders; {args.data} holds "
                              f"Fashion-MNIST's files, which come with their own held-out (test) images")
        if "val_fraction" in given and os.path.isdir(args.data):
            try:
                held_out = tdata.find_layout(args.data, "--data")["val"]
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if held_out is not None:
                raise ConfigError(f"--val-fraction splits a folder without held-out images, but "
                                  f"{held_out} holds them; leave --val-fraction out")
        return
    if "val_fraction" in given:
        raise ConfigError("--val-fraction splits a --data folder; the built-in sets come with "
                          "their own held-out images")
    if args.dataset == "fashion-mnist":
        unused = [o for o in ("num_classes", "difficulty") if o in given]
        if unused:
            raise ConfigError(f"{options(unused)} describe(s) the shapes set, not fashion-mnist")


def eval_crops(args):
    """The crops per held-out image that the command line asks for, or None."""
    return 10 if args.ten_crop else args.eval_crops


def build_config(args):
    """The configuration of a new run: the preset, overridden by the options given. Settings
    that do not apply to the chosen data are recorded as None (load_data fills in the rest)."""
    cfg = dict(PRESETS[args.preset])
    for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "time_budget", "difficulty",
                "lr_schedule", "warmup_steps", "dropout", "crop", "mirror", "lighting_std"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    dataset = None if args.data else (args.dataset or DATA_DEFAULTS["dataset"])
    # the data folder as an absolute path: a resumed run finds it from any working directory
    cfg.update(preset=args.preset, data=os.path.abspath(args.data) if args.data else None,
               dataset=dataset, seed=args.seed,
               data_seed=args.data_seed, device=args.device,
               num_classes=(args.num_classes or DATA_DEFAULTS["num_classes"]) if dataset == "shapes" else None,
               val_fraction=args.val_fraction,   # None: the default 0.1, if a split is made
               max_train_images=args.max_train_images, max_val_images=args.max_val_images,
               pad=args.pad)   # None: Fashion-MNIST's default (load_data); other data: refused
    crops = eval_crops(args)
    if crops is not None:
        cfg["eval_crops"] = crops
    elif not cfg["mirror"]:
        # a network trained without mirrors has never seen a mirrored image: its scores on
        # mirrored crops say little (docs/training.md, row 18: 84.4% -> 75.7% with them)
        cfg["eval_crops"] = 1
    if dataset != "shapes":
        cfg["difficulty"] = cfg["train_per_class"] = cfg["val_per_class"] = None
    if args.preset == "demo":
        cfg["note"] = "REDUCED configuration (classroom demo): few, easy images; not the default run"
    for key in ("epochs", "batch_size"):
        if cfg[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    for key in ("max_train_images", "max_val_images"):
        if cfg[key] < 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 0 (0: all), got {cfg[key]}")
    if not cfg["lr"] > 0:
        raise ConfigError(f"--lr must be > 0, got {cfg['lr']}")
    if not 0 <= cfg["dropout"] < 1:
        raise ConfigError(f"--dropout must be a probability in [0, 1), got {cfg['dropout']}")
    if not (math.isfinite(cfg["lighting_std"]) and cfg["lighting_std"] >= 0):
        raise ConfigError(f"--lighting-std must be >= 0 (0: no lighting), got {cfg['lighting_std']}")
    if cfg["lr_schedule"] == "budget" and not cfg["time_budget"] and not args.resume:
        # (a resumed run keeps its own schedule: _resumed_config checks it)
        raise ConfigError("--lr-schedule budget decays the rate to zero at the end of the time "
                          "budget, and this run has none: give --time-budget SECONDS, or use "
                          "--lr-schedule plateau")
    cfg["towers"] = args.towers
    return cfg


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def subset_standard_error(accuracy, n, total):
    """How far the accuracy on a random subset of n of the total held-out images may lie from
    the accuracy on all of them: one standard error, sqrt(p (1 - p) / n), times the finite
    population correction sqrt((total - n) / (total - 1)) (0 when the subset is all of them)."""
    if n >= total:
        return 0.0
    return math.sqrt(accuracy * (1 - accuracy) / n * (total - n) / (total - 1))


def decoding_progress(quiet):
    """A progress callback for decoding an image folder: a line at most every 10 s on a
    terminal (every 60 s otherwise), and one at the end."""
    state = {"last": time.time()}

    def report(done, total):
        now = time.time()
        if quiet or (done < total and now - state["last"] < (10 if sys.stderr.isatty() else 60)):
            return
        state["last"] = now
        sys.stderr.write(f"decoding images into the cache: {done}/{total}\n")
    return report


def load_image_data(cfg, cache_dir, say, quiet=False, retry_unreadable=True):
    """--data DIR of class folders: the training and held-out sets, the layout said out loud."""
    data = cfg["data"]
    if not os.path.isdir(data):
        raise ConfigError(f"--data: no folder at {data}")
    layout = tdata.find_layout(data, "--data")
    if layout["val"] is not None:
        cfg["val_fraction"] = None          # nothing is split
        say(f"data: training images from {layout['train']}, held-out images from {layout['val']}"
              + (f" ({', '.join(layout['unused'])} not used)" if layout["unused"] else ""))
    else:
        if cfg["val_fraction"] is None:
            cfg["val_fraction"] = DATA_DEFAULTS["val_fraction"]
        say(f"data: {layout['train']} has no held-out folder ({'/, '.join(tdata.HELD_OUT_NAMES)}/"
              f"); {cfg['val_fraction']:g} of each class is held out (split seed "
              f"--data-seed {cfg['data_seed']})")
    train, val = tdata.load_image_folders(data, val_fraction=cfg["val_fraction"] or 0.1,
                                          seed=cfg["data_seed"], cache_dir=cache_dir,
                                          progress=decoding_progress(quiet),
                                          retry_unreadable=retry_unreadable)
    def names(paths):  # a name that is not valid UTF-8 shown escaped, not a crash of the print
        return ", ".join(tdata.printable(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")

    if train.skipped:
        say(f"data: {len(train.skipped)} file(s) skipped (not readable as images; see the "
              f"warnings): {names(train.skipped)}")
    if val.skipped and val.skipped != train.skipped:
        say(f"data: {len(val.skipped)} held-out file(s) skipped: {names(val.skipped)}")
    return train, val


def take_subset(dataset, count, seed, what, say):
    """--max-train-images / --max-val-images: a stratified subset (every class keeps its share),
    said out loud with the count per class."""
    if not count or count >= len(dataset):
        return dataset
    keep = tdata.stratified_subset_indices(dataset.labels, count, seed)
    subset = dataset.subset(keep)
    per_class = np.bincount(subset.labels, minlength=dataset.num_classes)
    say(f"using {len(subset)} of {len(dataset)} {what} images, every class's share kept "
          f"(per class: {', '.join(str(int(k)) for k in per_class)})")
    missing = [dataset.classes[k] for k in np.flatnonzero(per_class == 0)
               if np.any(dataset.labels == k)]
    if missing:
        say(f"warning: {count} {what} images cannot cover all {dataset.num_classes} classes; "
              f"no {what} image of {', '.join(missing)}")
    return subset


def fashion_mnist_pad(cfg, say):
    """The black border of the Fashion-MNIST images: --pad, or FASHION_MNIST_PAD; said."""
    if cfg.get("pad") is None:
        cfg["pad"] = FASHION_MNIST_PAD
    if cfg["pad"]:
        side = 28 + 2 * cfg["pad"]
        say(f"data: each 28x28 image padded with {cfg['pad']} black pixel(s) per side to "
            f"{side}x{side}, then enlarged to 256 (x{256 / side:.3g})")
    return cfg["pad"]


def data_fingerprint(dataset):
    """A short hash of a data set as loaded: its class names, every label in order and, for a
    --data folder, its origin (a hash of its images' names, <class folder>/<file>, in order).
    A run records its training and held-out sets' (before any --max-*-images subset); a resumed
    run or --eval-only compares them, so that a data folder changed in between (images added,
    removed or renamed, a file that became readable) is refused instead of silently mixing
    training images into the held-out set. Paths, not pixels: another machine's image decoder
    may round a pixel differently. The built-in sets are made by the recipe, which a resumed
    run cannot change."""
    h = hashlib.sha256(json.dumps(list(dataset.classes)).encode("utf-8"))
    h.update(np.ascontiguousarray(dataset.labels, dtype=np.int64).tobytes())
    if getattr(dataset, "origin", None) is not None:
        h.update(dataset.origin.encode("utf-8"))
    return h.hexdigest()[:16]


def load_data(cfg, cache_dir, say=print, quiet=False, retry_unreadable=True, training=True):
    """The training and held-out sets the configuration names, checked before any training.
    say: prints the notes about the data (a no-op on data-parallel ranks other than 0)."""
    fashion = uses_fashion_mnist(cfg.get("dataset"), cfg["data"])
    if cfg.get("pad") and not fashion:
        raise ConfigError(f"--pad {cfg['pad']} applies to Fashion-MNIST's 28x28 images; this data's "
                          f"images are enlarged or cropped to 256 as they are")
    if not fashion:
        cfg["pad"] = None
    if fashion and cfg["data"]:  # the four IDX files (gzip or not) in a folder, not class folders
        cfg["val_fraction"] = None
        train, val = tdata.load_fashion_mnist(search_dirs=[cfg["data"]], pad=fashion_mnist_pad(cfg, say))
        say(f"data: Fashion-MNIST's IDX files in {cfg['data']} (its {len(val):,} test images are held out)")
    elif fashion:
        train, val = tdata.load_fashion_mnist(pad=fashion_mnist_pad(cfg, say))
    elif cfg["data"]:
        train, val = load_image_data(cfg, cache_dir, say, quiet, retry_unreadable)
    else:
        root = os.path.join(cache_dir, f"shapes-{cfg['difficulty']}-{cfg['num_classes']}c-"
                                       f"{cfg['train_per_class']}x{cfg['val_per_class']}-s{cfg['data_seed']}")
        t0 = time.time()
        train, val = tdata.make_shapes(root, num_classes=cfg["num_classes"],
                                       train_per_class=cfg["train_per_class"],
                                       val_per_class=cfg["val_per_class"], seed=cfg["data_seed"],
                                       difficulty=cfg["difficulty"])
        if time.time() - t0 > 2:
            say(f"generated the shapes set in {time.time() - t0:.0f} s (cached in {root})")
    check_same_data(cfg, train, val, say)
    train = take_subset(train, cfg["max_train_images"], cfg["data_seed"], "training", say)
    val = take_subset(val, cfg["max_val_images"], cfg["data_seed"], "held-out", say)
    cfg["num_classes"] = train.num_classes     # what ran, whatever the data
    if train.num_classes < 2:
        raise ConfigError("the training data has only one class; need at least two")
    if len(val) == 0:
        raise ConfigError(f"the held-out set is empty ({len(train)} training images in "
                          f"{train.num_classes} classes, 0 held out): a class needs at least two "
                          f"readable images for one to be held out; add images or a held-out "
                          f"folder (DIR/val/<class>/...)")
    if training and cfg["batch_size"] > len(train):
        raise ConfigError(f"--batch-size {cfg['batch_size']} is larger than the training set ({len(train)} images)")
    return train, val


def check_same_data(cfg, train, val, say):
    """Record the data's fingerprints in cfg; for a resumed run (cfg from its checkpoint),
    first refuse data other than the data it recorded (ConfigError): its held-out images
    could have been training images of the run. Checkpoints of older versions recorded no
    fingerprints: their class names are compared, and said to be all that could be."""
    now = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
    recorded = cfg.get("data_fingerprint")
    where = cfg["data"] or cfg.get("dataset")
    if recorded is not None and recorded != now:
        differ = [label for key, label in (("train", "training"), ("val", "held-out"))
                  if recorded.get(key) != now[key]]
        had = cfg.get("data_counts")
        had = f" (the run had {had[0]} / {had[1]})" if had else ""
        raise ConfigError(
            f"--resume: the data is not what this run trained on: {where} now gives "
            f"{len(train)} training / {len(val)} held-out images in {train.num_classes} "
            f"classes{had}, and its {' and '.join(differ)} images are not the run's (images "
            f"added, removed or renamed){class_count_changes(cfg, train, val)}"
            f"{file_changes(cfg, train, val)}. "
            f"Its held-out images could be images it trained on, "
            f"and training would go on over other images (or the loader of this version of "
            f"tinynet reads the folder otherwise than the one that made the run: it uses a file "
            f"reached twice through links once, and refuses files it cannot scale). Restore the "
            f"data as it was, or start a new run. (Fingerprints now {now}, recorded {recorded})")
    if recorded is None and cfg.get("classes") is not None:  # a checkpoint of an older version
        if list(train.classes) != list(cfg["classes"]):
            raise ConfigError(f"--resume: the data is not what this run trained on: {where} now has "
                              f"the classes {list(train.classes)}, the run had {cfg['classes']}")
        say("note: this run's checkpoint records no fingerprint of its data (an older version "
            "wrote it); only its class names could be checked to be the same")
    cfg["data_fingerprint"] = now
    cfg["data_counts"] = [len(train), len(val)]
    cfg["data_class_counts"] = {"train": class_counts(train), "val": class_counts(val)}
    # an image folder's cache folders, whose files.json name the files (file_changes)
    cfg["data_caches"] = {part: os.path.abspath(s.cache) if getattr(s, "cache", None) else None
                          for part, s in (("train", train), ("val", val))}


def file_changes(cfg, train, val, most=3):
    """For the refusal of changed data: the image files added to and removed from the folder
    since the run recorded it ("; files added: 'cat/new.jpg'; removed: ..."), read from the
    files.json of the caches it used then and uses now; empty where either is gone or lists no
    files (a cache of an older version, or the built-in sets)."""
    def names(caches):
        listed = [tdata.folder.cache_file_names(c) for c in dict.fromkeys(caches)]
        return None if any(n is None for n in listed) else {name for n in listed for name in n}

    recorded = cfg.get("data_caches") or {}
    then = names([recorded.get("train"), recorded.get("val")])
    now = names([getattr(train, "cache", None), getattr(val, "cache", None)])
    if then is None or now is None:
        return ""
    said = []
    for what, files in (("added", sorted(now - then)), ("removed", sorted(then - now))):
        if files:
            more = f" and {len(files) - most} more" if len(files) > most else ""
            said.append(f"{what}: {', '.join(repr(f) for f in files[:most])}{more}")
    return ("; files " + "; ".join(said)) if said else ""


def class_counts(dataset):
    """{class name: how many of the set's images are of it}."""
    return dict(zip(dataset.classes, np.bincount(dataset.labels, minlength=dataset.num_classes).tolist()))


def class_count_changes(cfg, train, val, most=8):
    """For the refusal of changed data: the classes whose numbers of training or held-out images
    differ from those the run recorded ("; by class: 'cat' 120 training images, the run had
    118"), the first `most` of them; or, where every class has its recorded numbers, that the
    files were renamed or replaced. Empty for a checkpoint that recorded no numbers."""
    recorded = cfg.get("data_class_counts")
    if not recorded:
        return ""
    changes = []
    for name, part, label in (("train", train, "training"), ("val", val, "held-out")):
        now, then = class_counts(part), recorded.get(name, {})
        for c in list(then) + [c for c in now if c not in then]:
            if now.get(c, 0) != then.get(c, 0):
                changes.append(f"{c!r} {now.get(c, 0)} {label} image(s), the run had {then.get(c, 0)}")
    if not changes:
        return "; every class has as many images as in the run: files were renamed, or replaced by others"
    more = f" and {len(changes) - most} more" if len(changes) > most else ""
    return "; by class: " + "; ".join(changes[:most]) + more


# How far (in grey levels of 0..255) the training images' channel means and deviations may
# move before a resumed run refuses them: another decoder rounding pixels differently moves a
# mean by hundredths of a level; images edited under the same names (re-exported darker, say)
# move it by whole levels.
STATISTICS_TOLERANCE = 0.5


def check_ranks_same_data(cfg, train, val, ranks):
    """Data parallel: every rank must read the same images, as each trains on its share of one
    list. The other ranks open the cache rank 0 just built, found by the same key; where their
    file system shows the files otherwise (another machine's copy of the data, a mount that
    gives other change times), they decode the folder themselves and could list other files.
    So the ranks compare their sets' fingerprints (data_fingerprint) with rank 0's: of the whole
    sets (cfg["data_fingerprint"], recorded by check_same_data: a --max-*-images subset keeps
    no file names) and of the sets trained and scored; a difference stops every rank
    (ConfigError) instead of training on shards of two lists."""
    if ranks == 1:
        return
    seen = json.dumps(cfg.get("data_fingerprint"), sort_keys=True) + data_fingerprint(train) + data_fingerprint(val)
    digest = hashlib.sha256(seen.encode()).hexdigest()
    _, differs = dist.compare_with_root(float(int(digest[:12], 16)))   # 48 bits: exact in float64
    if differs:
        raise ConfigError(f"data parallel: {differs} of {ranks} rank(s) read other images than "
                          f"rank 0 ({len(train)} training / {len(val)} held-out images here); give "
                          f"every rank the same data folder, as rank 0 sees it, and one --cache-dir")


def make_transforms(cfg, train, training=True, say=print):
    """The training and evaluation transforms, normalised by the training set's statistics;
    training=False (--eval-only): no training transform (None), and no PCA of the pixels.

    A run records its statistics in cfg (mean, std, the PCA's axes). A resumed run, and
    --eval-only, normalise by the recorded ones, as the network was trained; they are computed
    again only to be compared (recorded_statistics): pixels that changed under the same file
    names are refused on resume and said in a warning by --eval-only."""
    mean = train.channel_mean()
    std = train.channel_std(mean) if cfg["input_std"] else None
    if cfg.get("mean") is not None:
        mean, std = recorded_statistics(cfg, mean, std, training, say)
    cfg["mean"] = [float(v) for v in mean]
    cfg["std"] = None if std is None else [float(v) for v in std]
    eval_tf = tdata.EvalTransform(mean=mean, std=std, crops=cfg["eval_crops"])
    if not training:
        return None, eval_tf
    # PCA lighting along the principal colour axes of the training pixels, as the paper did on
    # ImageNet: for grey images (Fashion-MNIST) the only axis is R = G = B, a brightness change.
    # Runs saved before this setting existed used ImageNet's axes; runs saved before the axes
    # were recorded compute them again (the same seeded sample of the same pixels).
    eigval = eigvec = None
    if cfg.get("lighting_pca", "imagenet") == "data" and cfg["lighting_std"] > 0:
        if cfg.get("lighting_eigvec") is not None:
            eigval = np.asarray(cfg["lighting_eigval"], np.float32)
            eigvec = np.asarray(cfg["lighting_eigvec"], np.float32)
        else:
            eigval, eigvec = train.pca_lighting(seed=cfg["data_seed"])
        cfg["lighting_eigval"] = [float(v) for v in eigval]
        cfg["lighting_eigvec"] = [[float(v) for v in row] for row in eigvec]
    train_tf = tdata.TrainTransform(mean=mean, std=std, lighting_std=cfg["lighting_std"],
                                    eigval=eigval, eigvec=eigvec, seed=cfg["seed"],
                                    flip=cfg.get("mirror", True),  # runs saved before it: mirrored
                                    random_crop=cfg.get("crop", "random") == "random")
    return train_tf, eval_tf


def recorded_statistics(cfg, mean, std, training, say):
    """The run's recorded (mean, std), as float32 arrays, after comparing them with `mean` and
    `std` computed from the training images now. A move of more than STATISTICS_TOLERANCE grey
    levels means the images changed under the same names (the data check, check_same_data,
    compares names only): refused when training on (ConfigError), a warning for --eval-only,
    which scores with the recorded ones."""
    then = np.asarray(cfg["mean"], np.float32)
    then_std = None if cfg.get("std") is None else np.asarray(cfg["std"], np.float32)
    shown = lambda v: "[" + ", ".join(f"{x:.2f}" for x in v) + "]"  # noqa: E731
    moves = [("channel means", float(np.max(np.abs(mean - then))), mean, then)]
    if std is not None and then_std is not None:
        moves.append(("channel deviations", float(np.max(np.abs(std - then_std))), std, then_std))
    moved = [(name, by, v, w) for name, by, v, w in moves if by > STATISTICS_TOLERANCE]
    if moved:
        what = "; ".join(f"the training images' {name} are {shown(v)} now, the run recorded "
                         f"{shown(w)} ({by:.2f} grey levels apart)" for name, by, v, w in moved)
        what += (": the images changed under the same names, or this version of tinynet decodes "
                 "them otherwise than the one that made the run")
        if training:
            raise ConfigError(f"--resume: the data is not what this run trained on: {what}. "
                              f"Training on would go on over other pixels. Restore the images as "
                              f"they were, or start a new run")
        say(f"warning: {what}; the held-out images are normalised by the recorded statistics, "
            f"as the network was trained")
    return then, then_std


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------


def build_model(cfg, num_classes, device="cpu"):
    """The grouped AlexNet, initialised by the recipe; with towers=2, the same weights
    split across the two tower devices (TwoTowerAlexNet)."""
    model = AlexNet(num_classes, bias_init=cfg["bias_init"], dropout=cfg["dropout"], seed=cfg["seed"])
    if cfg["init"] == "he":
        model.reset_parameters(cfg["bias_init"], he_weight_std(model), seed=cfg["seed"])
    if cfg.get("towers", 1) == 2:
        try:
            devices = tn.backend.tower_devices(device)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(str(e)) from None
        split = AlexNet(num_classes, dropout=cfg["dropout"], seed=cfg["seed"], towers=devices)
        split.load_state_dict(model.state_dict())
        cfg["tower_devices"] = [str(d) for d in devices]
        return split
    if device != "cpu":
        model.to(device)
    return model


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


def log_mean_softmax(logits):
    """logits (n, crops, classes), float64 -> (n, classes): the log of each image's softmax
    averaged over its crops, computed from log-softmaxes (log-sum-exp), so that a probability
    too small for float32 (a confident mistake) still gives its loss, not a clipped one."""
    with np.errstate(invalid="ignore"):   # an infinite logit gives NaN: counted, refused by the caller
        z = logits - logits.max(axis=2, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=2, keepdims=True))             # log-softmax per crop
        top = log_p.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(log_p - top).mean(axis=1, keepdims=True)))[:, 0]


def evaluate(model, dataset, transform, batch_size, device="cpu"):
    """Top-1 error, top-5 error (only with more than 5 classes: with 5 or fewer every label is
    among the top 5) and mean loss over ``dataset``: dict(top1_err, [top5_err,] loss), and
    ``nonfinite``: how many images got a NaN or infinite output, when any did (their "class" is
    whatever argmax makes of NaN, so the error rates mean nothing then: Run._score refuses them).

    Data parallel: rank r of n evaluates its own contiguous shard (about len/n images, in
    batches of batch_size/n) and the wrong-counts and loss sums are added over the ranks
    (dist.allreduce_sum), so every rank returns the single-process numbers.
    """
    model.eval()
    ranks = dist.world_size()
    shard = np.array_split(np.arange(len(dataset)), ranks)[dist.rank()]
    wrong1 = wrong5 = nonfinite = 0
    total_loss = 0.0
    if len(shard):
        part = dataset if ranks == 1 else dataset.subset(shard)
        loader = tdata.DataLoader(part, max(1, batch_size // ranks), transform, shuffle=False,
                                  drop_last=False)
        with tn.no_grad():
            for x, y, _ in loader.epoch_batches(0):
                n, c = x.shape[0], (x.shape[1] if x.ndim == 5 else 1)  # c crops of each image
                logits = model(tn.tensor(x.reshape(n * c, *x.shape[-3:])).to(device)).numpy()
                logits = logits.astype(np.float64).reshape(n, c, -1)
                nonfinite += int((~np.isfinite(logits)).any(axis=(1, 2)).sum())
                log_probs = log_mean_softmax(logits)
                total_loss += float(-log_probs[np.arange(len(y)), y].sum())
                top5 = np.argsort(-log_probs, axis=1, kind="stable")[:, :5]
                wrong1 += int((top5[:, 0] != y).sum())
                wrong5 += int((top5 != y[:, None]).all(axis=1).sum())
    wrong1, wrong5, total_loss, nonfinite = dist.allreduce_sum([wrong1, wrong5, total_loss, nonfinite])
    model.train()
    n = len(dataset)
    result = dict(top1_err=int(wrong1) / n, top5_err=int(wrong5) / n, loss=float(total_loss) / n)
    if dataset.num_classes <= 5:
        del result["top5_err"]
    if nonfinite:
        result["nonfinite"] = int(nonfinite)
    return result


def trace_one_step(model, loader, device="cpu"):
    """--trace: run ONE training step (forward, loss, backward) on the first batch under
    tinynet.trace(), which prints every op as the data flows forward and the gradients flow
    back -- shapes, and for convolutions the im2col matrix, the GEMM and its cost (conv1 at
    --batch-size 1: cols [363 x 3025], W [96 x 363]).  Then the program stops: the weights
    are not updated and no file is written (no run folder is made); it is a look inside, not
    part of a run."""
    batches = loader.epoch_batches(0)
    x, y, _ = next(batches)
    batches.close()  # stops the loader's background thread
    model.train()
    with tn.trace():
        loss = F.cross_entropy(model(tn.tensor(x).to(device)), y)
        loss.backward()
    print(f"--trace: traced one training step on a batch of {len(y)} (loss {loss.item():.4f}); "
          "the weights were not updated and no checkpoint was written")


# ----------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------


class Progress:
    """The epoch's progress bar; `start`: the steps of the epoch done before this invocation
    (a resumed run), which its rate and ETA leave out."""

    def __init__(self, total, epoch, quiet, start=0):
        self.total, self.epoch, self.quiet, self.first = total, epoch, quiet, start
        self.start = time.time()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, step, images, loss, lr):
        if self.quiet:
            return
        now = time.time()
        if not self.tty and now - self.last < 30 and step < self.total:
            return
        self.last = now
        elapsed = now - self.start
        rate = images / max(elapsed, 1e-9)
        eta = (self.total - step) * elapsed / max(step - self.first, 1)
        filled = int(30 * step / self.total)
        line = (f"epoch {self.epoch} [{'#' * filled}{'.' * (30 - filled)}] {step}/{self.total} "
                f"loss {loss:.4f} lr {lr:.2g} {rate:.1f} img/s ETA {eta:.0f}s")
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self):
        if not self.quiet and self.tty:
            sys.stderr.write("\n")


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


def curve_panels(metrics):
    """The panels of curves.png (see tinynet.plot.line_chart): the training loss, and the
    held-out error and accuracy (in percent) against the step.  The evaluations during training
    score one fixed subset of the held-out images and are drawn as lines; the final evaluation
    (of all held-out images, or the largest subset the budget allows) is not the same measure,
    so it stands apart, a point of its own series named with its number of images."""
    steps = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    if not steps:
        return []
    panels = [("training loss (mean of every 20 steps, and of an epoch's last few)",
               {"train loss": ([m["step"] for m in steps], [m["loss"] for m in steps])},
               dict(x="step", y="loss (nats)"))]
    if not evals:
        return panels
    curves, sizes = {}, []
    for final in (False, True):
        some = [m for m in evals if bool(m.get("final")) == final]
        if not some:
            continue
        n = some[-1].get("images")
        sizes.append(("final" if final else "during training") + (f": {n:,} images" if n else ""))
        at = [m["step"] for m in some]
        for name, values in (("top-1 error %", [100 * m["top1_err"] for m in some]),
                             ("top-1 accuracy %", [100 * (1 - m["top1_err"]) for m in some]),
                             ("top-5 error %", [100 * m["top5_err"] for m in some]
                              if all("top5_err" in m for m in some) else None)):
            if values is not None:
                curves[("final " if final else "") + name] = (at, values, name) if final else (at, values)
    panels.append((f"held-out images ({'; '.join(sizes)})", curves, dict(x="step", y="%")))
    return panels


def write_plot(out, metrics):
    """curves.png, drawn from metrics.jsonl's records (curve_panels)."""
    panels = curve_panels(metrics)
    if panels:
        line_chart(os.path.join(out, "curves.png"), panels)


def write_filters(out, model, grey=False):
    """conv1_filters.png: what the first layer learnt, one panel per tower (the paper's Figure 3).

    grey: the images are grey (R = G = B, as Fashion-MNIST's), so a filter acts only through
    the sum of its three colour planes; that sum is drawn, since the colour differences are
    whatever the initialisation left there and never meet the data."""
    weight = model.state_dict()["conv1.weight"]                 # (96, 3, 11, 11), towers joined
    title = "conv1 filters (96 x 3x11x11)"
    if grey:
        weight = weight.sum(axis=1, keepdims=True)              # (96, 1, 11, 11)
        title += ", R+G+B (grey input, so only the sum acts)"
    filter_picture(weight, title + ": tower 0 on top, tower 1 below").save(
        os.path.join(out, "conv1_filters.png"))


DEFAULT_RUNS = os.path.join("runs", "alexnet")
_state = {}  # {"training": True} once the loop has started (for the Ctrl-C message)


def checkpoint_step(path):
    """The global step saved in the checkpoint `path` (read from its meta entry alone), or None
    if there is no such file or it is no checkpoint of this program."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(bytes(z["meta"]).decode("utf-8")).get("global_step")
    except (OSError, ValueError, KeyError):
        return None


def choose_run_folder(args, ckpt, create):
    """The folder this run writes to, by the rules of tinynet/runs.py.

    New run: --out (new, or empty of run files) or a new runs/alexnet/version_N.
    Resumed run: the checkpoint's own folder, its metrics cut back to the checkpoint's step; or,
    with --out naming another folder, a new run there whose metrics start with the checkpoint's
    history (the first run's folder is never written). Branching copies rather than refusing,
    so that training on from a best.npz, or trying a longer schedule, keeps the original intact.

    create: False only checks (before the data is prepared, so a refusal costs nothing).
    Returns (folder, metrics so far, branched) when create is True.
    """
    if ckpt is None:
        if args.out is None:
            return (runs.next_version_dir(DEFAULT_RUNS) if create else None), [], False
        return runs.claim_new_run_dir(args.out, create=create), [], False
    step = ckpt["meta"]["global_step"]
    home = os.path.dirname(os.path.abspath(args.resume))
    latest = os.path.join(home, "latest.npz")
    latest_step = None
    if os.path.exists(latest) and not os.path.samefile(latest, args.resume):
        latest_step = checkpoint_step(latest)
    folder, branched = runs.resume_target(args.resume, step, latest_step, args.out, create=create)
    history = runs.keep_metrics_upto(runs.read_metrics(os.path.join(home, "metrics.jsonl")), step)
    return folder, history, branched


# ----------------------------------------------------------------------------
# The training loop (the paper, section 5), and the machinery it calls
# ----------------------------------------------------------------------------


def train(args):
    """Train AlexNet as the paper's section 5 describes: for each batch, forward, loss,
    backward, update; at each epoch's end, evaluate, schedule the learning rate, checkpoint.
    Everything else (options, data, the run folder, the time budget, data parallelism,
    signals) lives in Run, below."""
    _state["training"] = False
    run = Run(args)                          # configuration, data, model, optimiser, run folder
    if args.eval_only:
        return run.evaluate_only()
    if args.trace:
        return run.trace_one_step()
    model, optimizer, device = run.model, run.optimizer, run.device
    _state["training"] = True
    _state["out"] = run.out if run.writes_files else None
    with StopOnSignal() as stop:             # Ctrl-C / SIGTERM: finish the step, save, stop
        for epoch in range(run.start_epoch, run.cfg["epochs"]):
            for x, y in run.batches(epoch):
                optimizer.lr = run.learning_rate()                   # warm-up, then the schedule
                with dist.dropout_rows(run.cfg["batch_size"]):      # (data parallel: my rows' masks)
                    loss = F.cross_entropy(model(tn.tensor(x).to(device)), y)   # forward, loss
                optimizer.zero_grad()
                loss.backward()                                      # backward
                dist.allreduce_gradients(model.parameters())         # (data parallel: mean over ranks)
                optimizer.step()                                     # update
                run.step_done(loss.item(), stop)                     # log; clock; agree on stopping
                if run.stopping(stop) or run.out_of_time:
                    break
                if run.evaluation_due():                             # a long epoch under a budget
                    run.evaluate(epoch, epoch_end=False)
                    if run.out_of_time:
                        break
            if run.stopping(stop):
                return run.save_and_stop(epoch, stop)
            if run.out_of_time:
                break
            run.evaluate(epoch, epoch_end=True)                      # evaluate, schedule, checkpoint
            if run.out_of_time:
                break
        # (still under StopOnSignal: a signal after the last step's vote, or during the final
        # evaluation, lets the run finish that evaluation; a second Ctrl-C stops at once)
        result = run.finish()                                        # the whole held-out set, pictures
    if stop.signal:
        run.say(f"{stop.signal} came after training ended: the run finished its final evaluation "
                f"and is complete")
    return result


INTERIM_IMAGES = 500    # held-out images scored during training: a fixed stratified subset
INTERIM_EVALS = 3       # under a time budget, evaluate at least every budget/3 seconds
FINAL_SHARE = 0.05      # the most of a time budget the final evaluation may take
# With these, the short recipe's 14.5-minute run (two crops per image) starts up, evaluates
# and saves for about 13% of its time and trains for the rest (on 2 cores: 2 interim
# evaluations of ~25 s, and the final one of ~45 s).


class Run:
    """One training run's state and machinery: configuration, data, model, optimiser,
    scheduler, the run folder and its files, the learning-rate schedule, the time budget,
    evaluations and checkpoints.  train() above is the loop; these are the parts it calls."""

    # ---- setting up ---------------------------------------------------------------------
    def __init__(self, args):
        self.args = args
        program_start = time.time()   # the time budget counts from here, data preparation included
        tn.reuse_freed_memory()  # big activations are freed and reallocated every step: reuse pages
        if not args.data_parallel and dist.launched_size() > 1:
            raise ConfigError(f"started by mpiexec as {dist.launched_size()} processes without "
                              "--data-parallel (each would train alone and write the same files)")
        check_options(args)
        check_applicable(args)
        if args.eval_only and not args.resume:
            raise ConfigError("--eval-only needs --resume PATH (the weights to evaluate)")
        cfg = build_config(args)
        tn.manual_seed(cfg["seed"])
        ckpt = self._load_checkpoint(args) if args.resume else None
        if ckpt is not None:
            cfg = self._resumed_config(args, ckpt)
        self.cfg, self.ckpt = cfg, ckpt

        # Data parallelism (docs/distributed.md): rank r of n takes images r*B/n..(r+1)*B/n-1 of
        # every global batch of B; only rank 0 prints and writes files. Serially: 1 rank of 1.
        self.ranks, self.main_rank = dist.world_size(), dist.is_main()
        try:
            self.local_batch = dist.local_batch_size(cfg["batch_size"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.device = dist.device_for_rank(cfg["device"])   # 'cuda' -> this rank's own GPU
        cfg.pop("data_parallel", None)                      # (a resumed run may use another count)
        if self.ranks > 1:
            threads = dist.set_threads_per_rank()           # the ranks share the cores
            cfg["data_parallel"] = dict(ranks=self.ranks, local_batch=self.local_batch,
                                        threads_per_rank=threads)
        if cfg.get("towers", 1) == 2 and self.ranks > 1:
            raise ConfigError("--towers 2 and --data-parallel cannot be combined yet")

        # the run folder (tinynet/runs.py): only rank 0 writes files, so only rank 0 chooses it;
        # checked now, made once the data and the model are ready (--trace, --eval-only: none)
        self.writes_files = self.main_rank and not args.trace and not args.eval_only
        if self.writes_files:
            choose_run_folder(args, ckpt, create=False)
        self.say = print if self.main_rank else (lambda *a, **k: None)

        if not self.main_rank:
            dist.barrier()     # rank 0 prepares the data (generates, decodes, caches) first ...
        # (the other ranks read rank 0's cache as it is, so all ranks train on the same images)
        self.train_set, self.val_set = load_data(cfg, args.cache_dir, self.say,
                                                 args.quiet or not self.main_rank,
                                                 retry_unreadable=self.main_rank,
                                                 training=not args.eval_only)
        if self.main_rank:
            dist.barrier()     # ... then the others read its cache
        check_ranks_same_data(cfg, self.train_set, self.val_set, self.ranks)
        self.train_tf, self.eval_tf = make_transforms(cfg, self.train_set, training=not args.eval_only,
                                                      say=self.say)
        self.interim_set = (self.val_set if len(self.val_set) <= INTERIM_IMAGES else self.val_set.subset(
            tdata.stratified_subset_indices(self.val_set.labels, INTERIM_IMAGES, cfg["data_seed"])))

        self.model = build_model(cfg, self.train_set.num_classes, self.device)
        # One process training on the CPU: the fully connected layers' weights are updated in
        # backward, each gradient used as it is summed (same bits as backward then step(); see
        # tinynet/optim.py).  Not with data parallelism (every update waits for the gradients
        # summed over the processes), nor for --trace (which updates nothing).
        in_backward = (self.ranks == 1 and not args.trace and not args.eval_only
                       and tn.backend.Device(self.device).kind == "cpu")
        self.optimizer = SGD(self.model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                             weight_decay=cfg["weight_decay"], update_in_backward=in_backward)
        self.scheduler = ReduceLROnPlateau(self.optimizer, patience=cfg["patience"])
        self._restore_state(ckpt)
        # every rank starts from rank 0's weights (and, resuming, its momentum): equal copies stay
        # equal, because every rank then applies the same averaged gradient
        dist.broadcast_parameters(self.model)
        if ckpt is not None:
            dist.broadcast_arrays(self.optimizer.velocity)
        cfg["classes"] = list(self.train_set.classes)
        cfg["train_images"], cfg["val_images"] = len(self.train_set), len(self.val_set)
        self._make_run_folder()
        self._announce()

        # the clock: the budget counts from the program's start (data preparation included)
        self.clock = TimeBudget(cfg["time_budget"] or None, start=program_start, clock=time.time)
        self.first_global_step = self.global_step   # --stop-after-steps counts from here
        self.epoch, self.step = self.start_epoch, self.start_step
        self.eval_rate = RateMeter()          # seconds per evaluated image, measured
        self.save_seconds = RateMeter()       # seconds per checkpoint written, measured
        self.out_of_time = False
        self.agreed_stop = None               # data parallel: the ranks' stop vote at the last step
        self.last_eval_time = time.time()
        self.last_eval = None                 # (global step, images, result) of the newest evaluation
        self.loader = None if args.eval_only else tdata.DataLoader(
            self.train_set, cfg["batch_size"], self.train_tf, shuffle=True, seed=cfg["seed"],
            rank=dist.rank(), world_size=self.ranks)

    @staticmethod
    def _load_checkpoint(args):
        if os.path.isdir(args.resume):
            inside = [n for n in ("latest.npz", "best.npz") if os.path.isfile(os.path.join(args.resume, n))]
            raise ConfigError(f"--resume {args.resume} is a folder; give a checkpoint file in it"
                              + (": " + " or ".join(os.path.join(args.resume, n) for n in inside) +
                                 " (latest.npz: the last save; best.npz: the lowest held-out error)"
                                 if inside else " (a run folder holds latest.npz and best.npz; this one has neither)"))
        try:
            ckpt = load_checkpoint(args.resume)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
        missing = [k for k in ("config", "epoch", "step", "global_step", "base_lr", "scheduler", "rng")
                   if k not in ckpt["meta"]]
        if missing:
            raise ConfigError(f"--resume: {args.resume} is not a checkpoint of this program "
                              f"(its meta has no {', '.join(missing)})")
        return ckpt

    @staticmethod
    def _resumed_config(args, ckpt):
        """A resumed run continues with its own configuration: only its length (--epochs,
        --time-budget) may change, and with --eval-only how it is evaluated (--eval-crops,
        --max-val-images, --batch-size); what changes is recorded."""
        cfg = dict(ckpt["meta"]["config"])
        for key in ("epochs", "time_budget"):
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
        # checkpoints of older versions said ten_crop, and evaluated the centre crop otherwise
        cfg.setdefault("eval_crops", 10 if cfg.pop("ten_crop", False) else 1)
        crops = eval_crops(args)
        if crops is not None and crops != cfg["eval_crops"] and not args.eval_only:
            raise ConfigError(
                f"--resume: the run scores its held-out images by {CROPS_SAID[cfg['eval_crops']]}, "
                f"and its best error (best.npz) and learning-rate schedule compare those scores; "
                f"scored by {CROPS_SAID[crops]} from here on, they would compare scores made two "
                f"ways. A resumed run keeps its crops: score a checkpoint by other crops with "
                f"--eval-only (--resume CHECKPOINT --eval-only --eval-crops {crops})")
        if crops is not None:
            cfg["eval_crops"] = crops
        if args.eval_only:
            if "max_val_images" in args.given:
                cfg["max_val_images"] = args.max_val_images
            if args.batch_size is not None:
                cfg["batch_size"] = args.batch_size
        cfg.setdefault("data_seed", cfg["seed"])      # checkpoints of older versions
        cfg.setdefault("pad", 0)                      # (older versions never padded)
        cfg.setdefault("lr_schedule", "plateau")
        # where it runs is no part of the recipe: --device moves the run (the weights load on
        # any device); the tower count cannot change, as the momentum buffers are saved per
        # tower layout
        if "device" in args.given:
            cfg["device"] = args.device
        if "towers" in args.given and args.towers != cfg.get("towers", 1):
            raise ConfigError(f"--resume: the run trained with --towers {cfg.get('towers', 1)}, and its "
                              f"checkpoint's momentum buffers are laid out so; --towers {args.towers} "
                              f"cannot continue it (start a new run, or leave --towers out)")
        if cfg["lr_schedule"] == "budget" and not cfg["time_budget"]:
            raise ConfigError(f"--resume: the run's learning rate decays to zero at the end of its time "
                              f"budget (--lr-schedule budget), so --time-budget 0 would leave it none; "
                              f"give --time-budget SECONDS")
        if ckpt["meta"]["epoch"] >= cfg["epochs"] and not args.eval_only:
            raise ConfigError(f"--resume: the run of {args.resume} is complete ({cfg['epochs']} "
                              f"epoch(s) trained); to train it further, add --epochs N with "
                              f"N > {cfg['epochs']}")
        return cfg

    def _restore_state(self, ckpt):
        self.start_epoch = self.start_step = self.global_step = 0
        self.best_err = float("inf")
        self.base_lr = self.optimizer.lr      # the rate after warm-up, before any schedule
        self.horizon = None                   # budget schedule: the step where lr reaches zero
        self.horizon_stale = False            # resumed: the saved horizon is the last invocation's
        self.running, self.count = 0.0, 0     # the training loss's running average
        self.run_time = 0.0                   # the run's clock before this invocation
        if ckpt is None:
            return
        try:
            meta = restore(ckpt, self.model, self.optimizer)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"--resume: the checkpoint does not fit this model: {e}") from None
        self.scheduler.load_state_dict(meta["scheduler"])
        tn.set_rng_state(meta["rng"])
        self.start_epoch, self.start_step, self.global_step = meta["epoch"], meta["step"], meta["global_step"]
        self.best_err = meta.get("best_err", self.best_err)
        self.base_lr = meta["base_lr"]
        self.horizon = meta.get("lr_horizon")
        # the budget counts from each invocation's start, so the horizon the checkpoint saved (where
        # the last invocation's budget was to run out) is measured again after this one's first step
        self.horizon_stale = self.horizon is not None
        self.running, self.count = meta.get("running_loss", [0.0, 0])
        self.run_time = meta.get("run_time", 0.0)
        self.say(f"resumed from {self.args.resume} at epoch {self.start_epoch}, step {self.start_step}")

    def _make_run_folder(self):
        self.out, self.metrics = None, []
        if not self.writes_files:
            return
        args, cfg = self.args, self.cfg
        self.out, self.metrics, branched = choose_run_folder(args, self.ckpt, create=True)
        if branched:
            cfg["resumed_from"] = os.path.abspath(args.resume)
        files.write_atomically(os.path.join(self.out, "config.json"),
                               lambda f: json.dump(cfg, f, indent=2), binary=False)
        runs.write_metrics(os.path.join(self.out, "metrics.jsonl"), self.metrics)
        if self.ckpt is None:
            print(f"run folder: {self.out}")
        elif branched:
            print(f"run folder: {self.out} (a new run, starting from {args.resume} and its history)")

    def _announce(self):
        cfg = self.cfg
        if self.ranks > 1:
            self.say(f"data parallel: {self.ranks} ranks, {self.local_batch} image(s) each = global "
                     f"batch {cfg['batch_size']}; {cfg['data_parallel']['threads_per_rank']} "
                     "thread(s) per rank")
        self.say(f"AlexNet ({self.model.num_parameters():,} parameters), preset '{cfg['preset']}'"
                 + (f" -- {cfg['note']}" if cfg.get("note") else "")
                 + f"; {len(self.train_set)} training / {len(self.val_set)} validation images, "
                   f"{self.train_set.num_classes} classes; batch {cfg['batch_size']}, lr {cfg['lr']} "
                   f"({cfg['lr_schedule']} schedule), init {cfg['init']}, bias {cfg['bias_init']}, "
                   f"dropout {cfg['dropout']}, {cfg.get('crop', 'random')} crop, "
                   f"{'random mirrors' if cfg.get('mirror', True) else 'no mirrors'}, lighting "
                   f"{cfg['lighting_std']}; evaluated on "
                   f"{CROPS_SAID[cfg['eval_crops']]}")
        left = len(self.train_set) % cfg["batch_size"]
        if left and not self.args.eval_only:   # whole batches only: each epoch's last images wait
            self.say(f"each epoch trains on {len(self.train_set) // cfg['batch_size']} whole batches "
                     f"of {cfg['batch_size']}: "
                     f"the last {left} training image(s) of its shuffled order (others each epoch) "
                     f"are left out of it")
        if not cfg.get("mirror", True) and cfg["eval_crops"] > 1:
            self.say(f"warning: the network trains without mirrors and is evaluated on "
                     f"{CROPS_SAID[cfg['eval_crops']]}, mirrored crops included, which it never saw")
        if not str(self.device).startswith("cuda"):
            compiled = tn.ops.cpu_loops.cpu_module() is tn.ops.cpu_loops  # builds them, or warns
            self.say(f"CPU loops: {'compiled (kernels/cpu_loops.cpp)' if compiled else 'NumPy'}, "
                     f"{tn.get_num_threads()} thread(s); a convolution's products: "
                     f"{tn.ops.cpu_kernels.batched_matmul_route()}; {tn.ops.cpu_kernels.blas_kernels()}")
        if self.optimizer.update_in_backward and not self.args.eval_only:
            how = ("each weight's gradient used as it is summed, never stored (the same numbers as "
                   "backward then step())" if cfg["batch_size"] in linear.OUTER_SUM_BATCH else
                   f"but not at batch {cfg['batch_size']} (above {max(linear.OUTER_SUM_BATCH)}: "
                   "their gradients are stored and step() applies them)")
            self.say(f"SGD: the fully connected layers' weights are updated in backward, {how}")

    # ---- the loop's parts ---------------------------------------------------------------
    def batches(self, epoch):
        """This epoch's (images, labels) batches, from where a resumed run stopped."""
        self.epoch = epoch
        self.step = self.start_step if epoch == self.start_epoch else 0
        self.first_step_of_epoch = self.step
        self.bar = Progress(len(self.loader), epoch, self.args.quiet or not self.main_rank, start=self.step)
        self.seen = 0
        self.traffic = getattr(self.model, "traffic", None)  # two towers: bytes between them
        if self.traffic is not None:
            self.traffic.reset()
        try:
            for x, y, _ in self.loader.epoch_batches(epoch, start_step=self.step):
                self.clock.step_started()
                yield x, y
        finally:
            self.bar.close()

    def learning_rate(self):
        """Warm-up: a linear ramp to the base rate over warmup_steps. Then, by the recipe's
        lr_schedule: "plateau" keeps the base rate, divided by 10 when the held-out error stops
        improving (the paper); "budget" decays it linearly to zero at the step where the run
        ends: where the time budget is predicted to run out (its horizon, re-measured at every
        evaluation) or the last epoch's last step, whichever comes first. (A machine fast
        enough to finish the epochs early would otherwise end them at a rate still on its way
        down.)"""
        cfg, s = self.cfg, self.global_step
        warmup = cfg["warmup_steps"]
        if warmup and s < warmup:
            return self.base_lr * (s + 1) / warmup
        if cfg["lr_schedule"] == "budget":
            end = min(self.horizon or math.inf, cfg["epochs"] * len(self.loader))
            return budget_lr(self.base_lr, (s - warmup) / max(end - warmup, 1))
        return self.base_lr

    def step_done(self, value, stop):
        """After an update: check the loss, count, log every 20 steps, keep the clock, and
        (data parallel) let every rank agree on the loss and on stopping."""
        cfg = self.cfg
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss became {value} at epoch {self.epoch}, step {self.step} (global step "
                f"{self.global_step}); {self._last_good()}. Try a smaller --lr or more --warmup-steps.")
        self.step += 1
        self.global_step += 1
        self.clock.step_done()
        if (self.horizon is None or self.horizon_stale) and self.global_step >= max(cfg["warmup_steps"], 10):
            self._measure_horizon()
            self.horizon_stale = self.horizon_stale and not self.clock.steps.per_unit
        self.out_of_time = self.clock.should_stop(self._final_reserve())
        if self.args.stop_after_steps and self.global_step - self.first_global_step >= self.args.stop_after_steps:
            stop.request("stop-after-steps")
        if self.ranks > 1:
            # the ranks agree on the loss to report (the mean over the global batch) and on
            # stopping: one rank's signal or clock stops all of them at this step
            total = dist.allreduce_sum([value, bool(stop.requested), self.out_of_time])
            value, self.out_of_time = float(total[0]) / self.ranks, bool(total[2])
            if total[1]:
                stop.request("stop requested on another rank")
            # what was agreed: a signal that lands after the vote waits for the next step's
            self.agreed_stop = stop.requested if total[1] else None
        self.seen += cfg["batch_size"]
        self.running += value
        self.count += 1
        self.bar.update(self.step, self.seen, value, self.optimizer.lr)
        if self.count == 20 or self.step == len(self.loader):
            self.log(dict(kind="train", epoch=self.epoch, step=self.global_step,
                          loss=self.running / self.count, lr=self.optimizer.lr, time=self.elapsed()))
            self.running, self.count = 0.0, 0

    def evaluation_due(self):
        """Under a time budget an epoch may outlast the run: evaluate at least every
        budget/INTERIM_EVALS seconds, when there is time left for it (all ranks agree)."""
        if not self.cfg["time_budget"]:
            return False
        due = (time.time() - self.last_eval_time >= self.cfg["time_budget"] / INTERIM_EVALS
               and self.clock.remaining() > self._final_reserve() + self._eval_seconds(len(self.interim_set)))
        if self.ranks > 1:
            due = bool(dist.allreduce_sum([due])[0])
        return due

    def evaluate(self, epoch, epoch_end):
        """Score the held-out subset; at an epoch's end also step the plateau schedule; save
        latest.npz (and best.npz when the error is the lowest yet) and the curves."""
        crossing = self._traffic_per_step()        # (before the evaluation's own crossings)
        self._check_ranks_agree()
        result = self._score(self.interim_set)
        if self.traffic is not None:               # count training steps only from here on
            self.traffic.reset()
            self.first_step_of_epoch = self.step
        if crossing is not None:
            result["cross_tower_bytes_per_step"] = crossing
        self.log(dict(kind="eval", epoch=epoch, step=self.global_step, time=self.elapsed(),
                      images=len(self.interim_set), crops=self.cfg["eval_crops"], **result))
        top5 = f"top-5 error {result['top5_err']:.3f}, " if "top5_err" in result else ""
        where = f"epoch {epoch}" if epoch_end else f"epoch {epoch}, step {self.step}"
        self.say(f"{where}: top-1 error {result['top1_err']:.3f}, {top5}val loss {result['loss']:.3f} "
                 f"on {len(self.interim_set)} held-out images ({self.elapsed():.0f} s)")
        # every rank has the same result, so every rank's scheduler makes the same decision;
        # only at an epoch's end, so that the schedule never depends on the clock
        if epoch_end and self.cfg["lr_schedule"] == "plateau" and self.scheduler.step(result["top1_err"]):
            self.base_lr *= self.scheduler.factor  # not optimizer.lr: during warm-up that is lower
            self.say(f"validation error stopped improving: lr -> {self.base_lr:g}")
        if self.cfg["lr_schedule"] == "budget" and self.cfg["time_budget"]:
            self._measure_horizon()
        # the evaluation took time: is there still room for another step? (all ranks agree)
        self.out_of_time = self.clock.should_stop(self._final_reserve())
        if self.ranks > 1:
            self.out_of_time = bool(dist.allreduce_sum([self.out_of_time])[0])
        self._save_after_evaluation(epoch, result)
        if self.main_rank and self.out:
            write_plot(self.out, self.metrics)

    def _save_after_evaluation(self, epoch, result, comparable=True):
        """latest.npz, and best.npz when this is the lowest held-out error yet; a checkpoint at
        an epoch's end resumes at the next epoch's start. comparable=False: a score on other
        images than the evaluations during training (the final one, on all held-out images)
        is not compared with theirs."""
        at = (epoch + 1, 0) if self.step >= len(self.loader) else (epoch, self.step)
        best = comparable and result["top1_err"] < self.best_err
        if best:
            self.best_err = result["top1_err"]
        self.save("latest.npz", *at)
        if best and self.main_rank and self.out:  # the same weights: a link, not a second write
            link_checkpoint(os.path.join(self.out, "latest.npz"), os.path.join(self.out, "best.npz"))

    def stopping(self, stop):
        """Why the training loop stops now, or None. One process: the signal or request so far.
        Several ranks: what they agreed at the last step's vote (step_done), so that a signal
        landing on one rank between the vote and this question stops no rank alone (the
        others would wait for it in the next step's Allreduce)."""
        return stop.requested if self.ranks == 1 else self.agreed_stop

    def save_and_stop(self, epoch, stop):
        """Ctrl-C, SIGTERM or --stop-after-steps (the reason: stopping): save latest.npz and say
        how to go on.  A process that received a signal (``stop.signal``, read after the save:
        one may land during it) then exits with the shell's status for it (130 for Ctrl-C, 143
        for SIGTERM), so that a script or scheduler sees a run that did not finish; a stop asked
        for (--stop-after-steps, another rank's signal) returns None."""
        self.save("latest.npz", epoch, self.step)
        if self.main_rank:
            latest = os.path.join(self.out, "latest.npz")
            print(f"\n{self.stopping(stop)}: saved {latest} at epoch {epoch}, step {self.step}. "
                  f"Continue with: {continue_command(self.args, self.ranks, latest)}", flush=True)
        if stop.signal is not None:
            # raised, not sys.exit: under MPI a failing sys.exit status aborts the job (see
            # tinynet.distributed), and every rank is stopping here anyway, rank 0 maybe still
            # writing latest.npz
            raise SystemExit(128 + signal.Signals[stop.signal].value)
        return None

    def finish(self):
        """The end of training: the final evaluation on the whole held-out set (or, if a time
        budget cannot pay for all of it, the largest stratified subset it can, said out loud),
        then latest.npz, the curves and conv1's filters."""
        cfg = self.cfg
        self._check_ranks_agree()
        if self.count:  # the last steps' training loss, so the curve reaches the end
            self.log(dict(kind="train", epoch=self.epoch, step=self.global_step,
                          loss=self.running / self.count, lr=self.optimizer.lr, time=self.elapsed()))
            self.running, self.count = 0.0, 0
        if self.out_of_time:
            self.say(f"time budget of {cfg['time_budget']:.0f} s: training stopped at epoch "
                     f"{self.epoch}, step {self.step} of {len(self.loader)} ({self.elapsed():.0f} s)")
        final_set = self._final_set()
        if self.last_eval is not None and self.last_eval[:2] == (self.global_step, len(final_set)):
            result = self.last_eval[2]  # these weights were just scored on these images, and saved
        else:
            result = self._score(final_set)
            self.log(dict(kind="eval", epoch=self.epoch, step=self.global_step, time=self.elapsed(),
                          images=len(final_set), crops=self.cfg["eval_crops"], final=True, **result))
            self._save_after_evaluation(self.epoch, result, comparable=len(final_set) == len(self.interim_set))
        if self.main_rank and self.out:
            write_plot(self.out, self.metrics)
            write_filters(self.out, self.model, grey=self.train_set.images.shape[-1] == 1)
        top5 = f"top-5 error {result['top5_err']:.3f}; " if "top5_err" in result else ""
        accuracy, n, total = 1 - result["top1_err"], len(final_set), len(self.val_set)
        spread = ""
        if n < total:
            spread = (f" +- {100 * subset_standard_error(accuracy, n, total):.1f} points, one "
                      f"standard error of {n} of {total} images")
        self.say(f"done in {time.time() - self.clock.start:.0f} s: top-1 error {result['top1_err']:.3f} "
                 f"(accuracy {accuracy:.1%}{spread}) on {n} held-out images, {top5}"
                 f"best top-1 error {self.best_err:.3f} (on the {len(self.interim_set)} held-out images scored "
                 f"during training); run folder {self.out}")
        return result

    def evaluate_only(self):
        """--eval-only: score --resume's weights on the held-out set, as configured now."""
        result = self._score(self.val_set)
        self.say(f"top-1 error {result['top1_err']:.4f}" + (
            f", top-5 error {result['top5_err']:.4f}" if "top5_err" in result else "")
            + f" on {len(self.val_set)} held-out images ({CROPS_SAID[self.cfg['eval_crops']]})")
        return result

    def trace_one_step(self):
        if self.ranks > 1:
            raise ConfigError("--trace traces one process: run it without mpiexec")
        return trace_one_step(self.model, self.loader, self.device)

    # ---- machinery ----------------------------------------------------------------------
    def _last_good(self):
        """Which checkpoint to go back to after a divergence: latest.npz, written only after an
        evaluation whose outputs were all finite, or at a stop, and only of finite weights."""
        if self.args.eval_only:
            return "an earlier checkpoint of the run (best.npz) may still score"
        latest = os.path.join(self.out, "latest.npz") if self.out else None
        return (f"the last good checkpoint is {latest}" if latest and os.path.exists(latest)
                else "no checkpoint was written before it")

    def elapsed(self):
        """The run's clock: a resumed run continues from the time its checkpoint was saved."""
        return self.run_time + (time.time() - self.clock.start)

    def log(self, entry):
        self.metrics.append(entry)
        if self.main_rank and self.out:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")

    def save(self, name, epoch, step):
        if not (self.main_rank and self.out):   # only rank 0 writes: every rank holds the same weights
            return
        self._check_finite(name)
        # running_loss and run_time: a resumed run continues the half-filled average of the
        # training loss and the clock, so its metrics are those of an uninterrupted run
        meta = dict(config=self.cfg, epoch=epoch, step=step, global_step=self.global_step,
                    best_err=self.best_err, base_lr=self.base_lr, lr_horizon=self.horizon,
                    scheduler=self.scheduler.state_dict(), rng=tn.get_rng_state(),
                    running_loss=[self.running, self.count], run_time=self.elapsed())
        t0 = time.time()
        save_checkpoint(os.path.join(self.out, name), self.model, self.optimizer, meta)
        self.save_seconds.add(time.time() - t0)

    def _check_finite(self, name):
        """Refuse to write a checkpoint of weights or momentum holding NaN or infinity (an update
        that diverged after a finite loss, saved by Ctrl-C): it would replace the last good one."""
        velocity = dict(zip((id(p) for p in self.optimizer.params), self.optimizer.velocity))
        for what, p in self.model.named_parameters():
            for array, of in ((p.data, ""), (velocity.get(id(p)), "the momentum of ")):
                with tn.backend.device_guard(p.device):  # (a GPU's array is checked on its GPU)
                    finite = array is None or bool(p.device.xp.isfinite(array).all())
                if not finite:
                    raise FloatingPointError(
                        f"at epoch {self.epoch}, step {self.step} (global step {self.global_step}) "
                        f"{of}{what} holds NaN or infinite values, so {name} was not written; "
                        f"{self._last_good()}. Try a smaller --lr or more --warmup-steps.")

    def _score(self, dataset):
        t0 = time.time()
        result = evaluate(self.model, dataset, self.eval_tf, self.cfg["batch_size"], self.device)
        if result.get("nonfinite"):   # a diverged model: no score to log, schedule by or save
            where = ("the weights of --resume give" if self.args.eval_only else
                     f"at epoch {self.epoch}, step {self.step} (global step {self.global_step}) the model gives")
            raise FloatingPointError(
                f"{where} NaN or infinite outputs for {result['nonfinite']} of {len(dataset)} "
                f"held-out images, so no error rate can be given; {self._last_good()}. Try a "
                f"smaller --lr or more --warmup-steps.")
        crops = self.cfg["eval_crops"]
        self.eval_rate = RateMeter()   # the latest evaluation's rate: the first also paid for warming up
        self.eval_rate.add(time.time() - t0, len(dataset) * crops)
        self.last_eval_time = time.time()
        self.last_eval = (self.global_step, len(dataset), result)
        return result

    def _eval_seconds(self, images):
        """Predicted seconds to evaluate `images` held-out images, at the rate the latest
        evaluation measured; before the first, at the rate of one batch of held-out images
        scored once for it (_probe_eval_rate). Guessed from the training step instead, it was
        17 times too long at batch 2, where the SGD update's fixed cost dwarfs a forward pass:
        the reserve for the final evaluation took a 60 s budget whole after one step."""
        if self.eval_rate.per_unit is None and self.cfg["time_budget"]:
            self._probe_eval_rate()
        return self.eval_rate.predict(images * self.cfg["eval_crops"], default=0.0)

    def _probe_eval_rate(self):
        """Score one batch of held-out images (nothing logged or saved: the rate only). Every
        rank comes here at the same step (the budget's checks run on all), as evaluate needs."""
        n = min(len(self.interim_set), self.cfg["batch_size"])
        t0 = time.time()
        evaluate(self.model, self.interim_set.subset(np.arange(n)), self.eval_tf, self.cfg["batch_size"],
                 self.device)
        self.eval_rate.add(time.time() - t0, n * self.cfg["eval_crops"])

    def _final_count(self):
        """How many held-out images the final evaluation scores: all of them, unless a time
        budget cannot pay for them (more than FINAL_SHARE of it); then as many as it can,
        never fewer than the subset scored during training."""
        budget, total = self.cfg["time_budget"], len(self.val_set)
        if not budget:
            return total
        affordable = int(FINAL_SHARE * budget / max(self._eval_seconds(1), 1e-9))
        return min(total, max(len(self.interim_set), affordable))

    def _final_set(self):
        """The images of the final evaluation: all held-out images, or the largest stratified
        subset the budget can pay for (_final_count), said out loud."""
        n = self._final_count()
        if n >= len(self.val_set):
            return self.val_set
        self.say(f"final evaluation on {n} of {len(self.val_set)} held-out images (every class's "
                 f"share kept): all of them would take about {self._eval_seconds(len(self.val_set)):.0f} s, "
                 f"more than {FINAL_SHARE:.0%} of the {self.cfg['time_budget']:.0f} s budget; score the "
                 f"rest with --resume RUN/latest.npz --eval-only")
        return self.val_set.subset(tdata.stratified_subset_indices(self.val_set.labels, n, self.cfg["data_seed"]))

    def _final_reserve(self):
        """Seconds to keep for the work after training: the final evaluation and checkpoints."""
        if not self.cfg["time_budget"]:
            return 0.0
        saves = 2 * self.save_seconds.predict(1, default=3.0)
        return 1.05 * self._eval_seconds(self._final_count()) + saves + 5.0  # 5% and 5 s for a machine's moods

    def _measure_horizon(self):
        """The budget schedule's horizon: the step at which the time left (less the reserve for
        the final work and the evaluations still due) runs out at the measured step rate.
        Data parallel: rank 0's, on every rank. Each rank's clock, and only rank 0's measure
        of a checkpoint's cost, would give each its own horizon, so its own learning rate, and
        the copies of the model, updated by one gradient at different rates, would drift apart."""
        step_seconds = self.clock.steps.per_unit
        if self.cfg["lr_schedule"] != "budget" or not self.cfg["time_budget"]:
            return
        horizon = None
        if step_seconds:
            left = self.clock.remaining() - self._final_reserve()
            evals_left = max(0.0, left / (self.cfg["time_budget"] / INTERIM_EVALS))
            left -= evals_left * self._eval_seconds(len(self.interim_set))
            horizon = self.global_step + max(int(left / step_seconds), 1)
        if self.ranks > 1:  # every rank reaches this point at the same step: one Allreduce
            mine = horizon if self.main_rank and horizon is not None else 0
            total = dist.allreduce_sum([mine, int(self.main_rank and horizon is not None)])
            horizon = int(total[0]) if total[1] else None
        if horizon is not None:
            self.horizon = horizon

    def _check_ranks_agree(self):
        """Data parallel: every rank applies the same averaged gradient at the same rate, so all
        hold the same weights, and rank 0's checkpoint is everyone's. Checked at every
        evaluation (a float64 sum of the weights, compared with rank 0's): a difference is a
        fault of the program, and stops it instead of scoring and saving a mix of models."""
        if self.ranks == 1:
            return
        mine = sum(float(np.sum(p.numpy(), dtype=np.float64)) for p in self.model.parameters())
        theirs, differs = dist.compare_with_root(mine)
        if differs:
            raise RuntimeError(f"data parallel: the weights of {differs} of {self.ranks} "
                               f"rank(s) differ from rank 0's at step {self.global_step} (sums "
                               f"{mine!r} here, {theirs!r} on rank 0); the ranks no longer "
                               f"train one model")

    def _traffic_per_step(self):
        """Two towers: bytes copied between them per training step since the epoch began."""
        if self.traffic is None or self.step <= self.first_step_of_epoch:
            return None
        steps = self.step - self.first_step_of_epoch
        crossing = dict(forward=self.traffic.forward_bytes // steps,
                        backward=self.traffic.backward_bytes // steps)
        self.say(f"cross-tower traffic per step: {crossing['forward']:,} B forward, "
                 f"{crossing['backward']:,} B backward")
        return crossing


def continue_command(args, ranks, checkpoint):
    """The command that continues a run from `checkpoint`, as this one was started: the script's
    path as given, mpiexec for several ranks, a --cache-dir other than the default; quoted for
    a POSIX shell."""
    script = sys.argv[0] if sys.argv[0].endswith(".py") else "examples/alexnet_train.py"
    launch = (f"mpiexec -n {ranks} python {shlex.quote(script)} --data-parallel" if ranks > 1
              else f"python {shlex.quote(script)}")
    if args.cache_dir != DEFAULT_CACHE_DIR:
        launch += f" --cache-dir {shlex.quote(args.cache_dir)}"
    return f"{launch} --resume {shlex.quote(checkpoint)}"


def main(argv=None):
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        # Ctrl-C before training started (while the data is prepared): nothing to save; a
        # half-built data cache is removed by the data loader itself.  During training the
        # first Ctrl-C saves and stops after the step; only a second one lands here.
        started, out = _state.get("training"), _state.get("out")
        if not started:
            said = "before training started; no checkpoint was written"
        elif not dist.is_main():   # rank 0 says where the run stands
            said = "a second time: stopped at once"
        else:   # (the second Ctrl-C may have cut a checkpoint's writing short: it never replaces one)
            latest = os.path.join(out, "latest.npz") if out else None
            ranks = dist.world_size()
            if latest and os.path.exists(latest):
                go_on = (f"{latest} is from the run's last evaluation or save; continue with: "
                         f"{continue_command(args, ranks, latest)}")
            elif args.resume:      # a run that went on in a new folder, before its first save
                go_on = (f"this run has saved nothing yet; start it again with: "
                         f"{continue_command(args, ranks, args.resume)}")
            else:
                go_on = "no checkpoint of this run was written yet, so it cannot be continued"
            said = "a second time: stopped at once; " + go_on
        print(f"alexnet_train.py: interrupted (Ctrl-C) {said}", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, OSError, ValueError, FloatingPointError, RuntimeError) as e:
        message = f"alexnet_train.py: error: {e}"
        if dist.active():
            # data parallel: end every rank (the others may wait for this one in an Allreduce);
            # a bad option is the same on every rank, so rank 0 alone reports it
            dist.abort(message, code=2, everywhere=isinstance(e, ConfigError))
        print(message, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
