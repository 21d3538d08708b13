"""Whole-network AlexNet benchmark: training steps and inference against batch size.

For each batch size (1, 8, 32, 128): a training step (forward, loss, backward,
SGD) and an inference pass (forward only, no graph), float32, 1000 classes:
images/s, time per step (median, min, max over repetitions after warm-up
steps: --repeat of them, or more until they add up to MIN_TIMED_SECONDS, so
that a 20 ms pass is timed about 50 times) and peak memory.  On the CPU: the process's peak RSS.  On a GPU, like
with like: the peak bytes in use by arrays (CuPy pool's used bytes, PyTorch's
max_memory_allocated) and the peak the allocator holds from the device (CuPy
pool's total bytes, PyTorch's max_memory_reserved).  Every (engine, batch,
mode) runs in a fresh subprocess so that each peak-memory number is its own,
in --rounds rounds (default 3), tinynet and PyTorch in turn: a step time is
the median of the rounds' medians, and tinynet / PyTorch the median of the
rounds' ratios, with their range.

Beside tinynet, where importable, the paper's AlexNet in PyTorch (groups 2,
LRN with alpha = 5e-4 so that its alpha/size convention equals the paper's
1e-4), interleaved with ours in the same run: PyTorch is a yardstick, never a
dependency; without it the column says so.  One difference, of no cost: its LRN
windows run across all of a layer's channels, where the paper's (and tinynet's)
stay within each tower's half, so the two channels beside the middle see other
neighbours; the same arithmetic per element.

After its timed steps, each tinynet training worker profiles PROFILED_STEPS
(3) more steps (tn.profile()): the table under the results gives the median
over them of the ms per kind of work (GEMM,
im2col, col2im, the convolutions' output passes (layout, bias and their ReLU),
the Winograd transforms of the 3x3 and 5x5 convolutions (input tiles, output tiles with
bias and ReLU, their backward twins),
LRN, max-pool, the other ReLUs, SGD, and the rest: Python glue and
allocation), so the gap to the floor is visible.  On the CPU the fully connected
layers' weights are updated in backward, as the training program does it (at
batch 1-32: tinynet/optim.py; TINYNET_BENCH_UPDATE_IN_BACKWARD=0 turns it off):
that loop's time is split in the table: the part its products take (the products
alone against the fused loop, in turn on arrays of their own, measured by the worker)
as GEMM, the rest as SGD.  On the CPU it also times, last,
the SGD update alone against a plain pass over the same bytes (update_speed):
the table under the breakdown.

The floor: the GEMMs of one training step alone (the same matrix products the
engine does, operands ready), and the engine's time as a ratio to it; for
inference, the forward pass's GEMMs.  The
worker times them in turn with whole steps, repetition after
repetition (common.interleaved), after its timed steps and its peak memory
are read, in every round: the ratio is the median of all rounds' repetitions
of step / floor, with its range, so that the shared machine's drift hits both
sides alike, and both sides are medians.

    python benchmarks/alexnet.py                  # CPU, batches 1 8 32 128
    python benchmarks/alexnet.py --quick          # batches 1 and 8, 2 repetitions, one round (~1 minute)
    python benchmarks/alexnet.py --device cuda    # one GPU (CuPy); add --towers for two towers
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tinynet  # noqa: E402  first: its import sets BLAS's idle threads to sleep (the workers inherit it)
import numpy as np  # noqa: E402
from benchmarks.common import RUN_STARTED, cpu_times, enough, interleaved, machine, ms, save, stats, steal_share  # noqa: E402
from benchmarks.layers import CONVS, FCS, conv_products  # noqa: E402  the layer shapes and their products, for both scripts
from tinynet.ops import linear  # noqa: E402


# ----------------------------------------------------------------------------
# Workers: one (engine, batch, mode) per process
# ----------------------------------------------------------------------------

# What a tinynet CPU worker measures after its timed steps: (training) PROFILED_STEPS profiled
# steps (one alone moved a kind by up to a factor of 2 between runs), and the
# GEMM floor in turn with whole steps.  The first round of a (batch, mode) does both; later
# rounds time the floor again (a ratio that moves by 0.15 from one minute to the next needs
# more than one round's repetitions) but not the profile.
EXTRAS = ("profile", "floor")
PROFILED_STEPS = 3
# Every worker times --repeat calls, or more until its timings add up to MIN_TIMED_SECONDS
# (common.enough): a batch-1 inference pass is timed about 50 times, a batch-128 step 5.
MIN_TIMED_SECONDS = 1.0
UPDATE_IN_BACKWARD = "TINYNET_BENCH_UPDATE_IN_BACKWARD"  # "0": the fc layers' update in step(), not backward

def status_bytes(field):
    """A memory field of this process's /proc/self/status in bytes: "VmRSS" (resident now) or
    "VmHWM" (the peak).  The peak is not getrusage's ru_maxrss: that one keeps the parent's
    peak across fork + exec, so every worker would report at least the driver's memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"status_bytes: no {field} in /proc/self/status")


