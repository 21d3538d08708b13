"""A batch-1 inference pass of AlexNet, layer by layer: what it costs beyond its GEMMs, and why.

One image is the case where an engine's fixed costs show most: every layer is small, so
what a layer pays once (starting with cold caches, handing work to a thread) is a large part
of it.  For AlexNet (1000 classes, float32, eval mode, no_grad), this script measures:

1. **The pass, layer by layer.**  The forward pass run as its 14 stages (conv1 with its ReLU,
   LRN1, pool1, ..., fc8), the clock read between stages; the median of each stage over
   the repetitions, and the whole pass (the stages' sum, and ``model(x)`` itself beside it).
2. **Each stage alone**, called on its own input again and again: the same work with warm
   caches.  The difference is what the pass pays for starting each stage cold: the fully
   connected layers stream 234 MB of weights through the caches, and the next pass's
   convolutions find their weights, buffers and inputs evicted.
3. **The GEMMs**: the pass under ``tn.profile()``, its GEMM time and the rest.
4. **A hand-off to tinynet's thread pool** (``cpu_kernels.parallel_runs``) for a call that
   does nothing: back to back, and right after a GEMM (conv3's product), and how many such
   calls one pass makes.  A pass shared between the threads pays it each time.
5. **The memory**: fc6's weights (151 MB) read in the pass, against a plain read of the
   same bytes on all threads (a sum), in GB/s.

    python benchmarks/batch1.py                 # 40 passes, each stage alone 40 times
    python benchmarks/batch1.py --repeat 20

It prints a table and saves benchmarks/results/batch1_cpu.json and .md.
"""

