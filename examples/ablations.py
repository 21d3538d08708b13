"""The AlexNet paper's claims as experiments a class can run.

Each arm trains the full AlexNet from the same initial weights on the same
batches of the built-in shapes set (easy level), for the same number of
steps, changing one thing:

    baseline      ReLU, overlapping pooling 3/2, LRN, dropout 0.5   (the paper's net)
    tanh          tanh instead of ReLU           (paper, Figure 1: ReLU reaches 25% training
                                                  error about six times sooner)
    pool-2/2      non-overlapping pooling 2/2    (paper: overlapping lowers top-1 error by 0.4%)
    no-lrn        without response normalisation (paper: LRN lowers top-1 error by 1.4%)
    no-dropout    without dropout                (paper: dropout fights overfitting, and doubles
                                                  the iterations needed to converge)

Pooling 2/2 gives the same sizes as 3/2 here (55 -> 27 -> 13 -> 6), so only the overlap
changes.  It prints a table and draws the training-error curves to ablations.png.

    python examples/ablations.py                 # 5 arms x 400 steps of 16 images: ~16 minutes on 2 cores
    python examples/ablations.py --steps 40 --arms baseline tanh     # a quicker look
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import numpy as np  # noqa: E402  (after tinynet, which sets BLAS's idle threads to sleep)
import tinynet.functional as F  # noqa: E402
from tinynet import data as tdata  # noqa: E402
from tinynet.models import AlexNet, he_weight_std  # noqa: E402
from tinynet.optim import SGD  # noqa: E402
from tinynet.plot import line_chart  # noqa: E402

ARMS = {
    "baseline": dict(),
    "tanh": dict(activation="tanh"),
    "pool-2/2": dict(pool=(2, 2)),
    "no-lrn": dict(lrn=False),
    "no-dropout": dict(dropout=0.0),
}
PAPER = {
    "baseline": "the reference",
    "tanh": "ReLU reaches 25% training error ~6x sooner than tanh (CIFAR-10, 4-layer net)",
    "pool-2/2": "overlapping pooling: top-1 error 0.4% lower, slightly harder to overfit",
    "no-lrn": "LRN: top-1 error 1.4% lower",
    "no-dropout": "dropout: less overfitting; about twice the iterations to converge",
}


def run_arm(name, options, args, train, val, train_tf, eval_tf):
    tn.manual_seed(args.seed)  # same dropout stream for every arm
    model = AlexNet(train.num_classes, bias_init="zero", seed=args.seed, **options)
    model.reset_parameters("zero", he_weight_std(model), seed=args.seed)  # same weights for every arm
    opt = SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    loader = tdata.DataLoader(train, args.batch_size, train_tf, shuffle=True, seed=args.seed)
    errors, steps_to_25 = [], None
    t0 = time.time()
    step, epoch = 0, 0
    while step < args.steps:
        for x, y, _ in loader.epoch_batches(epoch):
            opt.lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
            logits = model(tn.tensor(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            errors.append(float((logits.data.argmax(axis=1) != y).mean()))
            step += 1
            running = float(np.mean(errors[-20:]))
            if steps_to_25 is None and len(errors) >= 20 and running <= 0.25:
                steps_to_25 = step
            if step >= args.steps:
                break
        epoch += 1
    train_seconds = time.time() - t0
    model.eval()
    wrong = 0
    with tn.no_grad():
        for x, y, _ in tdata.DataLoader(val, 50, eval_tf, shuffle=False, drop_last=False).epoch_batches(0):
            wrong += int((model(tn.tensor(x)).data.argmax(axis=1) != y).sum())
    smoothed = [float(np.mean(errors[max(0, i - 19):i + 1])) for i in range(len(errors))]
    return dict(arm=name, options={k: str(v) for k, v in options.items()}, steps=step,
                train_seconds=train_seconds, final_train_error=smoothed[-1],
                val_error=wrong / len(val), steps_to_25pct_train_error=steps_to_25, curve=smoothed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--steps", type=int, default=400, help="training steps per arm")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-per-class", type=int, default=200, help="training images per class")
    ap.add_argument("--val-per-class", type=int, default=20, help="held-out images per class")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "tinynet"))
    args = ap.parse_args(argv)
    for option, value, least in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                                 ("--warmup", args.warmup, 0), ("--train-per-class", args.train_per_class, 1),
                                 ("--val-per-class", args.val_per_class, 1)):
        if value < least:
            ap.error(f"{option} must be >= {least}, got {value}")
    if not args.lr > 0:
        ap.error(f"--lr must be > 0, got {args.lr}")
    os.makedirs(args.out, exist_ok=True)

    folder = f"shapes-easy-10c-{args.train_per_class}x{args.val_per_class}-s0"
    train, val = tdata.make_shapes(os.path.join(args.cache_dir, folder), train_per_class=args.train_per_class,
                                   val_per_class=args.val_per_class, difficulty="easy")
    mean = train.channel_mean()
    std = train.channel_std(mean)
    train_tf = tdata.TrainTransform(mean=mean, std=std, seed=args.seed)
    eval_tf = tdata.EvalTransform(mean=mean, std=std)

    results = []
    for name in args.arms:
        print(f"arm {name}: {args.steps} steps of {args.batch_size} images ...", flush=True)
        r = run_arm(name, ARMS[name], args, train, val, train_tf, eval_tf)
        results.append(r)
        print(f"  {r['train_seconds']:.0f} s; training error (last 20 steps) {r['final_train_error']:.3f}; "
              f"held-out error {r['val_error']:.3f}; steps to 25% training error: "
              f"{r['steps_to_25pct_train_error']}", flush=True)

    lines = [f"# AlexNet ablations: {args.steps} steps x {args.batch_size} images, easy shapes, seed {args.seed}\n",
             "| arm | train error (last 20 steps) | held-out error | steps to 25% train error | seconds | paper says |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['arm']} | {r['final_train_error']:.3f} | {r['val_error']:.3f} | "
                     f"{r['steps_to_25pct_train_error'] or 'not reached'} | {r['train_seconds']:.0f} | "
                     f"{PAPER[r['arm']]} |")
    table = "\n".join(lines) + "\n"
    print(table)
    with open(os.path.join(args.out, "ablations.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "ablations.json"), "w") as f:
        json.dump(dict(args=vars(args), results=results), f, indent=1)
    line_chart(os.path.join(args.out, "ablations.png"), [
        ("training error (mean of the last 20 steps) against step",
         {r["arm"]: (list(range(1, len(r["curve"]) + 1)), r["curve"]) for r in results})])
    print(f"wrote {args.out}/ablations.md, .json and .png")
    return results


if __name__ == "__main__":
    main()