def worker_tinynet(batch, mode, repeat, device, towers, extras=EXTRAS):
    import tinynet as tn
    import tinynet.functional as F
    from tinynet.models import AlexNet

    tn.manual_seed(0)
    tn.reuse_freed_memory()  # as the training program does (see its docstring); PyTorch's worker too
    if device == "cpu":  # the engine's own memory: after a first tiny convolution has loaded its loops
        F.conv2d(tn.tensor(np.ones((1, 1, 4, 4), np.float32)), tn.tensor(np.ones((1, 1, 3, 3), np.float32)))
        base_bytes = status_bytes("VmRSS")
    kwargs = dict(bias_init="caffe")
    if towers:
        kwargs["towers"] = tn.backend.tower_devices(device)
    model = AlexNet(1000, **kwargs)
    xp = np
    if device != "cpu":
        import cupy as cp

        xp = cp
        if not towers:
            model.to(device)
    x = tn.tensor(xp.asarray(np.random.default_rng(0).standard_normal((batch, 3, 227, 227)).astype(np.float32)))
    y = xp.asarray(np.arange(batch) % 1000)
    # as the training program: on the CPU the fully connected layers' weights are updated in
    # backward (tinynet/optim.py); UPDATE_IN_BACKWARD=0 in the environment turns it off, to compare
    in_backward = device == "cpu" and os.environ.get(UPDATE_IN_BACKWARD, "1") != "0"
    opt = tn.optim.SGD(model.parameters(), lr=0.001, update_in_backward=in_backward)

    def train_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        with tn.no_grad():
            model(x)

    devices = None
    if device != "cpu":  # the GPUs holding the model (two with towers on 0,1)
        devices = sorted({p.data.device.id for p in model.parameters()})
    sync = synchronizer(devices)
    step = train_step if mode == "train" else infer
    result = timed(step, repeat, devices, model.eval if mode != "train" else None)
    if device == "cpu":  # the loops that ran (a library that failed to load falls back to NumPy's)
        result["base_bytes"] = base_bytes
        result["cpu_loops"] = "compiled" if tn.ops.cpu_loops.cpu_module() is tn.ops.cpu_loops else "numpy"
        result["update_in_backward"] = "in backward" if in_backward else "in step()"
    if mode == "train" and "profile" in extras:
        profiles = []
        for _ in range(PROFILED_STEPS):  # more steps, profiled: where their time goes
            with tn.profile(sync=sync) as prof:  # on a GPU each op waits for its kernels
                train_step()
            profiles.append(prof.by_kind())
        kinds = dict.fromkeys(kind for p in profiles for kind in p)  # every kind, in first-seen order
        result["profile_ms"] = {kind: statistics.median(p.get(kind, 0.0) for p in profiles) for kind in kinds}
        if in_backward and batch in linear.OUTER_SUM_BATCH:  # the fused update's products' share (profile_groups)
            result["fused_products_share"] = fused_products_share(batch, repeat)
    if "floor" in extras:
        # the floor, in turn with whole steps (its operands come after the peak was read)
        products = floor_products(batch, mode, device)
        waited = (lambda fn: fn) if sync is None else (lambda fn: lambda: (fn(), sync()))
        steps, floor, ratio = interleaved(waited(step), waited(lambda: [product() for product in products]),
                                          repeat, MIN_TIMED_SECONDS)
        result["floor"] = dict(steps=steps, floor=floor, ratio=ratio)
    if mode == "train" and "profile" in extras and device == "cpu":
        # last: it steps the optimiser on the same gradients again and again, which moves the
        # weights far from a trained or an initial net's, so nothing is timed after it
        result["update_speed"] = update_speed(opt, repeat)
    return result


