"""The CPU's loops: NumPy (ops/cpu_kernels.py) against compiled C++ (kernels/cpu_loops.cpp).

Two parts, both interleaved so that the shared machine's drift hits both alike:

1. Each loop alone at AlexNet's shapes (float32, one device, batch 32 by
   default): im2col and col2im of conv1-conv5, max-pool forward and backward
   after conv1, conv2 and conv5, LRN forward and backward after conv1 and
   conv2.  For each, NumPy and compiled take turns, ``--reps`` calls each; the
   median of each is printed with their ratio, after checking that both give the
   same bits.  Also the Winograd transforms of conv2-conv5 (input tiles,
   output tiles, gradient tiles, input gradient).  Beside each, the memory's
   floor: a copy, on the same threads, of as many bytes as the loop must read
   and write, timed in turn with it.
2. Whole training steps (benchmarks/interleaved.py): fresh processes with
   TINYNET_CPU_LOOPS=numpy and =compiled, pair by pair.

    python benchmarks/cpu_loops.py                          # batch 32 loops; steps at 16 and 32, 3 pairs
    python benchmarks/cpu_loops.py --batches 16 --pairs 1   # quicker
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet  # noqa: E402
import numpy as np  # noqa: E402
from benchmarks.common import machine, save  # noqa: E402
from benchmarks.interleaved import compare, table  # noqa: E402
from benchmarks.layers import CONVS  # noqa: E402  AlexNet's convolutions, one table for the benchmarks
from tinynet.ops import cpu_kernels, cpu_loops  # noqa: E402

SETTINGS = {"numpy": {"TINYNET_CPU_LOOPS": "numpy"}, "compiled": {"TINYNET_CPU_LOOPS": "compiled"}}
POOLS = [("pool1", (96, 55, 55)), ("pool2", (256, 27, 27)), ("pool5", (256, 13, 13))]
LRNS = [("lrn1", (96, 55, 55)), ("lrn2", (256, 27, 27))]


def loop_cases(batch, rng):
    """(name, function name, arguments) for every loop, with inputs drawn once."""
    cases = []
    for layer, shape, _, k, s, p, _ in CONVS:
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        cols = cpu_kernels.im2col(x, k, k, (s, s), (p, p))
        cases.append((f"{layer} im2col", "im2col", (x, k, k, (s, s), (p, p), np.empty_like(cols))))
        cases.append((f"{layer} col2im", "col2im", (cols, x.shape, k, k, (s, s), (p, p), np.empty_like(x))))
    for layer, (C, H, W), O, k, s, p, _ in CONVS:  # the Winograd transforms of the 3x3 and 5x5, stride-1 layers
        if k not in (3, 5) or s != 1:
            continue
        tiles, e = cpu_kernels.winograd_tiles(H, W, k), cpu_kernels.winograd_side(k) ** 2
        t = batch * tiles[0] * tiles[1]
        x = rng.standard_normal((batch, C, H, W)).astype(np.float32)
        y = np.maximum(rng.standard_normal((batch, O, H, W)).astype(np.float32), 0)
        m = rng.standard_normal((e, O, t)).astype(np.float32)
        gv = rng.standard_normal((e, C, t)).astype(np.float32)
        bias = rng.standard_normal(O).astype(np.float32)
        cases.append((f"{layer} Winograd input", "winograd_input", (x, (p, p), tiles, np.empty((e, C, t), np.float32))))
        cases.append((f"{layer} Winograd output", "winograd_output", (m, bias, True, tiles, np.empty_like(y))))
        cases.append((f"{layer} Winograd grad output", "winograd_grad_output", (y * 0.5, y, tiles, np.empty_like(m))))
        cases.append((f"{layer} Winograd input grad", "winograd_input_grad", (gv, (p, p), tiles, np.empty_like(x))))
    for layer, shape in POOLS:
        x = np.maximum(rng.standard_normal((batch,) + shape).astype(np.float32), 0)
        oh, ow = (shape[1] - 3) // 2 + 1, (shape[2] - 3) // 2 + 1
        y, argmax = cpu_kernels.maxpool_forward(x, 3, 3, 2, 2, oh, ow)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        cases.append((f"{layer} forward", "maxpool_forward", (x, 3, 3, 2, 2, oh, ow)))
        cases.append((f"{layer} backward", "maxpool_backward", (argmax, gy, x.shape, 3, 3, 2, 2)))
    for layer, shape in LRNS:
        x = np.maximum(rng.standard_normal((batch,) + shape).astype(np.float32), 0) * 3
        gy = rng.standard_normal(x.shape).astype(np.float32)
        cases.append((f"{layer} forward", "lrn_forward", (x, 5, 1e-4, 0.75, 2.0)))
        cases.append((f"{layer} backward", "lrn_backward", (x, gy, 5, 1e-4, 0.75, 2.0)))
    return cases


def same_bits(a, b):
    if isinstance(a, tuple):
        return all(same_bits(u, v) for u, v in zip(a, b))
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def kept(result):
    """A copy of a loop's result: a loop given an `out` returns that buffer, which the other
    loop then writes too, so the comparison needs the first one's numbers set aside."""
    return tuple(kept(r) for r in result) if isinstance(result, tuple) else result.copy()


