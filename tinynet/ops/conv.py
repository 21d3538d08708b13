"""Convolution as im2col + GEMM, with groups; and its naive twin.

The idea (Caffe, cuda-convnet, Chainer): copy every receptive field of the
input into one column of a matrix, the *columns* ``cols``; then convolution
is one matrix product of the filters with the columns.

    x     : (N, C, H, W)                     the input images
    weight: (O, C/G, KH, KW)                 O filters in G groups
    cols  : (C*KH*KW, N*OH*OW)               row = (channel, ky, kx), column = (image, oy, ox)
    out   : (O, N*OH*OW) = weight.reshape(O, C*KH*KW) @ cols   -> transposed to (N, O, OH, OW)

With groups, the channel axis of ``cols`` and the filter axis of ``weight``
are each cut into G blocks, and one batched matmul does the G products:

    (G, O/G, N*OH*OW) = (G, O/G, C/G*KH*KW) @ (G, C/G*KH*KW, N*OH*OW)

(On the CPU that batch is ``cpu_kernels.batched_matmul``: the same products as
``np.matmul``, shared between tinynet's threads, one BLAS thread each.)

The column matrix is (KH*KW / stride^2) times larger than the input: for
AlexNet's conv1 at batch 128 it would be 560 MB.  So the batch is processed
in chunks of images whose columns, GEMM output (and, in backward, column
gradient) fit in a fixed workspace budget (``set_conv_workspace``), as Caffe
builds its columns one image at a time; the whole batch's columns are kept
from forward for backward, outside that budget, only when they fit a cap of
their own (``set_conv_keep_columns``).  The results do not depend on the
chunk size.

OH = (H + 2*ph - KH) // sh + 1 and OW likewise (floor rounding, as Caffe).
"""

import threading

import numpy as np

from ..autograd import Function, is_grad_enabled
from ..backend import get_array_module
from ..profile import section
from . import cpu_kernels, kernels_for
from .cpu_kernels import batched_matmul

# ----------------------------------------------------------------------------
# The workspace: every big buffer a convolution needs, under one budget
# ----------------------------------------------------------------------------
#
# A chunk of n images needs up to three matrices with one column per output
# position, n*OH*OW columns each.  These are the workspace's *roles*:
#
#   columns      (C*KH*KW, n*OH*OW)   im2col of the chunk
#   gemm_output  (O, n*OH*OW)         forward's GEMM result; backward's gradient rows
#   column_grad  (C*KH*KW, n*OH*OW)   backward's W^T @ gradient rows, before col2im
#
# One budget (set_conv_workspace) bounds them: a pass (forward, or backward)
# takes as many images per chunk as its roles fit in the budget.  They are
# carved out of one byte buffer per thread, reused between calls (no fresh
# pages to fault in for every layer and step) and never larger than the budget.
#
# Beside them, when forward keeps the whole batch's columns for backward:
#
#   kept_columns (C*KH*KW, N*OH*OW)   made in forward, used and dropped in backward
#
# bounded by a cap of its own (set_conv_keep_columns).  Then no pass has a
# columns role: each chunk reads its slice of the kept columns.
# conv_workspace_peak() reports the largest pass, role by role.

# The budget when none is set, by where the arrays live.  On the CPU two effects pull apart: a
# small budget keeps a chunk's buffers (the GEMM's output, Winograd's tiles) in the caches between
# the pass that writes them and the one that reads them; a large one makes fewer, wider GEMMs and
# fewer hand-overs between the threads.  Measured as interleaved whole training steps in one
# process, the machines disagree.  On 2-core AMD EPYCs (1 MB L2 per core, 32 MB L3 shared with
# other guests; one of them a Zen 5) 192 MiB was fastest.  In six runs 32 MiB took 0.98-1.30 of
# its time at batch 128 (median 1.10; the two highest while other guests loaded the machine, a
# fifth of the cores' time in the one that counted it), in three 1.04-1.09 at batch 32, and in
# one 1.00 at batch 8; 64 MiB took 1.08 and 1.03 in the run that had it.  On a 2-core Intel
# Xeon (2 MB L2 per core) 32 MiB took 0.91 of 192's time at batch 128, 0.97 at batch 32 and 0.98
# at batch 8.  The default is the EPYCs', the machines the project's CPU targets are set on; on
# a machine like that Xeon, set_conv_workspace(32 * 2**20).  On a GPU fewer, larger chunks mean
# fewer, larger kernels.
DEFAULT_WORKSPACE = {"cpu": 192 * 2**20, "gpu": 192 * 2**20}
_workspace = {"bytes": None, "keep": 640 * 2**20, "peak": 0, "peak_roles": {}, "algorithm": "auto"}
_peak_lock = threading.Lock()