def update_speed(opt, repeat):
    """The SGD update alone, in turn with a plain pass over the same memory (common.interleaved),
    on the profiled steps' gradients.

    The update is one pass over memory that reads w, g and v and writes w and v back: 20 bytes
    a float32 parameter, 1.22 GB for AlexNet, and a handful of arithmetic per parameter.  The
    reference: a pass that multiplies every momentum buffer by 1 in place (reads and writes
    each value, changes none), on the threads the update runs on, its time scaled by 5 / 2
    (the update moves five arrays of that size, the pass two): the update's bytes at the
    speed this machine streams memory in a plain pass, in the same minute.  It is a yardstick,
    not a bound: the memory reads faster than it writes back, and the update reads three
    arrays for two written, so it may take a little less than the reference.  An update near
    it is bound by the memory, not by its code; its share of a step then falls only as the
    step grows."""
    from tinynet.ops.cpu_kernels import parallel_runs

    flats = [v.reshape(-1) for v in opt.velocity]  # C-contiguous: views
    for p in opt.params:  # updated in backward, so without a .grad: zeros, as a step() would read them
        if p.grad is None:
            p.grad = np.zeros_like(p.data)

    def stream():
        for v in flats:
            parallel_runs(lambda i0, i1, v=v: np.multiply(v[i0:i1], 1.0, out=v[i0:i1]), v.size)

    update, streamed, _ = interleaved(opt.step, stream, repeat, MIN_TIMED_SECONDS)
    moved = 5 * sum(v.nbytes for v in flats)  # bytes the update moves: five arrays of the parameters' size
    reference = [t * 5 / 2 for t in streamed["values"]]  # the pass moved two
    return dict(update=update, reference=stats(reference),
                ratio=stats([u / r for u, r in zip(update["values"], reference)]),
                bytes=moved, gb_per_s=moved / update["median"] / 1e9)


def fused_products_share(batch, repeat):
    """What part of the fully connected layers' fused weight gradient + SGD update is their
    weight-gradient products: the products alone (linear.weight_grad_gemm, the route the engine
    takes at this batch) against the fused loop (outer_sum_sgd, the optimiser's call), both over
    all three layers' shapes on arrays of their own, in turn (common.interleaved).  Returns the
    median of the repetitions' ratios products / fused, with its range and both medians in ms:
    a ratio measured in turn, not one time set beside another taken in another minute."""
    from tinynet.ops import kernels_for

    rng = np.random.default_rng(0)
    layers = []
    for _, fin, fout in FCS:
        gy, x = (rng.standard_normal((batch, n)).astype(np.float32) for n in (fout, fin))
        w = (rng.standard_normal((fout, fin)) * 0.01).astype(np.float32)
        layers.append((gy, x, w, np.zeros_like(w)))

    def products():
        for gy, x, _, _ in layers:
            linear.weight_grad_gemm(gy, x)

    def fused():  # a tiny rate: the scratch weights barely move, however often they are updated
        for gy, x, w, v in layers:
            kernels_for(w).outer_sum_sgd(gy, x, w, v, 1e-9, 0.9, 5e-4)

    alone, together, ratio = interleaved(products, fused, repeat, MIN_TIMED_SECONDS)
    return {"share": ratio["median"], "min": ratio["min"], "max": ratio["max"],
            "products_ms": alone["median"] * 1e3, "fused_ms": together["median"] * 1e3, "pairs": len(ratio["values"])}


def worker_torch(batch, mode, repeat, device):
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        # the same process setting as tinynet's worker: glibc keeps freed memory for reuse.  PyTorch's
        # CPU tensors come from the same malloc, and without it its batch-8 step took about 2.4 times
        # as long here (fresh pages, page faults), so the comparison would measure the allocator
        tinynet.reuse_freed_memory()
        torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))  # loads its kernels
        base_bytes = status_bytes("VmRSS")
    else:
        torch.backends.cudnn.benchmark = True
    lrn = lambda: nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # noqa: E731  = paper alpha 1e-4
    model = nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))
    dev = torch.device("cpu" if device == "cpu" else "cuda")
    model.to(dev)
    x = torch.randn(batch, 3, 227, 227, device=dev)
    y = torch.arange(batch, device=dev) % 1000
    # PyTorch's fastest SGD where it has one (fused: one kernel over each parameter, as tinynet's update)
    try:
        opt, sgd = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        opt, sgd = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4), "default (foreach)"
    loss_fn = nn.CrossEntropyLoss()

    def train_step():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    sync = (lambda: torch.cuda.synchronize()) if device != "cpu" else (lambda: None)
    if mode != "train":
        model.eval()
    times = []
    for _ in range(1 if device == "cpu" else GPU_WARMUP):
        infer() if mode != "train" else train_step()
    sync()
    if device != "cpu":  # peaks of the timed steps only (cuDNN's autotuning tries are warm-up)
        torch.cuda.reset_peak_memory_stats()
    while not enough(times, repeat, MIN_TIMED_SECONDS):
        sync()
        t0 = time.perf_counter()
        train_step() if mode == "train" else infer()
        sync()
        times.append(time.perf_counter() - t0)
    if device == "cpu":
        return dict(times=times, peak_bytes=status_bytes("VmHWM"), base_bytes=base_bytes, version=torch.__version__, sgd=sgd)
    return dict(times=times, peak_bytes=torch.cuda.max_memory_allocated(),
                peak_reserved_bytes=torch.cuda.max_memory_reserved(), version=torch.__version__, sgd=sgd)