def moved_bytes(args, result):
    """Bytes a loop must read and write at the least: its input arrays once, its result once
    (an ``out`` buffer among the arguments counts as written, not read)."""
    results = result if isinstance(result, tuple) else (result,)
    written = sum(r.nbytes for r in results)
    read = sum(a.nbytes for a in args if isinstance(a, np.ndarray) and not any(a is r for r in results))
    return read + written


def parallel_copy(src, dst):
    """dst = src on tinynet's threads, one run each, as the compiled loops share a pass out."""
    cpu_kernels.parallel_runs(lambda i0, i1: np.copyto(dst[i0:i1], src[i0:i1]), src.size)


def time_loops(batch, reps):
    """Each loop, NumPy's and compiled, and a copy moving as many bytes on as many threads (half
    read, half written: the memory's floor for that loop), taking turns call by call."""
    rng = np.random.default_rng(0)
    rows = []
    for name, fn, args in loop_cases(batch, rng):
        numpy_fn, compiled_fn = getattr(cpu_kernels, fn), getattr(cpu_loops, fn)
        reference = kept(numpy_fn(*args))                         # also a warm-up call of each
        result = compiled_fn(*args)
        bits = same_bits(reference, result)
        moved = moved_bytes(args, result)
        src = rng.standard_normal(moved // 8).astype(np.float32)  # moved/2 bytes read, moved/2 written
        dst = np.empty_like(src)
        parallel_copy(src, dst)
        times = {"numpy": [], "compiled": [], "copy": []}
        for _ in range(reps):
            for which, f in (("numpy", lambda: numpy_fn(*args)), ("compiled", lambda: compiled_fn(*args)),
                             ("copy", lambda: parallel_copy(src, dst))):
                t0 = time.perf_counter()
                f()
                times[which].append(time.perf_counter() - t0)
        row = dict(loop=name, same_bits=bits, moved_mb=moved / 1e6,
                   **{k: statistics.median(v) * 1e3 for k, v in times.items()})
        row["ratio"] = row["compiled"] / row["numpy"]
        row["over_copy"] = row["compiled"] / row["copy"]
        rows.append(row)
        print(f"{name:26s} numpy {row['numpy']:7.1f} ms  compiled {row['compiled']:7.1f} ms  "
              f"ratio {row['ratio']:.2f}  same bits: {bits}  copy of its {moved / 1e6:.0f} MB "
              f"{row['copy']:.1f} ms ({row['over_copy']:.2f})", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop-batch", type=int, default=32, help="batch of the loops timed alone")
    ap.add_argument("--reps", type=int, default=7, help="calls of each loop, each version (median)")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="batches of the whole steps")
    ap.add_argument("--pairs", type=int, default=3, help="interleaved (numpy, compiled) pairs per batch")
    ap.add_argument("--repeat", type=int, default=3, help="timed steps per process (median)")
    ap.add_argument("--out", default="cpu_loops_cpu")
    args = ap.parse_args()

    tinynet.reuse_freed_memory()  # as the training program: no fresh pages for every output
    tinynet.set_cpu_loops("compiled")  # builds the library now, or says why it cannot
    info = machine()
    loops = time_loops(args.loop_batch, args.reps)
    steps = compare(SETTINGS, args.batches, args.pairs, args.repeat) if args.pairs else []

    lines = [f"# The CPU's loops: NumPy against compiled C++, {info['date']}\n",
             f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; tinynet's threads: "
             f"{info['tinynet_threads']}.\n",
             f"## Each loop alone (batch {args.loop_batch}, float32, median of {args.reps} calls each, "
             f"interleaved)\n",
             "The memory's floor of a loop: a copy on tinynet's threads (one run each) that reads and writes as "
             "many bytes as the loop must (its inputs read once, its result written once), timed in turn "
             "with it.\n",
             "| loop | NumPy ms | compiled ms | compiled / NumPy | same bits | MB moved | copy ms | compiled / copy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in loops:
        lines.append(f"| {r['loop']} | {r['numpy']:.1f} | {r['compiled']:.1f} | {r['ratio']:.2f} | "
                     f"{'yes' if r['same_bits'] else '**no**'} | {r['moved_mb']:.0f} | {r['copy']:.1f} | "
                     f"{r['over_copy']:.2f} |")
    total_np, total_c = sum(r["numpy"] for r in loops), sum(r["compiled"] for r in loops)
    total_copy = sum(r["copy"] for r in loops)
    lines += ["", f"All loops above once each: NumPy {total_np:.0f} ms, compiled {total_c:.0f} ms "
                  f"({total_c / total_np:.2f}); the copies of their bytes {total_copy:.0f} ms (compiled / copies "
                  f"{total_c / total_copy:.2f}).\n"]
    if steps:
        lines += [f"## Whole training steps (AlexNet, 1000 classes, float32; median of {args.repeat} steps "
                  f"per process; pairs interleaved)\n"]
        lines += table(steps, list(SETTINGS), args.batches)
    print("\n".join(lines))
    save(args.out, dict(machine=info, loops=loops, steps=steps), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