def set_conv_workspace(nbytes):
    """The workspace budget, in bytes: the most one convolution pass may hold
    in its chunk's columns, GEMM output and column gradient together (kept
    columns have their own cap, set_conv_keep_columns).  None: the defaults,
    DEFAULT_WORKSPACE (192 MiB on the CPU and on a GPU).  Returns the
    previous value (None where it was the defaults).

    A chunk holds at least one image, so when one image alone needs more
    than the budget, that pass goes over it (conv_workspace_peak shows by
    how much) and its buffer is freed after the pass instead of kept."""
    if nbytes is not None and (not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes <= 0):
        raise ValueError(f"set_conv_workspace: nbytes must be a positive int or None (the defaults), got {nbytes!r}")
    old = _workspace["bytes"]
    _workspace["bytes"] = None if nbytes is None else int(nbytes)
    return old


def get_conv_workspace(xp=np):
    """The workspace budget in bytes for arrays of module ``xp`` (NumPy: the CPU; CuPy: a GPU):
    the one set_conv_workspace set, else DEFAULT_WORKSPACE's."""
    budget = _workspace["bytes"]
    return budget if budget is not None else DEFAULT_WORKSPACE["cpu" if xp is np else "gpu"]


def set_conv_keep_columns(nbytes):
    """Largest column matrix (whole batch) a convolution may keep from forward
    for its backward instead of rebuilding it, in bytes; 0 always rebuilds.
    They live from forward to backward, so this cap bounds what each
    convolution holds across the step; backward reads them chunk by chunk,
    its other buffers within the workspace budget.  Columns are kept only
    when the weights need a gradient (backward reads them for nothing else).
    Default 640 MiB.  What a convolution keeps is its column matrix, or for one
    run by Winograd its input tiles V.  At batch 32 on one device every AlexNet
    convolution keeps them (conv1's columns 134 MiB, conv2's tiles 36.8, conv3's
    24.5, conv4's and conv5's 36.8 each), so backward rebuilds nothing; at batch
    128 too (conv1's columns 538 MiB, conv2's tiles 147); at batch 256 conv1
    rebuilds its columns chunk by chunk.  On the 2-core Zen 5, conv1's forward
    and backward at batch 128 took 0.93 of the time with its columns kept (7
    pairs in turn, against the previous cap of 384 MiB, which rebuilt them), and
    a batch-128 step's peak memory went from 2,369 to 2,830 MB (PyTorch's: 4,369).
    Earlier, when conv2 ran 2x2 blocks (its tiles 331 MiB at batch 128), the
    batch-128 step took 2.67 s with a cap of 384 MiB and 2.79 s with 256 (conv2's
    tiles rebuilt).
    Returns the previous value."""
    if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"set_conv_keep_columns: nbytes must be an int >= 0, got {nbytes!r}")
    old = _workspace["keep"]
    _workspace["keep"] = int(nbytes)
    return old


ALGORITHMS = ("auto", "winograd", "im2col")
# The kernel sizes Winograd runs (stride 1), and from how many images "auto" takes it for each
# (see set_conv_algorithm)
WINOGRAD_MIN_BATCH = {(3, 3): 2, (5, 5): 1}