GPU_WARMUP = 3  # untimed steps on a GPU: kernel compilation, cuBLAS/cuDNN set-up, the pool's first cudaMallocs


def synchronizer(devices):
    """None on the CPU (``devices`` None); else a function that waits until every stream of
    every GPU in ``devices`` has done its queued work."""
    if devices is None:
        return None
    import cupy as cp

    def synchronize():
        for d in devices:
            cp.cuda.Device(d).synchronize()

    return synchronize


def timed(fn, repeat, devices, prepare=None):
    """Times of ``repeat`` calls of fn after warm-up, and peak memory.  ``devices``: None on
    the CPU, else the ids of the GPUs the model is on."""
    if prepare is not None:
        prepare()
    if devices is None:
        fn()  # warm-up
        times = []
        while not enough(times, repeat, MIN_TIMED_SECONDS):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return dict(times=times, peak_bytes=status_bytes("VmHWM"))
    synchronize = synchronizer(devices)
    # Warm-up steps, and the pool keeps what they allocated: a timed step that had to
    # cudaMalloc its buffers again would measure the allocator, not the network.
    for _ in range(GPU_WARMUP):
        fn()
    synchronize()
    times = []
    while not enough(times, repeat, MIN_TIMED_SECONDS):  # as PyTorch's worker: synchronize, clock, step, synchronize, clock
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t0)
    return dict(times=times, peak_bytes=peak_used_bytes_gpu(fn, devices, synchronize),
                peak_reserved_bytes=pool_bytes(devices, lambda pool: pool.total_bytes()))


def pool_bytes(devices, what):
    """Sum of what(pool) over the given GPUs (CuPy's pool answers for the current device)."""
    import cupy as cp

    pool, total = cp.get_default_memory_pool(), 0
    for d in devices:
        with cp.cuda.Device(d):
            total += int(what(pool))
    return total


def peak_used_bytes_gpu(fn, devices, synchronize):
    """The most bytes in use by arrays during one more step, summed over devices: the twin of
    PyTorch's max_memory_allocated.  CuPy keeps no peak, so for this untimed step every
    allocation goes through a wrapper that notes the pool's used bytes on its device.  The
    pool is never freed during the run, so its total bytes are the peak reserved."""
    import cupy as cp

    pool = cp.get_default_memory_pool()
    peaks = {}

    def malloc(nbytes):
        memory = pool.malloc(nbytes)
        device = cp.cuda.Device().id
        peaks[device] = max(peaks.get(device, 0), pool.used_bytes())
        return memory

    start = pool_bytes(devices, lambda p: p.used_bytes())  # parameters, inputs, optimiser state
    previous = cp.cuda.get_allocator()
    cp.cuda.set_allocator(malloc)  # process-wide (using_allocator would cover this thread only)
    try:
        fn()
        synchronize()
    finally:
        cp.cuda.set_allocator(previous)
    return max(start, sum(peaks.values()))


# ----------------------------------------------------------------------------
# The floor: one step's GEMMs alone (training or inference)
# ----------------------------------------------------------------------------

def floor_products(batch, mode="train", device="cpu"):
    """The GEMMs of one training step (forward, weight gradient, input gradient; conv1 has no
    input gradient), or for mode "infer" of one forward pass, each a callable on ready
    operands, whole batch at once.  They are the products the engine does: a 3x3 or 5x5,
    stride-1 convolution's A^2 per group of Winograd's F(2x2, 3x3) or F(4x4, 5x5) where the engine takes it
    (ops/conv.py, set_conv_algorithm), run as the engine runs them (cpu_kernels.batched_matmul:
    a convolution's batch of products shared between the threads).  At batch 1 the fully connected layers' products only
    stream their weights (234 MB) from memory: their part of the floor is the memory's speed.

    On a GPU (``device`` "cuda") the operands are put there first; the engine convolves by
    im2col there, and the same calls are each one ``cupy.matmul`` (cuBLAS)."""
    from tinynet.ops.conv import uses_winograd
    from tinynet.ops.cpu_kernels import batched_matmul

    to_device = lambda a: a  # noqa: E731
    if device != "cpu":
        import cupy as cp

        def to_device(a):  # a transposed view stays a transposed view (cuBLAS takes either)
            return cp.asarray(a) if a.flags.c_contiguous else cp.asarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)

    rng = np.random.default_rng(0)
    products = []
    for _, (c, h, _), o, k, s, p, g in CONVS:
        winograd = device == "cpu" and uses_winograd((k, k), (s, s), batch)
        pairs = conv_products(c, h, o, k, s, p, g, batch, rng, winograd)
        products += [(to_device(a), to_device(b)) for a, b in (pairs if mode == "train" else pairs[:1])]
    products = [lambda a=a, b=b: batched_matmul(a, b) for a, b in products]  # as conv.py runs them
    for _, fin, fout in FCS:
        x = to_device(rng.standard_normal((batch, fin)).astype(np.float32))
        w = to_device(rng.standard_normal((fout, fin)).astype(np.float32))
        gy = to_device(rng.standard_normal((batch, fout)).astype(np.float32))
        # the routes the engine takes (for a small batch, blocks of weight rows; see ops/linear.py)
        products.append(lambda x=x, w=w: linear.forward_gemm(x, w))
        if mode == "train":
            products += [lambda gy=gy, x=x: linear.weight_grad_gemm(gy, x), lambda gy=gy, w=w: gy @ w]
    return products


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------

