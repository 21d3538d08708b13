"""Shared helpers for the benchmark scripts: timing, machine facts, saving.

Every benchmark warms up, repeats, and quotes the median with min and max;
results go to benchmarks/results/<name>.json and .md with the machine,
library versions, thread counts and the date.
"""

import datetime
import glob
import json
import os
import platform
import statistics
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timeit(fn, repeat=5, warmup=1):
    """Run fn() warmup + repeat times; return dict(median, min, max, values) in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return stats(times)


def enough(times, repeat, min_seconds):
    """True once ``times`` holds ``repeat`` timings that add up to ``min_seconds`` or more:
    a short call is timed more often than ``repeat``, so that one slow moment of the
    shared machine moves the median of many calls, not of a few (a batch-1 inference
    pass takes 20 ms: five of them are a tenth of a second)."""
    return len(times) >= repeat and sum(times) >= min_seconds


def interleaved(first, second, repeat, min_seconds=0.0):
    """Time first() and second() in turn, repeat times each after one warm-up of each
    (more, until first's timings add up to ``min_seconds``: ``enough``), so that the
    shared machine's drift hits both alike.  The order alternates, repetition by
    repetition (first, second; then second, first; ...), so that neither always runs
    in what the other left behind: its caches, the BLAS threads it woke, the memory it
    freed.  Returns their timings and the ratios first / second of the repetitions
    (each repetition's pair), each as stats() gives them."""
    first(), second()
    t_first, t_second = [], []
    while not enough(t_first, repeat, min_seconds):
        pair = ((first, t_first), (second, t_second))
        for fn, times in pair if len(t_first) % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return stats(t_first), stats(t_second), stats([a / b for a, b in zip(t_first, t_second)])


def stats(values):
    """Median, min and max of a list of numbers, and the numbers themselves."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def cpu_model():
    """The processor's name and what tells apart machines a virtual machine names alike ("AMD
    EPYC" is the name of several generations): family and model numbers, AVX-512, and the
    caches of the first core, e.g. "AMD EPYC (family 26, model 2; AVX-512; L2 1024K, L3 32768K)"."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if not key and fields:
                    break  # the first processor's block is enough
                fields.setdefault(key, value.strip())
    except OSError:
        return platform.processor() or "unknown"
    name = fields.get("model name") or platform.processor() or "unknown"
    details = []
    if "cpu family" in fields:
        details.append(f"family {fields['cpu family']}, model {fields.get('model', '?')}")
    if "flags" in fields:
        details.append("AVX-512" if "avx512f" in fields["flags"].split() else "no AVX-512")
    sizes = {}  # cache level -> size, of the first core's caches
    for folder in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/")):
        try:
            with open(folder + "level") as level, open(folder + "size") as size:
                sizes.setdefault(level.read().strip(), size.read().strip())
        except OSError:
            continue
    caches = [f"L{level} {sizes[level]}" for level in ("2", "3") if level in sizes]
    if caches:
        details.append(", ".join(caches))
    return f"{name} ({'; '.join(details)})" if details else name


def blas_info():
    try:
        from threadpoolctl import threadpool_info

        return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for d in threadpool_info()]
    except Exception:
        cfg = np.show_config(mode="dicts") if hasattr(np, "show_config") else {}
        return cfg.get("Build Dependencies", {}).get("blas", "unknown") if isinstance(cfg, dict) else "unknown"


def cpu_times():
    """The machine's CPU time so far (Linux: /proc/stat's first line, in clock ticks), as
    {"total": ..., "steal": ...}; None where there is no such file.  Steal is the time a
    virtual machine's cores were ready to run but the hypervisor ran another guest: on a
    shared machine, one measure of how loaded the minute was.  It does not see another guest's
    use of the shared L3 cache and memory, which slows a step as much without stealing a tick."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest: inside user)
    return {"total": sum(ticks), "steal": ticks[7]}


def steal_share(before, after):
    """The share of the cores' time stolen by the hypervisor between two cpu_times() readings
    (0.5: half of it), or None where either is unknown or no time passed."""
    if before is None or after is None or after["total"] <= before["total"]:
        return None
    return (after["steal"] - before["steal"]) / (after["total"] - before["total"])


# the machine's CPU ticks when the benchmark script started (each imports this module first):
# save() reports the steal from here
RUN_STARTED = cpu_times()


def machine():
    import tinynet

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tinynet": tinynet.__version__,
        "tinynet_threads": tinynet.get_num_threads(),
        "tinynet_cpu_loops_chosen": tinynet.get_cpu_loops(),  # chosen; the workers report what ran
        "blas": blas_info(),
        "blas_kernels": tinynet.ops.cpu_kernels.blas_kernels(),
        "batched_products": tinynet.ops.cpu_kernels.batched_matmul_route(),  # a convolution's GEMMs
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT",
                                              "MKL_NUM_THREADS", "TINYNET_CPU_LOOPS")},
    }


def save(name, payload, markdown):
    """Write results/<name>.json and .md.  On Linux both also say how much of the cores' time
    the hypervisor stole while the script ran, from RUN_STARTED to here, as machine["steal"]
    (unless the script said it already)."""
    info = payload.get("machine")
    if isinstance(info, dict) and "steal" not in info:
        info["steal"] = steal_share(RUN_STARTED, cpu_times())
        if info["steal"] is not None:
            markdown += (f"\nSteal over the run (the share of the cores' time the hypervisor gave other guests, "
                         f"/proc/stat): {info['steal']:.0%}\n")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(payload, f, indent=2, default=str)
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write(markdown)
    print(f"saved {os.path.join(RESULTS, name)}.json and .md")


def ms(seconds):
    return f"{seconds * 1e3:.1f}"
