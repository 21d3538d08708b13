"""The fully connected layers' small-batch routes against one GEMM each.

For a small batch on the CPU, tinynet.ops.linear computes y = x @ W.T at batch 1-4
as matrix-vector products (the CPU loops' matvec) and at batch 5-64 as
(W @ x.T).T, WEIGHT_ROWS rows of W per product; the weight gradient gy.T @ x at
batch 1-32 as the sum of outer products it is (the CPU loops' outer_sum) and at
batch 33-64 with its rows shared between tinynet's threads, one BLAS thread each
(cpu_kernels.rows_matmul), because OpenBLAS is slow at those shapes.  This script measures it on
AlexNet's fc6, fc7 and fc8 (float32): the forward GEMM, the weight-gradient
GEMM, and the layer's whole forward + backward (F.linear, then .backward with a
gradient as the layer above would send), each both ways, interleaved repetition
by repetition in one process so that the shared machine's drift hits both
alike.  Medians of the repetitions; the ratio is tinynet's route / the single
product (below 1: the route is faster; 1 where tinynet takes the product too).

    python benchmarks/fc_blocks.py                         # batches 1 8 16 32 64 128
    python benchmarks/fc_blocks.py --batches 8 32 --repeat 5
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import numpy as np  # noqa: E402  (after tinynet, which sets BLAS's idle threads to sleep)
import tinynet.functional as F  # noqa: E402
from benchmarks.common import interleaved, machine, ms, save  # noqa: E402
from tinynet.ops import linear  # noqa: E402

LAYERS = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}


def measure(fin, fout, batch, repeat):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((fout, fin)).astype(np.float32) * 0.01
    x = rng.standard_normal((batch, fin)).astype(np.float32)
    gy = rng.standard_normal((batch, fout)).astype(np.float32)
    wt, bt = tn.tensor(w, requires_grad=True), tn.tensor(np.zeros(fout, np.float32), requires_grad=True)
    xt = tn.tensor(x, requires_grad=True)

    def layer():
        F.linear(xt, wt, bt).backward(gy)
        wt.grad = bt.grad = xt.grad = None

    arms = {"forward": lambda: linear.forward_gemm(x, w), "weight_grad": lambda: linear.weight_grad_gemm(gy, x),
            "layer": layer}
    def way(fn, routes):  # fn with the small-batch routes on or off
        def run():
            linear.SMALL_BATCH_ROUTES = routes
            fn()
        return run

    out = {}
    try:
        for part, fn in arms.items():
            single, tiny, _ = interleaved(way(fn, False), way(fn, True), repeat)
            out[part] = {"single": single["median"], "tinynet": tiny["median"]}
    finally:
        linear.SMALL_BATCH_ROUTES = True
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default="fc_blocks_cpu")
    args = ap.parse_args()
    tn.reuse_freed_memory()
    info = machine()
    rows = []
    for batch in args.batches:
        for name, (fin, fout) in LAYERS.items():
            r = measure(fin, fout, batch, args.repeat)
            rows.append(dict(layer=name, batch=batch, **{f"{part}_{way}_s": v for part, ways in r.items()
                                                          for way, v in ways.items()}))
            print(name, batch, {part: f"{ms(w['single'])} -> {ms(w['tinynet'])} ms" for part, w in r.items()},
                  flush=True)
    lines = [f"# Fully connected GEMMs: single products against tinynet's small-batch routes, {info['date']}\n",
             f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}. float32; medians of "
             f"{args.repeat} interleaved repetitions; ms single product -> tinynet's route (ratio). Routes: "
             f"the forward at batches {linear.MATVEC_BATCH.start}-{linear.MATVEC_BATCH.stop - 1} as matrix-vector "
             f"products (the CPU loops' matvec), at batches "
             f"{linear.MATVEC_BATCH.stop}-{linear.SMALL_BATCH.stop - 1} by blocks of {linear.WEIGHT_ROWS} weight "
             f"rows; the weight gradient at batches {linear.OUTER_SUM_BATCH.start}-{linear.OUTER_SUM_BATCH.stop - 1} "
             f"as the sum of outer products (the CPU loops' outer_sum), at batches {linear.OUTER_SUM_BATCH.stop}-"
             f"{linear.SMALL_BATCH.stop - 1} with its rows shared between the threads (one BLAS thread each).\n",
             "| layer | batch | forward GEMM | weight-gradient GEMM | layer forward + backward |",
             "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{ms(r[f'{p}_single_s'])} -> {ms(r[f'{p}_tinynet_s'])} "
                 f"({r[f'{p}_tinynet_s'] / r[f'{p}_single_s']:.2f})" for p in ("forward", "weight_grad", "layer")]
        lines.append(f"| {r['layer']} | {r['batch']} | " + " | ".join(cells) + " |")
    save(args.out, dict(machine=info, weight_rows=linear.WEIGHT_ROWS, rows=rows), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