def run_worker(engine, batch, mode, repeat, device, towers, env=None, extras=EXTRAS):
    """One (engine, batch, mode) in a fresh process; ``env``: extra environment variables;
    ``extras``: what a tinynet CPU training worker measures after its timed steps (EXTRAS)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--batch", str(batch),
           "--mode", mode, "--repeat", str(repeat), "--device", device, "--extras", ",".join(extras) or "none"] + (
        ["--towers"] if towers else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                         env=None if env is None else {**os.environ, **env})
    if out.returncode != 0:
        return dict(error=(out.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpu_info():
    """The current GPU, its driver and CUDA runtime, and CuPy's version, in one line."""
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    version = lambda v: f"{v // 1000}.{v % 1000 // 10}"  # noqa: E731  12040 -> 12.4
    return (f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, {props['multiProcessorCount']} SMs; "
            f"driver CUDA {version(cp.cuda.runtime.driverGetVersion())}, runtime "
            f"{version(cp.cuda.runtime.runtimeGetVersion())}; CuPy {cp.__version__}")


def torch_available():
    """Whether PyTorch can be imported, without importing it here (the workers do)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def summarise(result, batch):
    """One worker's result: its median step (and min, max), images/s, peak memory."""
    if "error" in result:
        return result
    t = sorted(result["times"])
    med = statistics.median(t)
    out = dict(median=med, min=t[0], max=t[-1], images_per_s=batch / med,
               peak_bytes=result["peak_bytes"], peak_reserved_bytes=result.get("peak_reserved_bytes"))
    for key in ("profile_ms", "fused_products_share", "update_speed", "floor", "version", "cpu_loops", "sgd",
                "base_bytes", "update_in_backward"):
        if key in result:
            out[key] = result[key]
    return out


def ran(rows, engine, key):
    """What the workers of `engine` reported for `key` (PyTorch's version, tinynet's loops), as
    one string: every value met, in order ("?" where a worker said nothing)."""
    values = dict.fromkeys(row[engine].get(key, "?") for row in rows if engine in row and "error" not in row[engine])
    return ", ".join(values) or "?"


def combine(rounds, batch):
    """One engine's rounds: the median of the rounds' median steps (min and max over every
    step), the highest peak, the first round's profile, the floor over every round's
    repetitions, and each round's median."""
    failed = [r for r in rounds if "error" in r]
    if failed:
        return failed[0]
    med = statistics.median(r["median"] for r in rounds)
    out = dict(median=med, min=min(r["min"] for r in rounds), max=max(r["max"] for r in rounds),
               images_per_s=batch / med, peak_bytes=max(r["peak_bytes"] for r in rounds),
               peak_reserved_bytes=rounds[0]["peak_reserved_bytes"] and max(r["peak_reserved_bytes"] for r in rounds),
               round_medians=[r["median"] for r in rounds])
    if all("base_bytes" in r for r in rounds):  # the peak above the process's memory before the model
        out["peak_above_base_bytes"] = max(r["peak_bytes"] - r["base_bytes"] for r in rounds)
    out["round_steal"] = [r.get("steal") for r in rounds]  # the hypervisor's share of each round's worker
    for key in ("version", "cpu_loops", "sgd", "update_in_backward"):  # what ran: PyTorch's version and SGD; tinynet's
        if key in rounds[0]:                                         # CPU loops and where its fc layers update
            out[key] = rounds[0][key]
    for key in ("profile_ms", "fused_products_share", "update_speed"):  # the first round's
        if key in rounds[0]:
            out[key] = rounds[0][key]
    floors = [r["floor"] for r in rounds if "floor" in r]
    if floors:  # every round's repetitions together
        out["floor"] = {part: stats([v for f in floors for v in f[part]["values"]])
                        for part in ("steps", "floor", "ratio")}
        out["floor"]["rounds"] = len(floors)
        out["floor"]["round_ratios"] = [f["ratio"]["median"] for f in floors]
    return out