import argparse
import ctypes
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402  (before NumPy: tinynet sets OpenBLAS's thread timeout)
import tinynet.functional as F  # noqa: E402
from benchmarks.common import interleaved, machine, save, timeit  # noqa: E402
from tinynet.models import AlexNet  # noqa: E402
from tinynet.models.alexnet import conv_act  # noqa: E402
from tinynet.ops import cpu_kernels  # noqa: E402

import numpy as np  # noqa: E402


def stages(model):
    """AlexNet's forward as (name, function of the previous stage's output), made of the
    model's own pieces in the order AlexNet.features and .classifier call them (in eval mode
    its dropout passes its input on)."""
    act = model.act
    return [
        ("conv1+ReLU", lambda x: conv_act(act, model.conv1, x)),
        ("lrn1", model._lrn),
        ("pool1", model._pool),
        ("conv2+ReLU", lambda x: conv_act(act, model.conv2, x)),
        ("lrn2", model._lrn),
        ("pool2", model._pool),
        ("conv3+ReLU", lambda x: conv_act(act, model.conv3, x)),
        ("conv4+ReLU", lambda x: conv_act(act, model.conv4, x)),
        ("conv5+ReLU", lambda x: conv_act(act, model.conv5, x)),
        ("pool5", model._pool),
        ("flatten", F.flatten),
        ("fc6+ReLU", lambda x: model.drop6(act(model.fc6(x)))),
        ("fc7+ReLU", lambda x: model.drop7(act(model.fc7(x)))),
        ("fc8", model.fc8),
    ]


def median_ms(values):
    return statistics.median(values) * 1e3


def time_pass(model, steps, x, repeat):
    """Per stage: its times in the pass; and the whole model(x), interleaved pass by pass."""
    per_stage, whole = [[] for _ in steps], []
    with tn.no_grad():
        for _ in range(3):
            model(x)
        for _ in range(repeat):
            h, t = x, time.perf_counter()
            for i, (_, fn) in enumerate(steps):
                h = fn(h)
                now = time.perf_counter()
                per_stage[i].append(now - t)
                t = now
            t0 = time.perf_counter()
            model(x)
            whole.append(time.perf_counter() - t0)
    return per_stage, whole


def time_alone(steps, x, repeat):
    """Each stage called `repeat` times in a row on its own input: warm caches."""
    alone = []
    with tn.no_grad():
        h = x
        for _, fn in steps:
            alone.append(timeit(lambda: fn(h), repeat)["values"])
            h = fn(h)
    return alone


def profiled(model, x, repeat):
    """GEMM milliseconds and the whole pass's, median over profiled passes."""
    gemm, total = [], []
    with tn.no_grad():
        for _ in range(repeat):
            with tn.profile() as prof:
                t0 = time.perf_counter()
                model(x)
                total.append(time.perf_counter() - t0)
            gemm.append(prof.by_kind().get("GEMM", 0.0) / 1e3)
    return median_ms(gemm), median_ms(total)


def handoffs(model, x, repeat):
    """A do-nothing call through the pool: back to back and after a GEMM; and the number of
    pool calls in one pass."""
    libc = ctypes.CDLL(None)

    def nothing(i0, i1):
        libc.getpid()  # a C call: the GIL is let go and taken back, as a compiled loop does

    threads = cpu_kernels.get_num_threads()
    a = np.random.default_rng(0).standard_normal((384, 2304), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((2304, 169), dtype=np.float32)

    def back_to_back():
        cpu_kernels.parallel_runs(nothing, threads)

    def gemm_then_handoff():
        a @ b
        cpu_kernels.parallel_runs(nothing, threads)

    def gemm_then_direct():
        a @ b
        for i in range(threads):
            nothing(i, i + 1)

    back = timeit(back_to_back, repeat * 20)["median"] * 1e6  # microseconds
    # after a GEMM: the GEMM then the hand-off, less the GEMM then the same calls made directly,
    # timed in turn (the order alternating) and the median taken of the pairs' differences
    handoff, direct, _ = interleaved(gemm_then_handoff, gemm_then_direct, repeat * 5)
    after = median_ms([a - b for a, b in zip(handoff["values"], direct["values"])]) * 1e3
    calls = [0]
    real = cpu_kernels.parallel_chunks

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    cpu_kernels.parallel_chunks = counting
    try:
        with tn.no_grad():
            model(x)
    finally:
        cpu_kernels.parallel_chunks = real
    return dict(back_to_back_us=back, after_gemm_us=after,
                pool_calls_per_pass=calls[0], threads=threads)


def read_rate(weight, repeat):
    """GB/s of a plain read of `weight` (a sum of each thread's share of its rows)."""
    rows = weight.reshape(weight.shape[0], -1)

    def read():
        cpu_kernels.parallel_runs(lambda r0, r1: np.add.reduce(rows[r0:r1], axis=None), rows.shape[0])

    return weight.nbytes / timeit(read, repeat)["median"] / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=40, help="passes timed; and calls of each stage alone")
    ap.add_argument("--out", default="batch1_cpu")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")

    tn.reuse_freed_memory()
    tn.manual_seed(0)
    info = machine()
    model = AlexNet(1000, bias_init="caffe")
    model.eval()
    x = tn.tensor(np.random.default_rng(0).standard_normal((1, 3, 227, 227)).astype(np.float32))
    steps = stages(model)
    with tn.no_grad():  # the stages are AlexNet's forward: the same logits
        h = x
        for _, fn in steps:
            h = fn(h)
        if not np.array_equal(h.data, model(x).data):
            raise SystemExit("batch1: the stages do not reproduce AlexNet's forward pass")

    per_stage, whole = time_pass(model, steps, x, args.repeat)
    alone = time_alone(steps, x, args.repeat)
    gemm_ms, profiled_ms = profiled(model, x, max(5, args.repeat // 2))
    hand = handoffs(model, x, args.repeat)
    fc6_ms = median_ms(per_stage[[n for n, _ in steps].index("fc6+ReLU")])
    fc6_rate = model.fc6.weight.data.nbytes / (fc6_ms / 1e3) / 1e9
    plain_rate = read_rate(model.fc6.weight.data, max(5, args.repeat // 4))

    rows = [dict(stage=name, in_pass_ms=median_ms(p), alone_ms=median_ms(a))
            for (name, _), p, a in zip(steps, per_stage, alone)]
    pass_ms, alone_sum = sum(r["in_pass_ms"] for r in rows), sum(r["alone_ms"] for r in rows)
    lines = [f"# A batch-1 inference pass, layer by layer, {info['date']}\n",
             f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; tinynet threads "
             f"{hand['threads']}. AlexNet, 1000 classes, float32, eval mode, no_grad; medians of "
             f"{args.repeat} passes (each stage alone: {args.repeat} calls in a row).\n",
             "| stage | in the pass, ms | alone (warm), ms | the pass's extra, ms |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['in_pass_ms']:.3f} | {r['alone_ms']:.3f} | {r['in_pass_ms'] - r['alone_ms']:+.3f} |"
              for r in rows]
    lines += [f"| **sum** | **{pass_ms:.2f}** | **{alone_sum:.2f}** | **{pass_ms - alone_sum:+.2f}** |", "",
              f"- The whole pass, `model(x)`: {median_ms(whole):.2f} ms (the stages' sum: {pass_ms:.2f}).",
              f"- Under `tn.profile()`: GEMMs {gemm_ms:.2f} ms of {profiled_ms:.2f}; the rest "
              f"{profiled_ms - gemm_ms:.2f} ms (im2col, Winograd's transforms, the output passes, LRN, "
              "pooling, Python).",
              f"- A hand-off to tinynet's pool (a call that does nothing): {hand['back_to_back_us']:.1f} us "
              f"back to back, {hand['after_gemm_us']:.1f} us right after a GEMM; one pass makes "
              f"{hand['pool_calls_per_pass']} pool calls.",
              f"- fc6's weights ({model.fc6.weight.data.nbytes / 1e6:.0f} MB) in the pass: {fc6_rate:.1f} GB/s; "
              f"a plain read of the same bytes on {hand['threads']} threads: {plain_rate:.1f} GB/s.", ""]
    print("\n".join(lines))
    save(args.out, dict(machine=info, repeat=args.repeat, stages=rows, pass_ms=median_ms(whole),
                        gemm_ms=gemm_ms, profiled_ms=profiled_ms, handoff=hand,
                        fc6_gb_per_s=fc6_rate, plain_read_gb_per_s=plain_rate), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
