"""Larger Winograd tiles for AlexNet's convolutions: the work each would save, and its cost in
float32 accuracy.

The engine convolves conv2 (5x5) by Winograd's F(4x4, 5x5) and conv3-5 (3x3) by F(2x2, 3x3)
(tinynet/ops/cpu_kernels.py).  F(m x m, r x r) computes a block of m x m outputs from an n x n
input tile, n = m + r - 1, with n^2 products: per output, n^2 / m^2 of them, 9 for F(2x2, 5x5)
(the engine's choice until this script's numbers) and 4 for F(4x4, 5x5).  A layer's products and its tile matrices (V, M and their gradients) all
scale with n^2 times the number of tiles, and an output whose side is not a multiple of m pays
for the tiles that stick out past it.

The maps of F(m, r) come from the Toom-Cook construction (Lavin and Gray, 2016): pick n - 1
distinct points and "infinity"; A^T's columns are the points' powers, G's rows the powers
divided by the product of the point's differences from the others, B^T's rows the coefficients
of the polynomials that vanish at every other point.  Their entries grow with n, and in float32
the results drift further from the exact ones.  This script builds the maps for a few choices
of points in exact arithmetic (Fractions), checks each against a direct correlation in exact
arithmetic, and then on AlexNet's conv2 and conv3 shapes (one group, a few images of ReLU'd
inputs, He-scaled filters) measures in float32 against a float64 direct convolution:

  - the largest error over the largest output, and the root-mean-square error over the outputs'
    root mean square;
  - the products per image (n^2 times the tiles), against the engine's.

The engine's own maps (cpu_kernels.WINOGRAD_MAPS) are measured twice: through the same NumPy
code as the candidates and through tinynet itself (F.conv2d with the Winograd algorithm), so that
the one path can be compared with the other.

    python benchmarks/winograd_tiles.py
"""

import os
import sys
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tinynet as tn  # noqa: E402  first: its import sets BLAS's idle threads to sleep
import numpy as np  # noqa: E402
import tinynet.functional as F  # noqa: E402
from benchmarks.common import machine, save  # noqa: E402
from tinynet.ops import conv as conv_ops  # noqa: E402
from tinynet.ops.cpu_kernels import WINOGRAD_MAPS, winograd_block  # noqa: E402

# (name, input channels of one group, filters of one group, side, kernel, padding), AlexNet's
LAYERS = (("conv2", 48, 128, 27, 5, 2), ("conv3", 256, 384, 13, 3, 1))
# the candidates per kernel size: (m, the n - 1 finite points); (None, None): the engine's own maps
CANDIDATES = {
    5: ((None, None), (2, (0, 1, -1, 2, -2)), (3, (0, 1, -1, 2, -2, Fraction(1, 2))),
        (3, (0, 1, -1, Fraction(1, 2), Fraction(-1, 2), -2)), (4, (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)))),
    3: ((None, None), (3, (0, 1, -1, Fraction(1, 2))), (4, (0, 1, -1, 2, -2)),
        (4, (0, 1, -1, Fraction(1, 2), Fraction(-1, 2)))),
}
IMAGES = 4