# The profile's kinds, grouped into the columns of the breakdown table: ops by name,
# a convolution's and a linear layer's own sections by theirs.
PROFILE_GROUPS = [
    ("GEMM", ("GEMM",)), ("im2col", ("im2col",)), ("col2im", ("col2im",)),
    ("conv output pass", ("conv output pass",)), ("Winograd transforms", ("Winograd",)),
    ("LRN", ("LocalResponseNorm",)),
    ("max-pool", ("MaxPool2d",)), ("ReLU", ("ReLU",)), ("dropout", ("Dropout",)),
    ("loss", ("CrossEntropy",)), ("SGD update", ("SGD update",)),
]
FUSED = "weight gradient + SGD update"  # the fc layers' update in backward (tinynet/optim.py)


def profile_groups(profile_ms, fused_products_share=None):
    """ms per group of kinds (PROFILE_GROUPS), the rest as 'other (glue, allocation)'.  The fc
    layers' fused weight gradient + SGD update is split: the part that is their products
    (``fused_products_share``, the ratio products / fused loop the worker measured in turn)
    goes to GEMM, the rest to the SGD update, so that the SGD's share counts every millisecond
    the fusion spends beyond the floor's GEMMs.  Without the ratio, all of it goes to the SGD
    update."""
    groups = {name: 0.0 for name, _ in PROFILE_GROUPS}
    groups["other (glue, allocation)"] = 0.0
    for kind, value in profile_ms.items():
        if kind.startswith(FUSED):
            gemm = 0.0 if fused_products_share is None else value * min(1.0, fused_products_share["share"])
            groups["GEMM"] += gemm
            groups["SGD update"] += value - gemm
            continue
        for name, prefixes in PROFILE_GROUPS:
            if kind.startswith(prefixes):
                groups[name] += value
                break
        else:
            groups["other (glue, allocation)"] += value
    return groups


def steal_lines(rows, whole):
    """Markdown: how loaded the shared machine was, as steal (common.cpu_times): over the whole
    run, and per row the highest of its workers' (both engines, every round).  A row whose
    workers lost a tenth or more of the cores' time is measured on a busy machine, and
    said so."""
    if whole is None:
        return []
    cells = []
    for row in rows:
        shares = [s for engine in ("tinynet", "torch") if engine in row for s in row[engine].get("round_steal", [])
                  if s is not None]
        if shares:
            cells.append(f"batch {row['batch']} {row['mode']} {max(shares):.0%}" + (" (busy)" if max(shares) >= 0.1 else ""))
    return ["", f"Steal (the share of the cores' time the hypervisor gave other guests, /proc/stat): {whole:.0%} over "
            f"the run; the highest of each row's workers: " + ("; ".join(cells) or "-")]


def profile_table(rows, device="cpu"):
    """Markdown: profiled training steps per batch, ms per group (each kind's median over the
    profiled steps) and share of their total."""
    rows = [r for r in rows if r["mode"] == "train" and "profile_ms" in r.get("tinynet", {})]
    if not rows:
        return []
    names = list(profile_groups({}))
    lines = ["", f"Where a training step's time goes (tn.profile(), {PROFILED_STEPS} extra steps after the timed "
             "ones; each kind's median in ms, and its share of their total. Where the fully connected layers' "
             "weights are updated in backward, that fused loop's time is split: the part its products take, "
             "measured by the worker as the products alone against the fused loop in turn on arrays of their "
             "own (the ratio under the table), is counted as GEMM, and the rest as SGD update)"
             + ("; on the GPU every op waits for its own kernels before the clock is read, so ops do "
                "not overlap and the total exceeds an unprofiled step" if device != "cpu" else "") + "):", "",
             "| batch | " + " | ".join(names) + " | total | LRN, pool, ReLU, dropout, loss, SGD together "
             "| the same and the im2col convolutions' output pass (where their ReLUs run; a Winograd "
             "layer's runs in its output tiles) |",
             "|---" * (len(names) + 4) + "|"]
    for r in rows:
        groups = profile_groups(r["tinynet"]["profile_ms"], r["tinynet"].get("fused_products_share"))
        total = sum(groups.values())
        cells = [f"{groups[n]:.0f} ({groups[n] / total:.0%})" for n in names]
        rest = sum(groups[n] for n in ("LRN", "max-pool", "ReLU", "dropout", "loss", "SGD update"))
        with_output = rest + groups["conv output pass"]
        lines.append(f"| {r['batch']} | " + " | ".join(cells) + f" | {total:.0f} | {rest / total:.0%} "
                     f"| {with_output / total:.0%} |")
    shares = [r for r in rows if "fused_products_share" in r["tinynet"]]
    if shares:
        lines += ["", "The fused loop's products' part (the fully connected layers' weight-gradient products alone / "
                  "the fused weight gradient + update, the three layers, in turn; median of the pairs, min-max): "
                  + "; ".join(f"batch {r['batch']}: {f['share']:.2f} ({f['min']:.2f}-{f['max']:.2f}; "
                              f"{f['products_ms']:.1f} / {f['fused_ms']:.1f} ms, {f['pairs']} pairs)"
                              for r in shares for f in [r["tinynet"]["fused_products_share"]])]
    speeds = [r for r in rows if "update_speed" in r["tinynet"]]
    if speeds:
        lines += ["", "The SGD update alone against a plain pass over the same bytes (update_speed: the pass multiplies "
                  "each momentum buffer by 1 in place on the same threads, its time scaled to the update's five "
                  "arrays from its two; in turn with the update; medians). A yardstick of the memory's speed, not a "
                  "bound: the update reads three arrays for two written back and may take a little less. Its share "
                  "is of the profiled step's total. Where the fully connected layers are updated in backward, this "
                  "is the update of every parameter as step() would run it unfused (their gradients set to zeros), "
                  "a pass the step no longer makes for those layers:", "",
                  "| batch | update ms | GB moved | GB/s | plain pass, same bytes, ms | update / pass (min-max) "
                  "| the pass's share of the step |",
                  "|---|---|---|---|---|---|---|"]
        for r in speeds:
            f = r["tinynet"]["update_speed"]
            total = sum(profile_groups(r["tinynet"]["profile_ms"], r["tinynet"].get("fused_products_share")).values())
            lines.append(f"| {r['batch']} | {ms(f['update']['median'])} | {f['bytes'] / 1e9:.2f} | {f['gb_per_s']:.0f} "
                         f"| {ms(f['reference']['median'])} | {f['ratio']['median']:.2f} ({f['ratio']['min']:.2f}-"
                         f"{f['ratio']['max']:.2f}) | {f['reference']['median'] * 1e3 / total:.0%} |")
    return lines


