"""OpenBLAS's idle threads: spinning (OpenBLAS's default) against sleeping (tinynet's setting).

After every GEMM, OpenBLAS keeps its idle worker threads spinning for about 0.1 s
(OPENBLAS_THREAD_TIMEOUT=28, 2^28 cycles); `import tinynet` sets 4 (its smallest:
they sleep at once) unless the variable is set.  "spin" is also what a program gets
that imports NumPy before tinynet with no value in the environment: OpenBLAS has
read its default by then (tinynet warns).  This script measures what that is
worth: AlexNet training steps (benchmarks/alexnet.py's worker: 1000 classes, float32,
random data) with 28 and with 4, in fresh processes, interleaved pair by pair, so
that the shared machine's drift hits both alike.  It prints and saves each pair's
ratio and, from three profiled steps per process (each kind's median), the
milliseconds of the passes between GEMMs (im2col, col2im, the output pass, Winograd's transforms, LRN,
max-pool, ReLU, dropout, the loss, SGD), where the spinning
threads take a core.

    python benchmarks/blas_threads.py                    # batches 16 and 32, 4 pairs each
    python benchmarks/blas_threads.py --batches 16 --pairs 2
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet  # noqa: E402,F401
from benchmarks.common import machine, save  # noqa: E402
from benchmarks.interleaved import compare, table  # noqa: E402

# OPENBLAS_THREAD_TIMEOUT: OpenBLAS's default, tinynet's
SETTINGS = {"spin": {"OPENBLAS_THREAD_TIMEOUT": "28"}, "sleep": {"OPENBLAS_THREAD_TIMEOUT": "4"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--pairs", type=int, default=4, help="interleaved (spin, sleep) pairs per batch")
    ap.add_argument("--repeat", type=int, default=3, help="timed steps per process (median)")
    ap.add_argument("--out", default="blas_threads_cpu")
    args = ap.parse_args()

    info = machine()
    rows = compare(SETTINGS, args.batches, args.pairs, args.repeat)
    lines = [f"# OpenBLAS idle threads: spinning (28) against sleeping (4), {info['date']}\n",
             f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; "
             f"{info['blas_kernels'].split('; ')[0]} (each column's processes set their own timeout). AlexNet (1000 classes, "
             f"float32) training steps, median of {args.repeat} per process; pairs interleaved; the "
             f"between-GEMM passes and GEMMs from the profiled steps per process (median of 3).\n"]
    lines += table(rows, list(SETTINGS), args.batches)
    print("\n".join(lines))
    save(args.out, dict(machine=info, rows=rows), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