def poly_times(a, b):
    """The coefficients (lowest power first) of the product of two polynomials."""
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def toom_cook(m, r, points):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r) on ``points`` and infinity, as Fractions."""
    n = m + r - 1
    points = [Fraction(p) for p in points]
    assert len(points) == n - 1 and len(set(points)) == n - 1, "n - 1 distinct finite points"
    at = [[p ** k for p in points] + [Fraction(int(k == m - 1))] for k in range(m)]
    g, bt = [], []
    for i, p in enumerate(points):
        others = [q for j, q in enumerate(points) if j != i]
        scale = Fraction(1)
        vanishing = [Fraction(1)]  # the polynomial that is zero at every other point
        for q in others:
            scale *= p - q
            vanishing = poly_times(vanishing, [-q, Fraction(1)])
        g.append([p ** k / scale for k in range(r)])
        bt.append(vanishing + [Fraction(0)] * (n - len(vanishing)))
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    every = [Fraction(1)]  # the polynomial that is zero at every point: infinity's row
    for q in points:
        every = poly_times(every, [-q, Fraction(1)])
    bt.append(every)
    return at, g, bt


def exact_check(m, r, maps):
    """Largest |error| of y = A^T [(G g) * (B^T d)] against the correlation of d and g, in exact
    arithmetic, over a few integer inputs: 0 for maps that are right."""
    at, g_map, bt = maps
    rng = np.random.default_rng(0)
    n = m + r - 1
    worst = Fraction(0)
    for _ in range(5):
        d = [Fraction(int(v)) for v in rng.integers(-9, 10, n)]
        g = [Fraction(int(v)) for v in rng.integers(-9, 10, r)]
        gg = [sum(row[k] * g[k] for k in range(r)) for row in g_map]
        dd = [sum(row[k] * d[k] for k in range(n)) for row in bt]
        y = [sum(row[k] * gg[k] * dd[k] for k in range(n)) for row in at]
        ref = [sum(d[i + k] * g[k] for k in range(r)) for i in range(m)]
        worst = max([worst] + [abs(a - b) for a, b in zip(y, ref)])
    return worst


def engine_maps(r):
    """tinynet's own maps for an r x r filter, as (A^T, G, B^T), as Fractions (their fractions
    written as floats)."""
    bt, g, at = WINOGRAD_MAPS[r]
    exact = lambda mat: [[Fraction(v).limit_denominator(1000) for v in row] for row in mat]  # noqa: E731
    return exact(at), exact(g), exact(bt)


def direct(x, w, pad):
    """The correlation of x (N, C, H, W) with w (O, C, K, K), stride 1, in x's dtype."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # N C OH OW K K
    return np.einsum("nchwij,ocij->nohw", windows, w, optimize=True)