def set_conv_algorithm(name):
    """How the CPU convolves a 3x3 or 5x5, stride-1 convolution (AlexNet's conv3-5 and
    conv2): "winograd" by Winograd's F(2x2, 3x3) or F(4x4, 5x5) (``cpu_kernels.winograd_*``:
    2.25 and 6.25 times fewer multiply-adds, less the tiles that overhang the output; the 5x5
    maps round in float32, see there);
    "im2col" by im2col, the picture of the tour; "auto" (the default) by Winograd
    from WINOGRAD_MIN_BATCH images on: a 5x5 from one image, a 3x3 from two.  A
    single image's 3x3 layers run im2col: their 16 products per group have one
    column per tile (49 for a 13x13 output), too thin to run faster than im2col's
    one product, and the filters' transforms come on top (on the 2-core development
    machine, one image: conv3-5 by Winograd in 0.97-1.02 of their time by im2col).
    A 5x5 saves enough for one image too: with 2x2 blocks conv2 by Winograd took 0.75 of its
    time by im2col, a whole batch-1 inference pass 0.97; with 4x4 blocks (49 columns per
    product) the pass took 0.96 of its time with 2x2 blocks and 0.95 of its time with conv2 by
    im2col (2-core AMD EPYC, Zen 5, in turn in one process).  From two images on both win:
    AlexNet inference at batch 8, 91 ms against 97; a batch-32 training step
    0.81-0.90 s against 0.94-1.06; with conv2 by Winograd too, 0.89 times the step
    with conv2 by im2col, and with 4x4 blocks instead of 2x2, 0.93, 0.93, 0.90 and 0.86 of
    the step at batches 8, 16, 32 and 128 (conv2's forward and backward alone 0.57).  Other
    kernels and strides, and every convolution on a
    GPU, run by im2col.  The two differ in the last bits, as two orders of
    summation do (the 5x5 maps a little more: their fractions round).  And where an
    input is infinite, Winograd's tiles subtract it from itself: outputs that
    im2col makes inf come out NaN (both say the values overflowed; a NaN input
    spreads the same way by either).  Returns the previous value."""
    if name not in ALGORITHMS:
        raise ValueError(f"set_conv_algorithm: expected one of {ALGORITHMS}, got {name!r}")
    old, _workspace["algorithm"] = _workspace["algorithm"], name
    return old


def uses_winograd(kernel_size, stride, batch):
    """Whether the CPU runs a convolution of this kernel, stride and batch size by Winograd,
    under the present set_conv_algorithm."""
    algorithm = _workspace["algorithm"]
    return (tuple(kernel_size) in WINOGRAD_MIN_BATCH and tuple(stride) == (1, 1) and
            (algorithm == "winograd" or algorithm == "auto" and batch >= WINOGRAD_MIN_BATCH[tuple(kernel_size)]))


def get_conv_algorithm():
    """"auto", "winograd" or "im2col": see set_conv_algorithm."""
    return _workspace["algorithm"]


def conv_workspace_peak(reset=False, by_role=False):
    """Bytes of the largest convolution pass so far: its columns, GEMM output,
    column gradient and kept columns together (for reports).  ``by_role``:
    the same pass as a dict role -> bytes instead.  ``reset``: start again."""
    with _peak_lock:
        peak, roles = _workspace["peak"], dict(_workspace["peak_roles"])
        if reset:
            _workspace["peak"], _workspace["peak_roles"] = 0, {}
    return roles if by_role else peak


def _note_pass(roles):
    """Record one pass's bytes per role if it is the largest so far."""
    total = sum(roles.values())
    with _peak_lock:
        if total > _workspace["peak"]:
            _workspace["peak"], _workspace["peak_roles"] = total, dict(roles)


_buffers = threading.local()


