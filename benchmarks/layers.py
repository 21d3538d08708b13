"""Per-layer speed of AlexNet's layers against the GEMM floor (CPU, float32).

For every layer shape of AlexNet at batch 32: forward and backward times of
tinynet's op, and for convolutions and fully connected layers the time of
their GEMMs alone (the same matrix products on ready-made operands, measured
in this run at this machine's sgemm rate): the floor no im2col engine can
beat.  conv3-5 run by Winograd's F(2x2, 3x3) and conv2 by F(4x4, 5x5)
(ops/conv.py): their floor is the 16 or 64 products per group that they do,
and the table gives im2col's beside.  Each convolution runs as in the network: with the ReLU that follows
it, done in its output pass (``F.conv2d(relu=True)``); and conv1's input,
the image, needs no gradient, so neither the op nor its floor computes one.
The ratio op/GEMMs says what im2col, col2im, the output pass and Python add:
the op and its GEMMs are timed in turn, repetition after repetition, and the
ratio is the median of the repetitions' ratios (with their range), so that
the shared machine's drift hits both alike.  LRN and max-pool are compared
with conv1's forward+backward.

    python benchmarks/layers.py            # batch 32, 5 repetitions
    python benchmarks/layers.py --quick    # batch 8, 2 repetitions (about a minute)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import numpy as np  # noqa: E402  (after tinynet, which sets BLAS's idle threads to sleep)
import tinynet.functional as F  # noqa: E402
from benchmarks.common import interleaved, machine, ms, save, timeit  # noqa: E402
from tinynet.autograd import run_backward  # noqa: E402
from tinynet.ops import cpu_kernels, linear  # noqa: E402
from tinynet.ops.conv import uses_winograd  # noqa: E402

# name, input (C, H, W), filters, kernel, stride, padding, groups
CONVS = [
    ("conv1", (3, 227, 227), 96, 11, 4, 0, 1),
    ("conv2", (96, 27, 27), 256, 5, 1, 2, 2),
    ("conv3", (256, 13, 13), 384, 3, 1, 1, 1),
    ("conv4", (384, 13, 13), 384, 3, 1, 1, 2),
    ("conv5", (384, 13, 13), 256, 3, 1, 1, 2),
]
FCS = [("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]


def backward_from(y, gy):
    """Backward from y with gy as its gradient, as the next layer would hand it over.
    ``y.backward(gy)`` first copies gy (the caller's array is never handed out), which
    no layer inside a network pays: 37 MB, about 6 ms, for conv1's output at batch 32."""
    run_backward(y, gy.reshape(y.shape))


def measure_gemm_rate(repeat):
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    t = timeit(lambda: a @ a, repeat=repeat)
    return 2 * 2048**3 / t["median"]


def conv_case(name, chw, o, k, s, p, g, n, repeat, rng):
    c, h, w = chw
    # as in the network, conv1's input (the image) needs no gradient: no input-gradient GEMM, no col2im
    needs_gx = c != 3
    x = tn.tensor(rng.standard_normal((n, c, h, w)).astype(np.float32), requires_grad=needs_gx)
    wt = tn.tensor(rng.standard_normal((o, c // g, k, k)).astype(np.float32) * 0.01, requires_grad=True)
    b = tn.tensor(np.zeros(o, np.float32), requires_grad=True)
    state = {}

    def fwd():
        state["y"] = F.conv2d(x, wt, b, s, p, g, relu=True)

    def bwd():
        x.grad = wt.grad = b.grad = None
        y = F.conv2d(x, wt, b, s, p, g, relu=True)
        backward_from(y, gy)

    fwd()
    gy = rng.standard_normal(state["y"].shape).astype(np.float32)
    t_f = timeit(fwd, repeat)

    # the GEMMs alone, whole batch, operands ready: im2col's, and Winograd's where the op runs those
    oh = ow = F.conv_output_size(h, k, s, p)
    winograd = uses_winograd((k, k), (s, s), n)
    im2col_pairs = conv_products(c, h, o, k, s, p, g, n, rng, winograd=False)
    pairs = conv_products(c, h, o, k, s, p, g, n, rng, winograd=True) if winograd else im2col_pairs
    t_fb, g_fb, ratio = interleaved(bwd, lambda: run_products(pairs), repeat)
    flops = 2 * o * (c // g * k * k) * n * oh * ow
    row = dict(layer=name, fwd=t_f, fwd_bwd=t_fb, bwd_median=t_fb["median"] - t_f["median"],
               gemm_fwd_bwd=g_fb["median"], ratio_to_gemm=ratio, gflop_fwd=flops / 1e9,
               gflop_fwd_bwd=product_flops(pairs) / 1e9,  # of the products the op runs
               shape=f"{n}x{c}x{h}x{w} -> {n}x{o}x{oh}x{ow}", algorithm="winograd" if winograd else "im2col")
    if winograd:  # what the direct convolution's products alone take: the floor of an im2col engine
        row["im2col_gemm_fwd_bwd"] = timeit(lambda: run_products(im2col_pairs), repeat)["median"]
    return row


def conv_products(c, h, o, k, s, p, g, n, rng, winograd):
    """The GEMMs of one convolution's training step at batch n, as (a, b) operand pairs, ready:
    forward, weight gradient and, unless the input is the image (c == 3, no gradient), input
    gradient.  By im2col: filters (G, O/G, K), columns (G, K, n*OH*OW), gradient rows; with
    ``winograd``, Winograd's E = A^2 per group (ops/conv.py): U (E*G, O/G, C/G), V (E*G, C/G,
    tiles), Z."""
    oh = (h + 2 * p - k) // s + 1
    if winograd:
        th, tw = cpu_kernels.winograd_tiles(oh, oh, k)
        batch, rows, cols = cpu_kernels.winograd_side(k) ** 2 * g, c // g, n * th * tw
    else:
        batch, rows, cols = g, c // g * k * k, n * oh * oh
    weights = rng.standard_normal((batch, o // g, rows)).astype(np.float32)
    columns = rng.standard_normal((batch, rows, cols)).astype(np.float32)
    grad_rows = rng.standard_normal((batch, o // g, cols)).astype(np.float32)
    pairs = [(weights, columns), (grad_rows, columns.transpose(0, 2, 1))]
    if c != 3:
        pairs.append((weights.transpose(0, 2, 1), grad_rows))
    return pairs


def run_products(pairs):
    for a, b in pairs:  # as the engine runs a convolution's batch of products
        cpu_kernels.batched_matmul(a, b)


def product_flops(pairs):
    """Floating-point operations of the batched products a @ b."""
    return sum(2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] for a, b in pairs)


def simple_case(name, make_input, op, repeat, rng, gemms=None, params=()):
    """Forward, and forward+backward, of op on one input; with ``gemms`` (a layer's GEMMs
    alone), forward+backward is timed in turn with them (see common.interleaved).  ``params``: the
    op's parameters, whose gradients each backward starts from None (as after zero_grad),
    rather than adding to the last one's."""
    x = tn.tensor(make_input(), requires_grad=True)
    state = {}

    def fwd():
        state["y"] = op(x)

    fwd()
    gy = rng.standard_normal(state["y"].shape).astype(np.float32) if state["y"].ndim else None

    def fb():
        for t in (x, *params):
            t.grad = None
        y = op(x)
        backward_from(y, gy) if gy is not None else y.backward()

    t_f = timeit(fwd, repeat)
    row = dict(layer=name, fwd=t_f, shape="x".join(map(str, x.shape)))
    if gemms is None:
        row["fwd_bwd"] = timeit(fb, repeat)
    else:
        row["fwd_bwd"], g_fb, row["ratio_to_gemm"] = interleaved(fb, gemms, repeat)
        row["gemm_fwd_bwd"] = g_fb["median"]
    row["bwd_median"] = row["fwd_bwd"]["median"] - t_f["median"]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="batch 8, 2 repetitions")
    ap.add_argument("--out", default="layers_cpu", help="results file name (without extension)")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeat = 8, 2
    n, r = args.batch, args.repeat
    tn.reuse_freed_memory()  # as the training program does: freed pages are reused, not re-faulted
    rng = np.random.default_rng(0)
    rate = measure_gemm_rate(r)
    print(f"sgemm rate (2048^3): {rate / 1e9:.1f} GFLOP/s; batch {n}; threads {tn.get_num_threads()}")

    rows = [conv_case(*c, n, r, rng) for c in CONVS]
    for name, fin, fout in FCS:
        x = rng.standard_normal((n, fin)).astype(np.float32)
        w = tn.tensor(rng.standard_normal((fout, fin)).astype(np.float32) * 0.01, requires_grad=True)
        wd, g = w.data, rng.standard_normal((n, fout)).astype(np.float32)
        # the products as the layer computes them (small batches: blocks of weight rows)
        gemms = lambda x=x, wd=wd, g=g: (linear.forward_gemm(x, wd), g @ wd, linear.weight_grad_gemm(g, x))  # noqa: E731
        row = simple_case(name, lambda x=x: x, lambda t, w=w: F.linear(t, w), r, rng, gemms=gemms, params=(w,))
        row["gflop_fwd"] = 2 * n * fin * fout / 1e9
        row["gflop_fwd_bwd"] = 3 * row["gflop_fwd"]
        rows.append(row)
    act = lambda shape: (lambda: rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    rows += [
        # the network's LRNs: within each tower's half of the channels (groups=2)
        simple_case("lrn1", act((n, 96, 55, 55)), lambda t: F.local_response_norm(t, groups=2), r, rng),
        simple_case("pool1", act((n, 96, 55, 55)), lambda t: F.max_pool2d(t, 3, 2), r, rng),
        simple_case("lrn2", act((n, 256, 27, 27)), lambda t: F.local_response_norm(t, groups=2), r, rng),
        simple_case("pool2", act((n, 256, 27, 27)), lambda t: F.max_pool2d(t, 3, 2), r, rng),
        simple_case("pool5", act((n, 256, 13, 13)), lambda t: F.max_pool2d(t, 3, 2), r, rng),
        simple_case("dropout6", act((n, 4096)), lambda t: F.dropout(t, 0.5), r, rng),
        simple_case("loss", act((n, 1000)), lambda t: F.cross_entropy(t, np.arange(n) % 1000), r, rng),
    ]

    conv1 = rows[0]["fwd_bwd"]["median"]
    lines = [f"# Per-layer times, AlexNet shapes, batch {n}, float32, CPU\n",
             f"sgemm rate {rate / 1e9:.1f} GFLOP/s (2048x2048x2048, measured in this run)\n",
             "| layer | shape | fwd ms | fwd+bwd ms (min-max) | GEMMs alone fwd+bwd ms | op / GEMMs, median of "
             "the repetitions (min-max) | GEMM GFLOP/s |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        fb = row["fwd_bwd"]
        extra = "| | |"
        gem = ""
        if "gemm_fwd_bwd" in row:
            ratio = row["ratio_to_gemm"]
            gem = ms(row["gemm_fwd_bwd"])
            extra = (f"| {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}) | "
                     f"{row['gflop_fwd_bwd'] / row['gemm_fwd_bwd']:.0f} |")
        elif row["layer"].startswith(("lrn", "pool")):
            row["ratio_to_conv1"] = fb["median"] / conv1
            extra = f"| {row['ratio_to_conv1']:.2f} x conv1 | |"
        if row.get("algorithm") == "winograd":
            gem += f" (Winograd's; im2col's: {ms(row['im2col_gemm_fwd_bwd'])})"
        lines.append(f"| {row['layer']} | {row['shape']} | {ms(row['fwd']['median'])} | "
                     f"{ms(fb['median'])} ({ms(fb['min'])}-{ms(fb['max'])}) | {gem} {extra}")
    total = sum(r_["fwd_bwd"]["median"] for r_ in rows)
    floor = sum(r_.get("gemm_fwd_bwd", 0) for r_ in rows)
    direct = sum(r_.get("im2col_gemm_fwd_bwd", r_.get("gemm_fwd_bwd", 0)) for r_ in rows)
    lines.append(f"\nSum of listed layers: {ms(total)} ms; their GEMMs alone: {ms(floor)} ms "
                 f"(ratio {total / floor:.2f}); with im2col's products for the Winograd layers: {ms(direct)} ms "
                 f"(ratio {total / direct:.2f}).\n")
    info = machine()
    lines.append(f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; {info['blas_kernels']}; "
                 f"tinynet threads {info['tinynet_threads']}; a convolution's batch of GEMMs: "
                 f"{info['batched_products']}; {info['date']}\n")
    md = "\n".join(lines)
    print(md)
    save(args.out, {"machine": info, "batch": n, "sgemm_gflops": rate / 1e9, "rows": rows}, md)
    from tinynet.plot import bar_chart

    bar_chart(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", args.out + ".png"),
              f"forward+backward ms per layer, batch {n}, CPU (GEMMs alone beside)",
              [r_["layer"] for r_ in rows],
              {"tinynet (CPU)": [r_["fwd_bwd"]["median"] * 1e3 for r_ in rows],
               "GEMMs alone (CPU)": [r_["gemm_fwd_bwd"] * 1e3 if "gemm_fwd_bwd" in r_ else None for r_ in rows]})


if __name__ == "__main__":
    main()