def winograd(x, w, pad, m, maps, dtype):
    """The same convolution by F(m x m, r x r) with ``maps``, every step in ``dtype``:
    V = B^T d B per tile, U = G g G^T per filter, M = U V per entry (summed over channels),
    y = A^T M A per tile."""
    at, g, bt = (np.array([[float(v) for v in row] for row in mat], dtype) for mat in maps)
    x, w = x.astype(dtype), w.astype(dtype)
    N, C, H, _ = x.shape
    r = w.shape[-1]
    n = m + r - 1
    oh = H + 2 * pad - r + 1
    t = -(-oh // m)  # tiles per side, the last ones sticking out past the output
    side = (t - 1) * m + n
    xp = np.zeros((N, C, side, side), dtype)
    xp[:, :, pad:pad + H, pad:pad + H] = x
    s = xp.strides
    tiles = np.lib.stride_tricks.as_strided(xp, (N, C, t, t, n, n), (s[0], s[1], s[2] * m, s[3] * m, s[2], s[3]))
    v = np.einsum("ik,ncabkl,jl->ijcnab", bt, tiles, bt, optimize=True)
    u = np.einsum("ik,ockl,jl->ijoc", g, w, g, optimize=True)
    prod = np.einsum("ijoc,ijcnab->ijonab", u, v, optimize=True)
    y = np.einsum("pi,ijonab,qj->noapbq", at, prod, at, optimize=True).reshape(N, -1, t * m, t * m)
    return y[:, :, :oh, :oh]


def errors(y, ref):
    """(largest |y - ref| / largest |ref|, rms(y - ref) / rms(ref))."""
    diff = y.astype(np.float64) - ref
    return float(np.abs(diff).max() / np.abs(ref).max()), float(np.sqrt((diff ** 2).mean() / (ref ** 2).mean()))


def engine_error(x, w, pad, ref):
    """tinynet's own float32 convolution by Winograd (F.conv2d), its errors against ref."""
    old = conv_ops.get_conv_algorithm()
    conv_ops.set_conv_algorithm("winograd")
    try:
        with tn.no_grad():
            y = F.conv2d(tn.tensor(x.astype(np.float32)), tn.tensor(w.astype(np.float32)), padding=pad).data
    finally:
        conv_ops.set_conv_algorithm(old)
    return errors(y, ref)


def main():
    rng = np.random.default_rng(0)
    rows = []
    for name, c, o, h, k, pad in LAYERS:
        x = np.maximum(rng.standard_normal((IMAGES, c, h, h)), 0)  # a ReLU's output
        w = rng.standard_normal((o, c, k, k)) * np.sqrt(2 / (c * k * k))  # He's scale
        ref = direct(x, w, pad)
        oh = h + 2 * pad - k + 1
        base = None
        for m, points in CANDIDATES[k]:
            if points is None:
                m = winograd_block(k)
            maps = engine_maps(k) if points is None else toom_cook(m, k, points)
            n, t = m + k - 1, -(-oh // m)  # the tile's side, tiles per side
            products = n * n * t * t  # per image and channel pair
            base = base or products
            row = dict(layer=name, shape=f"{c}->{o}, {h}x{h}, {k}x{k}", m=m, r=k,
                       points="tinynet's" if points is None else ", ".join(str(p) for p in points) + ", inf",
                       tiles=f"{t}x{t}", products=products, products_vs_engine=products / base,
                       per_output=n * n / (m * m), exact_error=str(exact_check(m, k, maps)))
            row["float32_max"], row["float32_rms"] = errors(winograd(x, w, pad, m, maps, np.float32), ref)
            row["float64_max"] = errors(winograd(x, w, pad, m, maps, np.float64), ref)[0]
            if points is None:
                row["engine_float32_max"], row["engine_float32_rms"] = engine_error(x, w, pad, ref)
            rows.append(row)
            print(f"{name} F({m}x{m}, {k}x{k}) [{row['points']}]: products {products / base:.2f} of the engine's, "
                  f"float32 error {row['float32_max']:.2e} (rms {row['float32_rms']:.2e})"
                  + (f", tinynet's own {row['engine_float32_max']:.2e}" if points is None else ""))
        d32 = errors(direct(x.astype(np.float32), w.astype(np.float32), pad), ref)
        rows.append(dict(layer=name, m=None, r=k, per_output=k * k, points="direct (im2col's sums)",
                         float32_max=d32[0], float32_rms=d32[1]))
        print(f"{name} direct float32: {d32[0]:.2e} (rms {d32[1]:.2e})")

    info = machine()
    md = [f"# Larger Winograd tiles for AlexNet's convolutions, {info['date']}", "",
          f"{IMAGES} images of one group's shape, ReLU'd standard-normal inputs, He-scaled filters; errors against a "
          "float64 direct convolution: the largest over the largest output, and the rms over the outputs' rms. "
          "Products: n^2 per tile times the tiles of one image, against the engine's maps. Exact check: the "
          "largest error of the maps in exact arithmetic (0: right). The candidates' float32 path is NumPy's einsum "
          "(its own order of sums); the engine's maps go through it too, beside tinynet's own result.", "",
          "| layer | F(m x m, r x r) | points | tiles | products per output | products vs the engine's | exact check "
          "| float32 max error | float32 rms error | float64 max error |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["m"] is None:
            md.append(f"| {row['layer']} | direct | {row['points']} | | {row['per_output']} | | | "
                      f"{row['float32_max']:.2e} | {row['float32_rms']:.2e} | |")
            continue
        own = (f" (tinynet: {row['engine_float32_max']:.2e})" if "engine_float32_max" in row else "")
        md.append(f"| {row['layer']} | F({row['m']}x{row['m']}, {row['r']}x{row['r']}) | {row['points']} | {row['tiles']} "
                  f"| {row['per_output']:.2f} | {row['products_vs_engine']:.2f} | {row['exact_error']} "
                  f"| {row['float32_max']:.2e}{own} | {row['float32_rms']:.2e} | {row['float64_max']:.1e} |")
    md += ["", f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; {info['date']}", ""]
    save("winograd_tiles", dict(machine=info, images=IMAGES, rows=rows), "\n".join(md))


if __name__ == "__main__":
    main()
