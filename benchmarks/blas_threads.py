"""OpenBLAS's idle threads: spinning (OpenBLAS's default) against sleeping (tinynet's setting).

After every GEMM, OpenBLAS keeps its idle worker threads spinning for about 0.1 s
(OPENBLAS_THREAD_TIMEOUT=28, 2^28 cycles); `import tinynet` sets 4 (its smallest:
they sleep at once) unless the variable is set.  This script measures what that is
worth: AlexNet training steps (benchmarks/alexnet.py's worker: 1000 classes, float32,
random data) with 28 and with 4, in fresh processes, interleaved pair by pair, so
that the shared machine's drift hits both alike.  It prints and saves each pair's
ratio and, from one profiled step per process, the milliseconds of the passes
between GEMMs (im2col, col2im, LRN, max-pool, ReLU, SGD), where the spinning
threads take a core.

    python benchmarks/blas_threads.py                    # batches 16 and 32, 4 pairs each
    python benchmarks/blas_threads.py --batches 16 --pairs 2
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet  # noqa: E402,F401
from benchmarks.alexnet import profile_groups, run_worker, summarise  # noqa: E402
from benchmarks.common import machine, save  # noqa: E402

SETTINGS = {"spin": "28", "sleep": "4"}  # OPENBLAS_THREAD_TIMEOUT: OpenBLAS's default, tinynet's
BETWEEN_GEMMS = ("im2col", "col2im", "conv transposes + bias", "LRN", "max-pool", "ReLU", "SGD update")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--pairs", type=int, default=4, help="interleaved (spin, sleep) pairs per batch")
    ap.add_argument("--repeat", type=int, default=3, help="timed steps per process (median)")
    ap.add_argument("--out", default="blas_threads_cpu")
    args = ap.parse_args()

    info = machine()
    rows = []
    for batch in args.batches:
        for pair in range(args.pairs):
            row = dict(batch=batch, pair=pair)
            for name, timeout in SETTINGS.items():
                r = summarise(run_worker("tinynet", batch, "train", args.repeat, "cpu", False,
                                         env={"OPENBLAS_THREAD_TIMEOUT": timeout}), batch)
                if "error" in r:
                    raise SystemExit(f"batch {batch}, {name}: the worker failed: {r['error']}")
                groups = profile_groups(r.get("profile_ms", {}))
                row[name] = dict(median_s=r["median"], between_gemms_ms=sum(groups[g] for g in BETWEEN_GEMMS),
                                 gemm_ms=groups["GEMM"])
            row["ratio"] = row["sleep"]["median_s"] / row["spin"]["median_s"]
            rows.append(row)
            print(f"batch {batch} pair {pair}: spin {row['spin']['median_s'] * 1e3:.0f} ms, "
                  f"sleep {row['sleep']['median_s'] * 1e3:.0f} ms per step, ratio {row['ratio']:.2f}; "
                  f"between GEMMs {row['spin']['between_gemms_ms']:.0f} -> {row['sleep']['between_gemms_ms']:.0f} ms",
                  flush=True)

    lines = [f"# OpenBLAS idle threads: spinning (28) against sleeping (4), {info['date']}\n",
             f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}. AlexNet (1000 classes, "
             f"float32) training steps, median of {args.repeat} per process; pairs interleaved; the "
             f"between-GEMM passes and GEMMs from one profiled step per process.\n",
             "| batch | pair | spin ms/step | sleep ms/step | sleep / spin | between GEMMs ms, spin → sleep "
             "| GEMM ms, spin → sleep |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['pair']} | {r['spin']['median_s'] * 1e3:.0f} | "
                     f"{r['sleep']['median_s'] * 1e3:.0f} | {r['ratio']:.2f} | "
                     f"{r['spin']['between_gemms_ms']:.0f} → {r['sleep']['between_gemms_ms']:.0f} | "
                     f"{r['spin']['gemm_ms']:.0f} → {r['sleep']['gemm_ms']:.0f} |")
    lines.append("")
    for batch in args.batches:
        ratios = [r["ratio"] for r in rows if r["batch"] == batch]
        lines.append(f"Batch {batch}: median ratio {statistics.median(ratios):.2f} "
                     f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} pairs).")
    print("\n".join(lines))
    save(args.out, dict(machine=info, rows=rows), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
