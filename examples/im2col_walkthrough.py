"""im2col + GEMM, step by step: how tinynet (and Caffe, and cuDNN's GEMM mode) convolves.

    python examples/im2col_walkthrough.py

Read it top to bottom, as a lesson; run it to see every matrix.  It uses only
tinynet's public functions (F.im2col, F.col2im, F.conv2d) and checks every
result against the convolution written as loops (tinynet.ops.conv.conv2d_naive).

  Part 1  one channel, a 4x4 image, a 2x2 kernel: the columns, the weight row, the GEMM
  Part 2  three channels, stride 2, padding 1, two filters: the same recipe, bigger
  Part 3  backward: the weight gradient is another GEMM; the input gradient is col2im,
          and where windows overlap their gradients add
  Part 4  the same bookkeeping at AlexNet's size (conv1: cols 363 x 3025, W 96 x 363)

The script exits with status 1 if any check fails.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import numpy as np  # noqa: E402  (after tinynet, which sets BLAS's idle threads to sleep)
import tinynet.functional as F  # noqa: E402
from tinynet.ops.conv import conv2d_backward_naive, conv2d_naive  # noqa: E402

# The lesson takes no options; --help shows the outline above and exits without running it.
argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                        usage="python examples/im2col_walkthrough.py").parse_args()

np.set_printoptions(linewidth=120, precision=2, suppress=True)
failures = []


def section(title):
    print()
    print("=" * 78)
    print(title)
    print("=" * 78)


def show(name, array):
    """Print a named array with its shape."""
    print(f"\n{name}  shape {tuple(array.shape)}:")
    print(array)


def check(what, got, expected):
    """Compare two arrays and say so; remember failures for the exit status."""
    ok = got.shape == expected.shape and np.allclose(got, expected, rtol=1e-10, atol=1e-10)
    print(f"check: {what}: {'OK' if ok else 'MISMATCH'}")
    if not ok:
        failures.append(what)


# ---------------------------------------------------------------------------------------
section("Part 1: one channel, a 4x4 image, one 2x2 filter, stride 1, no padding")
# ---------------------------------------------------------------------------------------
# NCHW: 1 image, 1 channel, 4 rows, 4 columns.  Values 1..16 so every pixel can be
# recognised when it turns up in the columns.  float64 so the checks are exact.
x = np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)
show("the image x (N=1, C=1, H=4, W=4)", x[0, 0])

# The output size along each axis: (H + 2*padding - KH) // stride + 1 = (4 - 2) // 1 + 1 = 3.
print("\noutput size: OH = (H + 2*pad - KH) // stride + 1 = (4 + 0 - 2) // 1 + 1 = 3, OW = 3 too")

# im2col copies every 2x2 window of the image into one COLUMN.  There are OH*OW = 9
# windows, so 9 columns; each window has C*KH*KW = 1*2*2 = 4 pixels, so 4 rows.
cols = F.im2col(tn.tensor(x), kernel_size=2, stride=1, padding=0).data
show("cols = F.im2col(x, 2): one column per window, (C*KH*KW, N*OH*OW) = (4, 9)", cols)
print("\nColumn 0 is the top-left window [[1, 2], [5, 6]] read row by row: "
      f"{cols[:, 0]}.\nColumn 1 is the window one step to the right: {cols[:, 1]}.  "
      "Pixel 6 appears in 4 columns: the windows overlap.")

# The filter, reshaped to a ROW: O filters x (C*KH*KW) weights = (1, 4).
w = np.array([[[[1.0, 0.0],
                [0.0, 2.0]]]])             # (O=1, C=1, KH=2, KW=2): top-left + 2 x bottom-right
show("the filter w (O=1, C=1, KH=2, KW=2)", w[0, 0])
W = w.reshape(1, -1)
show("W = w.reshape(O, C*KH*KW): one filter per row", W)

# The whole convolution is now ONE matrix product: (1 x 4) @ (4 x 9) = (1 x 9).
# Each output value is the dot product of the filter with one window.
y_rows = W @ cols
show("W @ cols: (O, N*OH*OW) = (1, 4) @ (4, 9) -> (1, 9)", y_rows)
print("\nEntry 0 = 1*1 + 0*2 + 0*5 + 2*6 = 13: the filter laid over the top-left window.")

# Reshape (O, N*OH*OW) -> (O, N, OH, OW) and move N to the front: (N, O, OH, OW).
y = y_rows.reshape(1, 1, 3, 3).transpose(1, 0, 2, 3)
show("reshaped to the output image (N=1, O=1, OH=3, OW=3)", y[0, 0])

# The same thing by the definition: slide the filter, multiply, add (loops).
y_naive = conv2d_naive(x, w)
check("W @ cols equals conv2d_naive (the loops)", y, y_naive)
check("F.conv2d (tinynet's fast path) equals conv2d_naive", F.conv2d(tn.tensor(x), tn.tensor(w)).data, y_naive)

# ---------------------------------------------------------------------------------------
section("Part 2: three channels (RGB), 5x5 image, two 3x3 filters, stride 2, padding 1")
# ---------------------------------------------------------------------------------------
rng = np.random.default_rng(0)
x = rng.integers(-3, 4, size=(1, 3, 5, 5)).astype(np.float64)   # small integers: easy to follow
w = rng.integers(-1, 2, size=(2, 3, 3, 3)).astype(np.float64)   # O=2 filters, each 3 channels x 3x3
b = np.array([0.5, -0.5])
stride, pad = 2, 1
OH = (5 + 2 * pad - 3) // stride + 1
print(f"x: (N=1, C=3, H=5, W=5); w: (O=2, C=3, KH=3, KW=3); stride {stride}, padding {pad}")
print(f"OH = OW = (5 + 2*{pad} - 3) // {stride} + 1 = {OH}")
show("channel 0 of x (padding adds a border of zeros, not shown)", x[0, 0])

cols = F.im2col(tn.tensor(x), kernel_size=3, stride=stride, padding=pad).data
print(f"\ncols = F.im2col(x, 3, stride=2, padding=1): shape {cols.shape} = "
      f"(C*KH*KW, N*OH*OW) = (3*3*3, 1*{OH}*{OH})")
print("Rows 0-8 are channel 0's 3x3 window, rows 9-17 channel 1's, rows 18-26 channel 2's.")
show("column 0 = the top-left window, which hangs over the padding (zeros)", cols[:, 0].reshape(3, 3, 3))
print("(Its first row and first column are zeros: they fell in the padding.)")

W = w.reshape(2, -1)                                    # (O, C*KH*KW) = (2, 27)
print(f"\nW = w.reshape(2, 27): shape {W.shape}, one filter (all 3 channels) per row")
y_rows = W @ cols + b[:, None]                          # (2, 27) @ (27, 9) + bias -> (2, 9)
print(f"GEMM: W {W.shape} @ cols {cols.shape} + bias -> {y_rows.shape}")
y = y_rows.reshape(2, 1, OH, OH).transpose(1, 0, 2, 3)  # (O, N, OH, OW) -> (N, O, OH, OW)
show("the output y (N=1, O=2, 3, 3)", y[0])
check("GEMM result equals conv2d_naive", y, conv2d_naive(x, w, b, stride=(2, 2), padding=(1, 1)))
check("F.conv2d equals conv2d_naive",
      F.conv2d(tn.tensor(x), tn.tensor(w), tn.tensor(b), stride=2, padding=1).data,
      conv2d_naive(x, w, b, stride=(2, 2), padding=(1, 1)))

# ---------------------------------------------------------------------------------------
section("Part 3: backward -- two more GEMMs, and col2im")
# ---------------------------------------------------------------------------------------
# Suppose the loss's gradient with respect to y arrives from the layer above: gy, same shape as y.
gy = rng.integers(-2, 3, size=y.shape).astype(np.float64)
g_rows = gy.transpose(1, 0, 2, 3).reshape(2, -1)        # back to the GEMM's layout (O, N*OH*OW)
print(f"gy: {gy.shape}, as rows (O, N*OH*OW): {g_rows.shape}")

# y_rows = W @ cols, so by the matrix product rule:
#   dL/dW    = g_rows @ cols^T        (2, 9) @ (9, 27) -> (2, 27): each filter's gradient
#   dL/dcols = W^T @ g_rows           (27, 2) @ (2, 9) -> (27, 9): each window's gradient
gW = (g_rows @ cols.T).reshape(w.shape)
gcols = W.T @ g_rows
print(f"grad W    = g_rows {g_rows.shape} @ cols^T {cols.T.shape} -> {gW.reshape(2, -1).shape}")
print(f"grad cols = W^T {W.T.shape} @ g_rows {g_rows.shape} -> {gcols.shape}")

# Every column was a COPY of pixels, so each pixel's gradient is the sum of the gradients of
# all its copies.  col2im does exactly that: it adds every column back onto the pixels it
# came from (and drops what fell in the padding).  Where windows overlap, the values ADD.
gx = F.col2im(tn.tensor(gcols), x.shape, kernel_size=3, stride=stride, padding=pad).data
print(f"grad x = F.col2im(grad cols, {x.shape}, 3, stride=2, padding=1) -> {gx.shape}")

gx_naive, gw_naive, gb_naive = conv2d_backward_naive(x, w, gy, stride=(2, 2), padding=(1, 1))
check("grad W by GEMM equals the loops", gW, gw_naive)
check("grad x by col2im equals the loops", gx, gx_naive)

# And tinynet's autograd does the same inside Conv2d.backward:
xt, wt, bt = (tn.tensor(a, requires_grad=True) for a in (x, w, b))
out = F.conv2d(xt, wt, bt, stride=2, padding=1)
out.backward(gy)
check("autograd's grad x equals col2im's", xt.grad, gx)
check("autograd's grad W equals the GEMM's", wt.grad, gW)
check("autograd's grad bias equals gy summed over images and positions", bt.grad, gb_naive)

# Why the gradients add: fold a column matrix of ONES back.  Each pixel receives 1 from every
# window that contains it, so col2im(im2col(ones)) counts the windows per pixel.
ones = np.ones((1, 1, 4, 4))
counts = F.col2im(F.im2col(tn.tensor(ones), 2), ones.shape, 2).data
show("col2im(im2col(ones)) for Part 1 (4x4, 2x2 windows, stride 1): windows per pixel", counts[0, 0])
print("Corners sit in 1 window, edges in 2, the middle pixels in 4: a middle pixel's gradient\n"
      "is the sum of 4 contributions.  (AlexNet's 3x3 pooling with stride 2 overlaps the same way.)")
check("window counts", counts[0, 0], np.array([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1.0]]))

# ---------------------------------------------------------------------------------------
section("Part 4: the same bookkeeping at AlexNet's size")
# ---------------------------------------------------------------------------------------
rows = [  # name, C, H, O, K, stride, pad, groups
    ("conv1", 3, 227, 96, 11, 4, 0, 1),
    ("conv2", 96, 27, 256, 5, 1, 2, 2),
    ("conv3", 256, 13, 384, 3, 1, 1, 1),
    ("conv4", 384, 13, 384, 3, 1, 1, 2),
    ("conv5", 384, 13, 256, 3, 1, 1, 2),
]
print(f"{'layer':6} {'out':>5} {'cols per group':>16} {'W per group':>14} {'groups':>6} {'multiply-adds':>15}")
for name, C, H, O, K, s, p, G in rows:
    OH = F.conv_output_size(H, K, s, p)
    k_rows, positions = C // G * K * K, OH * OH
    macs = O * k_rows * positions
    print(f"{name:6} {OH:5d} {f'{k_rows} x {positions}':>16} {f'{O // G} x {k_rows}':>14} {G:6d} {macs:15,d}")
print("conv1: every 11x11x3 window is a column of 363 numbers, 55*55 = 3025 windows: cols 363 x 3025;\n"
      "96 filters of 363 weights: W 96 x 363; W @ cols = 96 x 3025 = 96 feature maps of 55x55.\n"
      "See it run: print(tinynet.summary(AlexNet(), (3, 227, 227))), or `with tinynet.trace(): model(x)`.")
check("conv1 columns are 363 x 3025",
      np.array(F.im2col(tn.tensor(np.zeros((1, 3, 227, 227), np.float32)), 11, stride=4).shape),
      np.array([363, 3025]))

print()
if failures:
    print(f"{len(failures)} check(s) FAILED: {failures}")
    sys.exit(1)
print("all checks passed")
