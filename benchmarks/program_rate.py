"""The training program's speed against the bare training step it is built on.

The program (examples/alexnet_train.py) does more than the step: it prepares and
augments the next batch on a thread while the step runs, logs, and evaluates.
This script measures what that costs on the program's default recipe (the
'short' preset: batch 16, 10 classes): it runs the program on a built-in data
set for a number of steps (--stop-after-steps) and reads its steady rate from
metrics.jsonl (the clock at every 20th step, from the first record on, so that
data preparation and the first steps are left out); then it times the bare step
(the same model, optimiser and batch on ready random images, nothing else) for
as many steps in a fresh process.  The two alternate, pair by pair, so that the
shared machine's drift hits both alike, and which runs first alternates too (the
program, then the bare step; then the bare step, on the config the program wrote
for that data set, then the program), so that neither always runs second.  The ratio program / bare is the share
of the step rate the program keeps.

    python benchmarks/program_rate.py                        # shapes and fashion-mnist, 2 pairs
    python benchmarks/program_rate.py --datasets shapes --pairs 1 --steps 60
"""

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from benchmarks.common import machine, save  # noqa: E402

PROGRAM = os.path.join(ROOT, "examples", "alexnet_train.py")


def run_program(dataset, steps, folder):
    """The program for `steps` steps; returns (images/s between its first and last metrics
    record, the run's config, seconds from start to the first record)."""
    cmd = [sys.executable, PROGRAM, "--dataset", dataset, "--stop-after-steps", str(steps), "--out", folder,
           "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        train = [m for m in map(json.loads, f) if m["kind"] == "train"]
    if len(train) < 2:
        raise RuntimeError(f"the program logged {len(train)} training records in {steps} steps: too few")
    first, last = train[0], train[-1]
    rate = (last["step"] - first["step"]) * cfg["batch_size"] / (last["time"] - first["time"])
    return rate, cfg, first["time"]


def bare_worker(config_path, steps):
    """The step alone: the model the program builds from its run's config.json (build_model)
    and the optimiser it gives it, on ready random images."""
    import importlib.util

    import numpy as np

    import tinynet as tn
    import tinynet.functional as F

    spec = importlib.util.spec_from_file_location("alexnet_train", PROGRAM)  # a script, not a package
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    with open(config_path) as f:
        cfg = json.load(f)
    tn.reuse_freed_memory()
    batch, classes = cfg["batch_size"], cfg["num_classes"]
    model = program.build_model(cfg, classes)
    opt = tn.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                       weight_decay=cfg["weight_decay"], update_in_backward=True)  # as the program, one CPU process
    rng = np.random.default_rng(0)
    x = tn.tensor(rng.standard_normal((batch, 3, 227, 227)).astype(np.float32))
    y = rng.integers(0, classes, batch)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"images_per_s": steps * batch / (time.perf_counter() - t0)}))


def run_bare(config_path, steps):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config_path, str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"bare step worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return bare_worker(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["shapes", "fashion-mnist"],
                    choices=["shapes", "fashion-mnist"])
    ap.add_argument("--steps", type=int, default=100, help="program steps per run (its rate: from step 20 on)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", default="program_rate_cpu")
    args = ap.parse_args()
    if args.steps < 40:
        ap.error("--steps must be at least 40: the program logs every 20 steps and its rate starts at step 20")
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as configs:  # each data set's config.json, from its first run
        for pair in range(args.pairs):
            for dataset in args.datasets:
                config = os.path.join(configs, dataset + ".json")
                bare_first = pair % 2 == 1  # pair 0 runs the program first: it writes the config
                with tempfile.TemporaryDirectory() as tmp:
                    if bare_first:
                        bare = run_bare(config, args.steps - 20)
                    folder = os.path.join(tmp, "run")
                    program, cfg, start = run_program(dataset, args.steps, folder)
                    if not bare_first:
                        shutil.copyfile(os.path.join(folder, "config.json"), config)
                        bare = run_bare(config, args.steps - 20)
                rows.append(dict(pair=pair, dataset=dataset, batch=cfg["batch_size"], classes=cfg["num_classes"],
                                 first="bare" if bare_first else "program", program_images_per_s=program,
                                 bare_images_per_s=bare, ratio=program / bare, seconds_to_first_record=start))
                print(f"pair {pair} {dataset}: program {program:.2f} img/s, bare step {bare:.2f} img/s, "
                      f"ratio {program / bare:.3f}" + (" (bare step first)" if bare_first else ""), flush=True)
    lines = [f"# The training program against its bare step, {info['date']}\n",
             f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}. The 'short' preset "
             f"(the program's default); program: images/s from its first metrics record (step 20) to "
             f"step {args.steps}; bare: the same model and optimiser on ready random images, "
             f"{args.steps - 20} steps, in a fresh process right before or after (first: which ran first; "
             f"the order alternates pair by pair).\n",
             "| pair | data | batch | first | program img/s | bare step img/s | program / bare |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['dataset']} | {r['batch']} | {r['first']} | {r['program_images_per_s']:.2f} | "
              f"{r['bare_images_per_s']:.2f} | {r['ratio']:.3f} |" for r in rows]
    for dataset in args.datasets:
        ratios = [r["ratio"] for r in rows if r["dataset"] == dataset]
        lines.append(f"\n{dataset}: median program / bare {statistics.median(ratios):.3f} "
                     f"(range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs).")
    save(args.out, dict(machine=info, steps=args.steps, rows=rows), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