def _scratch(shapes, dtype, xp):
    """Arrays of the given shapes, carved one after another out of this
    thread's workspace buffer (grown when needed, kept between calls, never
    beyond the budget).  Per thread, so that two towers on two CPU threads
    never share one.  On the GPU, CuPy's memory pool already reuses memory:
    plain allocation."""
    if xp is not np:
        return [xp.empty(shape, dtype) for shape in shapes]
    itemsize = np.dtype(dtype).itemsize
    sizes = [int(np.prod(shape)) * itemsize for shape in shapes]
    starts, need = [], 0
    for size in sizes:
        starts.append(need)
        need += -(-size // 64) * 64  # the next array starts on a 64-byte cache line
    limit = get_conv_workspace(np) + 64 * len(shapes)  # the budget, plus the alignment padding
    buf = getattr(_buffers, "arena", None)
    if need > limit:  # one image needs more than the budget: a buffer for this pass only
        buf = np.empty(need, np.uint8)
    elif buf is None or buf.size < need or buf.size > limit:
        buf = _buffers.arena = np.empty(need, np.uint8)
    return [buf[i:i + size].view(dtype).reshape(shape) for i, size, shape in zip(starts, sizes, shapes)]


def release_workspace():
    """Free this thread's reusable convolution buffer."""
    _buffers.arena = None


def conv_output_size(size, kernel, stride, padding):
    """Output length along one axis: (size + 2*padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _chunk_images(n, per_image_bytes, xp=np):
    """How many images one chunk holds: as few chunks as the workspace budget (for arrays of
    module xp) allows, of equal size (32 images in two chunks of 16, not 26 and 6: a small last
    chunk makes thin GEMMs), at least one image each."""
    most = int(max(1, min(n, get_conv_workspace(xp) // max(per_image_bytes, 1))))
    chunks = -(-n // most)
    return -(-n // chunks) if n else most


# ----------------------------------------------------------------------------
# im2col / col2im
# ----------------------------------------------------------------------------


def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), out=None):
    """Copy every (KH, KW) receptive field of ``x`` into a column.

    x:    (N, C, H, W)
    returns cols: (C*KH*KW, N*OH*OW).  Row index = (c*KH + ky)*KW + kx,
          column index = (n*OH + oy)*OW + ox; value = x_padded[n, c, oy*sh + ky, ox*sw + kx].

    ``out``, if given, is a buffer of that shape to fill (saves an allocation).
    The loops are in ``ops.cpu_kernels`` (NumPy), ``ops.cpu_loops`` (compiled
    C++) and ``cuda.kernels`` (the GPU); ``kernels_for`` picks one.
    """
    return kernels_for(x).im2col(x, kh, kw, stride, padding, out)


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), out=None):
    """The adjoint of ``im2col``: add every column back onto the pixels it
    was copied from.  Where windows overlap, a pixel receives the sum of
    all the columns that saw it; that is exactly the gradient of im2col.

    cols: (C*KH*KW, N*OH*OW) -> returns (N, C, H, W) with x_shape = (N, C, H, W).
    ``out``, if given, is an (N, C, H, W) array to write the result into.
    """
    return kernels_for(cols).col2im(cols, x_shape, kh, kw, stride, padding, out)


# ----------------------------------------------------------------------------
# The fast convolution
# ----------------------------------------------------------------------------


class Conv2d(Function):
    """y = conv(x, weight) + bias through im2col + GEMM, the batch in chunks;
    with ``relu=True``, y = max(conv(x, weight) + bias, 0).

    x: (N, C, H, W); weight: (O, C/G, KH, KW); bias: (O,) or absent;
    y: (N, O, OH, OW).
    Saves (x, weight, the columns or None, y or None).  Backward needs the
    columns for the weight gradient only.  It rebuilds them chunk by chunk
    (memory over time, as Caffe), except when the whole batch's fit the keep
    cap (``set_conv_keep_columns``): then forward keeps them, and backward
    reads them chunk by chunk.  With frozen weights it neither keeps nor
    builds any.

    The output pass.  The GEMM leaves each chunk filter-major, (O, n, OH*OW);
    the layer returns image-major (n, O, OH*OW).  One pass over memory turns
    the one into the other and adds the bias on the way (``conv_output``); a
    ReLU after the convolution is one comparison more in that same pass,
    instead of a pass of its own.  Backward mirrors it: the pass that turns
    the output gradient filter-major again (``conv_grad_rows``) multiplies it
    by the ReLU's mask (y > 0) on the way.  The numbers are those of
    ``F.relu(F.conv2d(...))``; what is saved is two passes over the
    activations (read and write) in forward and two in backward.
    """

    def forward(self, x, weight, *bias, stride=(1, 1), padding=(0, 0), groups=1, relu=False):
        xp = get_array_module(x)
        kernels = kernels_for(x)
        N, C, H, W = x.shape
        O, Cg, KH, KW = weight.shape
        G = groups
        OH = conv_output_size(H, KH, stride[0], padding[0])
        OW = conv_output_size(W, KW, stride[1], padding[1])
        self.geometry = (KH, KW, stride, padding, G, OH, OW)
        self.shapes = (x.shape, weight.shape, x.itemsize)  # for describe()
        self.has_bias, self.relu = bool(bias), relu
        self.winograd = xp is np and uses_winograd((KH, KW), stride, N)
        self.tiles = cpu_kernels.winograd_tiles(OH, OW, KH) if self.winograd else None
        # a Winograd tile's side A (4 for 3x3, 8 for 5x5): A*A entries, one product per entry and group
        self.side = cpu_kernels.winograd_side(KH) if self.winograd else None
        # keep the whole batch's columns for backward if its weight gradient will need them and they
        # fit the keep cap: made once here, outside the workspace, and read chunk by chunk
        keep = is_grad_enabled() and self.needs_input_grad[1] and self._can_keep_columns(N)
        self.kept_columns = keep  # for describe(): backward reuses them, or rebuilds them
        kept = self._columns(x) if keep else None

        y = xp.empty((N, O, OH * OW), dtype=x.dtype)
        if self.winograd:  # E = A*A products per group, one per entry of a tile (cpu_kernels)
            E = self.side ** 2
            with section("Winograd filter transform"):
                u = kernels.winograd_weight(weight)  # (E, O, C/G)
            for n0, n1, v, m in self._chunks(x, {"gemm_output": E * O}, kept):
                # (E*G, O/G, n*TH*TW) = (E*G, O/G, C/G) @ (E*G, C/G, n*TH*TW)
                with section("GEMM"):
                    batched_matmul(u.reshape(E * G, O // G, Cg), v.reshape(E * G, Cg, -1), out=m.reshape(E * G, O // G, -1))
                with section("Winograd output tiles"):  # A^T M A, the bias, the ReLU
                    kernels.winograd_output(m.reshape(E, O, -1), bias[0] if bias else None, relu, self.tiles,
                                            y[n0:n1].reshape(n1 - n0, O, OH, OW))
            self.save_for_backward(x, u, kept, y if relu else None)
            return y.reshape(N, O, OH, OW)

        w_groups = weight.reshape(G, O // G, Cg * KH * KW)  # (G, O/G, C/G*KH*KW)
        for n0, n1, cols, prod in self._chunks(x, {"gemm_output": O}, kept):
            n = n1 - n0
            # (G, O/G, n*OH*OW) = (G, O/G, C/G*KH*KW) @ (G, C/G*KH*KW, n*OH*OW)
            prod = prod.reshape(G, O // G, n * OH * OW)
            with section("GEMM"):
                batched_matmul(w_groups, cols.reshape(G, Cg * KH * KW, -1), out=prod)
            # (O, n, OH*OW) -> (n, O, OH*OW), adding the bias (and the ReLU) in the same pass
            with section("conv output pass (transpose, bias, ReLU)"):
                kernels.conv_output(prod.reshape(O, n, OH * OW), bias[0] if bias else None, relu, y[n0:n1])
        # the ReLU's mask for backward is y > 0: y itself is kept (it is the next layer's input anyway)
        self.save_for_backward(x, weight, kept, y if relu else None)
        return y.reshape(N, O, OH, OW)

    def _layout(self):
        """(rows, positions per image) of the column matrix: (C*KH*KW, OH*OW) for im2col;
        for Winograd, V: (A^2*C, TH*TW), one column per tile."""
        (_, C, _, _), (_, _, KH, KW), _ = self.shapes
        OH, OW = self.geometry[5:]
        if self.winograd:
            return self.side ** 2 * C, self.tiles[0] * self.tiles[1]
        return C * KH * KW, OH * OW

    def _columns(self, x, out=None):
        """The column matrix of images x: im2col's, or Winograd's input tiles V."""
        KH, KW, stride, padding = self.geometry[:4]
        if self.winograd:
            with section("Winograd input tiles"):
                shape = (self.side ** 2, x.shape[1], x.shape[0] * self.tiles[0] * self.tiles[1])
                out = np.empty(shape, x.dtype) if out is None else out.reshape(shape)
                return kernels_for(x).winograd_input(x, padding, self.tiles, out)
        with section("im2col"):
            return im2col(x, KH, KW, stride, padding, out=out)

    def _can_keep_columns(self, N):
        """Whether forward may keep the whole batch's columns: they fit the keep cap."""
        rows, positions = self._layout()
        return rows * N * positions * self.shapes[2] <= _workspace["keep"]

    def _chunks(self, x, roles, kept=None, columns=True):
        """Cut the batch into chunks of images x[n0:n1] whose buffers fit the workspace and
        yield (n0, n1, cols, *scratch) for each:

          cols      (rows, n*positions), the chunk's columns (``_layout``): its slice of
                    ``kept`` (the whole batch's columns, kept from forward), else built into
                    the workspace; None when ``columns`` is False (nothing will read them);
          scratch   one (rows, n*positions) matrix for each role -> rows in ``roles``, in
                    order, for the caller to fill.

        A chunk's column slice of ``kept`` is a view: its rows are N*positions apart, which
        the GEMMs take as their leading dimension."""
        xp = get_array_module(x)
        N = x.shape[0]
        col_rows, positions = self._layout()
        image_bytes = positions * x.itemsize
        build = columns and kept is None  # the chunk's columns go in the workspace
        step = _chunk_images(N, ((col_rows if build else 0) + sum(roles.values())) * image_bytes, xp)
        first = min(step, N)
        held = ({"kept_columns": col_rows * N * image_bytes} if kept is not None else
                {"columns": col_rows * first * image_bytes} if build else {})
        _note_pass({**held, **{role: rows * first * image_bytes for role, rows in roles.items()}})
        for n0 in range(0, N, step):
            n1 = min(N, n0 + step)
            shapes = [(rows, (n1 - n0) * positions) for rows in roles.values()]
            if not build:
                cols = None if kept is None else kept.reshape(col_rows, -1)[:, n0 * positions:n1 * positions]
                yield (n0, n1, cols, *_scratch(shapes, x.dtype, xp))
                continue
            cols, *scratch = _scratch([(col_rows, (n1 - n0) * positions)] + shapes, x.dtype, xp)
            yield (n0, n1, self._columns(x[n0:n1], out=cols), *scratch)

    def describe(self):
        """The im2col and GEMM shapes of the last forward (whole batch), for
        tinynet.trace and tinynet.summary.  With K = C/G*KH*KW (one group's
        rows of the column matrix) and P = N*OH*OW (one column per output
        position of every image):

            cols          (C*KH*KW, P)        the im2col matrix
            weight_matrix (O, C/G*KH*KW)      the filters, one per row
            gemm          (G, O/G, K, P)      G products (O/G x K) @ (K x P)
            macs          G * O/G * K * P     multiply-adds (bias adds not counted)
            col_bytes     bytes of the whole column matrix (the forward builds it
                          in chunks of images, see set_conv_workspace)
            columns_kept  True if forward kept the columns for backward (they fit
                          set_conv_keep_columns); False if backward rebuilds them,
                          or needs none (frozen weights)
            relu          True if the ReLU after the convolution ran in its output pass
            algorithm     "winograd" (F(2x2, 3x3) or F(4x4, 5x5), see set_conv_algorithm) or
                          "im2col"; with "winograd" the CPU ran E = A^2 GEMMs per group (A the
                          tile's side, 4 or 8) on V (E*C, tiles) instead
                          of the im2col product above (cols, gemm, col_bytes describe that one;
                          columns_kept says whether V was kept), and these keys say what ran:
            tiles         (TH, TW) output blocks per image
            side          A, the side of an input tile: 4 (3x3) or 8 (5x5)
            block         m, the side of an output block: 2 (3x3) or 4 (5x5)
            winograd_gemm (E*G, O/G, C/G, N*TH*TW): U @ V, one product per tile entry and group
            winograd_macs their multiply-adds
            tile_bytes    bytes of V
        """
        (N, C, H, W), (O, Cg, KH, KW), itemsize = self.shapes
        _, _, stride, padding, G, OH, OW = self.geometry
        K, P = Cg * KH * KW, N * OH * OW
        return {
            "kind": "conv", "input": (N, C, H, W), "kernel": (KH, KW), "stride": stride,
            "padding": padding, "groups": G, "output": (N, O, OH, OW),
            "cols": (C * KH * KW, P), "weight_matrix": (O, K), "gemm": (G, O // G, K, P),
            "macs": G * (O // G) * K * P, "col_bytes": C * KH * KW * P * itemsize,
            "needs_input_grad": self.needs_input_grad,
            "columns_kept": getattr(self, "kept_columns", False),
            "relu": getattr(self, "relu", False),
            "algorithm": "winograd" if getattr(self, "winograd", False) else "im2col",
            **self._describe_winograd(),
        }

    def _describe_winograd(self):
        """For a Winograd forward: tiles (TH, TW) per image, the sides of a tile and of its output block,
        the E = A^2 products per group as winograd_gemm (E*G, O/G, C/G, N*TH*TW), their
        multiply-adds, and V's bytes."""
        if not getattr(self, "winograd", False):
            return {}
        (N, C, _, _), (O, Cg, KH, _), itemsize = self.shapes
        G, (th, tw) = self.geometry[4], self.tiles
        T, E = N * th * tw, self.side ** 2
        return {"tiles": (th, tw), "side": self.side, "block": cpu_kernels.winograd_block(KH),
                "winograd_gemm": (E * G, O // G, Cg, T), "winograd_macs": E * O * Cg * T,
                "tile_bytes": E * C * T * itemsize}

    def backward(self, gy):
        if self.winograd:
            return self._winograd_backward(gy)
        xp = get_array_module(gy)
        kernels = kernels_for(gy)
        x, weight, kept, y = self.saved
        KH, KW, stride, padding, G, OH, OW = self.geometry
        N, C, H, W = x.shape
        O, Cg = weight.shape[:2]
        need_x, need_w = self.needs_input_grad[0], self.needs_input_grad[1]
        need_b = self.has_bias and self.needs_input_grad[2]
        gy = gy.reshape(N, O, OH * OW)
        if y is not None:
            y = y.reshape(N, O, OH * OW)

        gx = xp.empty_like(x) if need_x else None
        gw = gb = None
        if need_w:  # written by the first chunk's GEMM; an empty batch has none: zeros
            gw = (xp.empty if N else xp.zeros)((G, O // G, Cg * KH * KW), dtype=weight.dtype)
        if need_b:  # the sum of every chunk's gradient rows
            gb = xp.zeros(O, dtype=weight.dtype)
        w_groups_t = weight.reshape(G, O // G, Cg * KH * KW).transpose(0, 2, 1)
        roles = {"gemm_output": O, "column_grad": C * KH * KW} if need_x else {"gemm_output": O}
        for n0, n1, cols, g_rows, *gcols in self._chunks(x, roles, kept, columns=need_w):
            n = n1 - n0
            # gradient rows per filter: (n, O, OH*OW) -> (O, n, OH*OW), times the ReLU's mask
            with section("conv output pass (transpose, bias, ReLU)"):
                kernels.conv_grad_rows(gy[n0:n1], None if y is None else y[n0:n1], g_rows.reshape(O, n, OH * OW))
                if need_b:  # each filter's bias gradient: the sum of its row
                    gb += g_rows.sum(axis=1)
            g_rows = g_rows.reshape(G, O // G, n * OH * OW)
            if need_w:
                # (G, O/G, C/G*KH*KW) += (G, O/G, n*OH*OW) @ (G, n*OH*OW, C/G*KH*KW)
                cols_t = cols.reshape(G, Cg * KH * KW, -1).transpose(0, 2, 1)
                with section("GEMM"):
                    if n0 == 0:  # the first chunk writes gw, later ones add to it
                        batched_matmul(g_rows, cols_t, out=gw)
                    else:
                        gw += batched_matmul(g_rows, cols_t)
            if need_x:
                # (G, C/G*KH*KW, n*OH*OW) = (G, C/G*KH*KW, O/G) @ (G, O/G, n*OH*OW)
                gcols = gcols[0].reshape(G, Cg * KH * KW, n * OH * OW)
                with section("GEMM"):
                    batched_matmul(w_groups_t, g_rows, out=gcols)
                with section("col2im"):
                    col2im(gcols.reshape(C * KH * KW, n * OH * OW), (n, C, H, W), KH, KW, stride,
                           padding, out=gx[n0:n1])
        grads = [gx, gw.reshape(weight.shape) if need_w else None]
        if self.has_bias:
            grads.append(gb)
        return tuple(grads)

    def _winograd_backward(self, gy):
        """Backward of the Winograd forward, chunk by chunk (see cpu_kernels): Z = A gy A^T
        (times the ReLU's mask), U's gradient Z @ V^T, V's U^T @ Z and from it the input's."""
        x, u, kept, y = self.saved
        _, _, _, padding, G, OH, OW = self.geometry
        N, C = x.shape[:2]
        E, O, Cg = u.shape  # E = A*A entries of a tile
        block_sum = self.side + 1  # entry (1, 1) of a tile's Z: the sum of its block's gradients
        kernels = kernels_for(gy)
        need_x, need_w = self.needs_input_grad[0], self.needs_input_grad[1]
        gx = np.empty_like(x) if need_x else None
        gb = np.zeros(O, dtype=u.dtype) if self.has_bias and self.needs_input_grad[2] else None
        gy = gy.reshape(N, O, OH, OW)
        y = None if y is None else y.reshape(N, O, OH, OW)
        gu = (np.empty if N else np.zeros)((E * G, O // G, Cg), dtype=u.dtype) if need_w else None
        roles = {"gemm_output": E * O, "column_grad": E * C} if need_x else {"gemm_output": E * O}
        for n0, n1, v, z, *gv in self._chunks(x, roles, kept, columns=need_w):
            with section("Winograd gradient tiles"):  # A gy A^T, times the ReLU's mask
                kernels.winograd_grad_output(gy[n0:n1], None if y is None else y[n0:n1], self.tiles,
                                             z.reshape(E, O, -1))
                if gb is not None:
                    gb += z.reshape(E, O, -1)[block_sum].sum(axis=1)
            z = z.reshape(E * G, O // G, -1)
            if need_w:  # (E*G, O/G, C/G) += (E*G, O/G, n*TH*TW) @ (E*G, n*TH*TW, C/G)
                v_t = v.reshape(E * G, Cg, -1).transpose(0, 2, 1)
                with section("GEMM"):
                    if n0 == 0:
                        batched_matmul(z, v_t, out=gu)
                    else:
                        gu += batched_matmul(z, v_t)
            if need_x:  # (E*G, C/G, n*TH*TW) = (E*G, C/G, O/G) @ (E*G, O/G, n*TH*TW)
                gv = gv[0].reshape(E * G, Cg, -1)
                with section("GEMM"):
                    batched_matmul(u.reshape(E * G, O // G, Cg).transpose(0, 2, 1), z, out=gv)
                with section("Winograd input gradient"):  # B gV B^T, added back onto the pixels
                    kernels.winograd_input_grad(gv.reshape(E, C, -1), padding, self.tiles, gx[n0:n1])
        gw = None
        if need_w:
            with section("Winograd filter transform"):  # its backward twin, G^T gU G
                gw = kernels.winograd_weight_grad(gu.reshape(E, O, Cg))
        grads = [gx, gw]
        if self.has_bias:
            grads.append(gb)
        return tuple(grads)


# ----------------------------------------------------------------------------
# The naive twin: loops over output positions, the definition read literally
# ----------------------------------------------------------------------------


def conv2d_naive(x, weight, bias=None, stride=(1, 1), padding=(0, 0), groups=1):
    """Reference convolution by its definition (slow; for tests and reading).

    y[n, o, i, j] = bias[o] + sum over c in o's group, ky, kx of
                    weight[o, c, ky, kx] * x_padded[n, g*C/G + c, i*sh + ky, j*sw + kx]
    x: (N, C, H, W) ndarray; weight: (O, C/G, KH, KW); returns (N, O, OH, OW).
    """
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH, OW = conv_output_size(H, KH, sh, ph), conv_output_size(W, KW, sw, pw)
    y = np.zeros((N, O, OH, OW), dtype=x.dtype)
    Og = O // groups
    for g in range(groups):
        xg = xp_[:, g * Cg:(g + 1) * Cg]
        wg = weight[g * Og:(g + 1) * Og]
        for i in range(OH):
            for j in range(OW):
                patch = xg[:, :, i * sh:i * sh + KH, j * sw:j * sw + KW]  # (N, C/G, KH, KW)
                y[:, g * Og:(g + 1) * Og, i, j] = np.einsum("nckl,ockl->no", patch, wg)
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv2d_backward_naive(x, weight, gy, stride=(1, 1), padding=(0, 0), groups=1):
    """Reference gradients (gx, gw, gb) of conv2d_naive, by the same loops:
    every output position sends its gradient back to the patch and the
    filter that made it."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gx_pad = np.zeros_like(xp_)
    gw = np.zeros_like(weight)
    OH, OW = gy.shape[2:]
    Og = O // groups
    for g in range(groups):
        cs, os_ = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for i in range(OH):
            for j in range(OW):
                rows, cols = slice(i * sh, i * sh + KH), slice(j * sw, j * sw + KW)
                g_ij = gy[:, os_, i, j]  # (N, O/G)
                gw[os_] += np.einsum("no,nckl->ockl", g_ij, xp_[:, cs, rows, cols])
                gx_pad[:, cs, rows, cols] += np.einsum("no,ockl->nckl", g_ij, weight[os_])
    gx = gx_pad[:, :, ph:ph + H, pw:pw + W]
    return gx, gw, gy.sum(axis=(0, 2, 3))