def memory_cell(result):
    """CPU: peak RSS MB (and the peak above the process's memory before the model).  GPU: peak
    MB in use / peak MB reserved from the device."""
    used = f"{result['peak_bytes'] / 2**20:.0f}"
    if result.get("peak_reserved_bytes") is None:
        if "peak_above_base_bytes" in result:
            used += f" ({result['peak_above_base_bytes'] / 2**20:.0f})"
        return used
    return f"{used} / {result['peak_reserved_bytes'] / 2**20:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed calls per worker, at least (more until they add up to MIN_TIMED_SECONDS)")
    ap.add_argument("--quick", action="store_true", help="batches 1 and 8, 2 repetitions, one round")
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    ap.add_argument("--towers", action="store_true", help="tinynet's two-tower model (TINYNET_DEVICES)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--out", help="results name (default: alexnet_<device>[_towers])")
    ap.add_argument("--rounds", type=int, default=3,
                    help="fresh worker processes per engine, batch and mode, tinynet and PyTorch in turn")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--extras", default="profile,floor", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        if args.worker == "tinynet":
            r = worker_tinynet(args.batch, args.mode, args.repeat, args.device, args.towers,
                               tuple(e for e in args.extras.split(",") if e in EXTRAS))
        else:
            r = worker_torch(args.batch, args.mode, args.repeat, args.device)
        print(json.dumps(r))
        return

    if args.quick:
        args.batches, args.repeat, args.rounds = [1, 8], 2, 1
    with_torch = torch_available() and not args.no_torch
    name = args.out or f"alexnet_{args.device}" + ("_towers" if args.towers else "")
    info = machine()
    if args.device != "cpu":
        info["gpu"] = gpu_info()
    rows = []
    engines = ("tinynet", "torch") if with_torch else ("tinynet",)
    for batch in args.batches:
        for mode in ("train", "infer"):
            # rounds of fresh workers, PyTorch interleaved with ours (the order alternating), so
            # that a slow minute of the shared machine hits one round of both, not one engine
            rounds = {engine: [] for engine in engines}
            for k in range(args.rounds):
                for engine in engines if k % 2 == 0 else engines[::-1]:
                    before = cpu_times()
                    result = run_worker(engine, batch, mode, args.repeat, args.device,
                                        args.towers and engine == "tinynet",
                                        extras=EXTRAS if k == 0 else ("floor",))
                    rounds[engine].append(dict(summarise(result, batch), steal=steal_share(before, cpu_times())))
            row = dict(batch=batch, mode=mode, **{engine: combine(rounds[engine], batch) for engine in engines})
            if with_torch and "error" not in row["tinynet"] and "error" not in row["torch"]:
                row["throughput_ratio"] = stats([t["median"] / m["median"] for t, m in
                                                 zip(rounds["torch"], rounds["tinynet"])])
            rows.append(row)
            print(json.dumps(row), flush=True)

    lines = [f"# AlexNet (1000 classes, float32) on {args.device}"
             + (" with two towers" if args.towers else "") + f", {info['date']}\n",
             f"Machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; {info['blas_kernels']}; "
             f"PyTorch: {ran(rows, 'torch', 'version') if with_torch else 'not installed: no reference column'}; "
             + (f"tinynet's CPU loops that ran: {ran(rows, 'tinynet', 'cpu_loops')}; the fully connected layers' "
                f"weights updated {ran(rows, 'tinynet', 'update_in_backward')} (at batch 1-32 the update in backward "
                f"takes each weight's gradient as it is summed; above 32 it declines and step() updates them); "
                f"a convolution's batch of GEMMs: {info['batched_products']}\n" if args.device == "cpu" else
                f"GPU: {info['gpu']}; GEMMs by cuBLAS (cupy.matmul), convolutions by im2col\n"),
             ("Peak MB: the process's peak RSS, and in brackets the peak above the process's resident memory "
              "after its imports and a first tiny convolution (the library's own code and data: about 40 MB for "
              "tinynet and NumPy, 230 for PyTorch), before the model was built\n\n"
              f"PyTorch: eager; SGD {ran(rows, 'torch', 'sgd') if with_torch else '-'}; nn.LocalResponseNorm. Both "
              "engines' worker processes run with glibc keeping freed memory for reuse (tn.reuse_freed_memory(), "
              "as the training program sets it)\n\n"
              "ms/step and the floor's ratio come from different steps: ms/step from the timed steps, the ratio "
              "from the steps timed in turn with the floor afterwards (its median of step / floor per repetition), "
              "so the one divided by the floor's ms need not give the other\n" if args.device == "cpu" else
              "Peak MB: used / reserved, both engines alike: bytes in use by arrays at the peak "
              "(CuPy pool used bytes; PyTorch max_memory_allocated) / bytes the allocator holds "
              "from the device (CuPy pool total bytes; PyTorch max_memory_reserved)\n"),
             "| batch | mode | tinynet img/s | ms/step, median of the rounds (min-max of all steps) | peak MB | GEMM floor ms | tinynet / floor, "
             "median of the repetitions of every round (min-max; each round's median) | "
             "PyTorch img/s | PyTorch peak MB | tinynet / PyTorch throughput, median of the rounds (min-max) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t = row["tinynet"]
        if "error" in t:
            lines.append(f"| {row['batch']} | {row['mode']} | error: {t['error']} | | | | | | | |")
            continue
        floor = t.get("floor")
        ratio = ""
        if floor:
            per_round = floor.get("round_ratios", [])
            ratio = (f"{floor['ratio']['median']:.2f} ({floor['ratio']['min']:.2f}-{floor['ratio']['max']:.2f}; "
                     f"rounds {', '.join(f'{r:.2f}' for r in per_round)})")
            if any(r < 1 for r in per_round):  # said, not left for the reader to find
                ratio += " - in a round under 1 the GEMMs alone were slower than whole steps: not a valid floor there"
        tt = row.get("torch")
        torch_cols = "| | |"
        if tt and "error" not in tt:
            q = row["throughput_ratio"]
            torch_cols = (f"| {tt['images_per_s']:.1f} | {memory_cell(tt)} | "
                          f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f}) |")
        elif tt:
            torch_cols = f"| error: {tt['error']} | | |"
        lines.append(f"| {row['batch']} | {row['mode']} | {t['images_per_s']:.1f} | {ms(t['median'])} "
                     f"({ms(t['min'])}-{ms(t['max'])}) | {memory_cell(t)} | "
                     f"{ms(floor['floor']['median']) if floor else ''} | {ratio} {torch_cols}")
    info["steal"] = steal_share(RUN_STARTED, cpu_times())
    lines += steal_lines(rows, info["steal"])
    lines += profile_table(rows, args.device)
    md = "\n".join(lines) + "\n"
    print(md)
    save(name, dict(machine=info, device=args.device, towers=args.towers, rows=rows), md)

    from tinynet.plot import line_chart

    series = {}
    for engine in ("tinynet", "torch"):
        for mode in ("train", "infer"):
            pts = [(r["batch"], r[engine]["images_per_s"]) for r in rows
                   if r["mode"] == mode and engine in r and "images_per_s" in r[engine]]
            if pts:
                series[f"{engine} {mode}"] = ([p[0] for p in pts], [p[1] for p in pts])
    line_chart(os.path.join(HERE, "results", name + ".png"),
               [(f"images/s against batch size ({args.device})", series)])


if __name__ == "__main__":
    main()
