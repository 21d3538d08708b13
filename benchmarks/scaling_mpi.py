"""Data-parallel scaling of AlexNet training steps over MPI, measured here and projected.

Measured on this machine: full AlexNet (1000 classes, 60,965,224 parameters) training steps at
a small GLOBAL batch, with 1 process and with 2 MPI ranks (mpiexec), the cores shared between
the ranks (2 cores, 2 ranks: 1 BLAS + 1 tinynet thread each). Per step: forward+backward, the
gradient all-reduce (tinynet.distributed.allreduce_gradients: pack, MPI Allreduce of one
244 MB float32 buffer, unpack), the SGD update; images/s = global batch / step time.

Projected, NOT measured: N machines with one rank each, joined by 10, 25 or 100 Gb/s links. A
ring all-reduce sends and receives 2(N-1)/N x the gradient bytes per rank, so its time is about
2(N-1)/N x bytes / link bandwidth (latency and overlap with backward ignored). Each machine
keeps a per-machine batch (--project-batch, default the paper's 128) with the compute time per
image measured here in the 1-process run.

    python benchmarks/scaling_mpi.py            # global batch 16, 5 timed steps, ranks 1 and 2
    python benchmarks/scaling_mpi.py --quick    # global batch 4, 2 timed steps (~10 s on 2 cores)

Results: benchmarks/results/scaling_mpi.json and .md (--quick: scaling_mpi_quick.*).
Needs mpi4py and mpiexec for the 2-rank run (pip install -e .[dist]); without them only the
1-process run is measured.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import numpy as np  # noqa: E402  (after tinynet, which sets BLAS's idle threads to sleep)
import tinynet.distributed as dist  # noqa: E402
import tinynet.functional as F  # noqa: E402
from benchmarks.common import machine, ms, save  # noqa: E402

LINKS_GBIT = (10, 25, 100)            # link speeds of the projection, Gb/s
MACHINES = (2, 4, 8, 16, 64)          # machine counts of the projection


# ----------------------------------------------------------------------------
# Worker: runs in every rank (or alone), writes rank 0's timings as JSON
# ----------------------------------------------------------------------------


def worker(args):
    from tinynet.models import AlexNet
    from tinynet.optim import SGD

    dist.init()
    ranks, threads = dist.world_size(), dist.set_threads_per_rank()
    local = dist.local_batch_size(args.batch)
    model = AlexNet(1000, seed=0)                     # the paper's size
    dist.broadcast_parameters(model)
    params = model.parameters()
    optimizer = SGD(params, lr=1e-4)
    rng = np.random.default_rng(dist.rank())          # each rank its own (random) images
    x = rng.standard_normal((local, 3, 227, 227)).astype(np.float32)
    y = rng.integers(0, 1000, local)

    def step():
        """One training step; returns its phases in seconds."""
        t0 = time.perf_counter()
        with dist.dropout_rows(args.batch):
            loss = F.cross_entropy(model(tn.tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        t1 = time.perf_counter()
        dist.allreduce_gradients(params)
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        return {"compute": t1 - t0, "allreduce": t2 - t1, "sgd": t3 - t2, "step": t3 - t0}

    for _ in range(args.warmup):
        step()
    steps = []
    for _ in range(args.steps):
        dist.barrier()                                # every rank starts the step together
        steps.append(step())
    # the all-reduce alone (ranks already in step, so no waiting for a slower rank inside)
    allreduce = []
    for _ in range(args.steps if ranks > 1 else 0):
        dist.barrier()
        t0 = time.perf_counter()
        nbytes = dist.allreduce_gradients(params)
        allreduce.append(time.perf_counter() - t0)
    if dist.is_main():
        med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
        result = dict(ranks=ranks, threads_per_rank=threads, global_batch=args.batch,
                      local_batch=local, steps=args.steps, warmup=args.warmup,
                      parameters=int(sum(p.size for p in params)),
                      gradient_bytes=int(sum(p.size * p.dtype.itemsize for p in params)),
                      median_s=med, images_per_s=args.batch / med["step"],
                      allreduce_alone_s=(statistics.median(allreduce) if allreduce else None),
                      allreduce_alone_min_s=(min(allreduce) if allreduce else None),
                      allreduce_bytes=(nbytes if allreduce else 0))
        with open(args.worker_out, "w") as f:
            json.dump(result, f)


# ----------------------------------------------------------------------------
# Driver: launches the runs, projects, writes the report
# ----------------------------------------------------------------------------


def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def launch(ranks, args, cores):
    """Run the worker with `ranks` processes; returns rank 0's JSON dict."""
    threads = max(1, cores // ranks)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI_", "OMPI_"))}
    env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--worker-out", out,
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        if ranks > 1:
            cmd = [find_mpiexec(), "-n", str(ranks)] + cmd
        print(f"running {ranks} rank(s), {threads} thread(s) each, global batch {args.batch} ...",
              flush=True)
        subprocess.run(cmd, env=env, check=True, timeout=args.timeout)
        with open(out) as f:
            return json.load(f)


def ring_seconds(nbytes, machines, gbit):
    """Ring all-reduce time: each rank sends (and receives) 2(N-1)/N x nbytes over its link."""
    return 2 * (machines - 1) / machines * nbytes / (gbit * 1e9 / 8)


def project(single, batch):
    """Projected images/s for N machines, each with `batch` images per step (weak scaling).

    Compute time per step = `batch` x the measured 1-process compute time per image, plus the
    measured SGD update; communication = ring all-reduce time, not overlapped with compute.
    """
    per_image = single["median_s"]["compute"] / single["global_batch"]
    compute = batch * per_image + single["median_s"]["sgd"]
    one = batch / compute
    rows = []
    for gbit in LINKS_GBIT:
        for n in MACHINES:
            comm = ring_seconds(single["gradient_bytes"], n, gbit)
            rate = n * batch / (compute + comm)
            rows.append(dict(gbit=gbit, machines=n, compute_s=compute, allreduce_s=comm,
                             images_per_s=rate, speedup=rate / one, efficiency=rate / (n * one)))
    return dict(batch_per_machine=batch, compute_s=compute, single_images_per_s=one, rows=rows)


def markdown(info, runs, projection, args, note):
    cores = info["cores"]
    lines = [f"# Data-parallel AlexNet training over MPI{' (QUICK)' if args.quick else ''}", "",
             f"{info['date']}, {info['cpu']}, {cores} cores, Python {info['python']}, "
             f"NumPy {info['numpy']}. Full AlexNet (1000 classes, "
             f"{runs[0]['parameters']:,} parameters, float32), random images 227x227, global "
             f"batch {args.batch}, median of {args.steps} steps after {args.warmup} warm-up "
             f"step(s). Ranks share this machine's {cores} cores: threads per rank = "
             f"cores / ranks, for OpenBLAS and tinynet's pool.", ""]
    if note:
        lines += [f"**{note}**", ""]
    lines += ["## Measured on this machine", "",
              "| ranks | threads/rank | images/rank | step ms | fwd+bwd ms | all-reduce ms | "
              "SGD ms | images/s | speed-up |",
              "|---|---|---|---|---|---|---|---|---|"]
    base = runs[0]["images_per_s"]
    for r in runs:
        m = r["median_s"]
        lines.append(f"| {r['ranks']} | {r['threads_per_rank']} | {r['local_batch']} | "
                     f"{ms(m['step'])} | {ms(m['compute'])} | {ms(m['allreduce'])} | "
                     f"{ms(m['sgd'])} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x |")
    nbytes = runs[0]["gradient_bytes"]
    lines += ["", f"Gradient bytes all-reduced per step and rank: {nbytes:,} "
                  f"({nbytes / 1e6:.0f} MB = {runs[0]['parameters']:,} parameters x 4 bytes), "
                  "whatever the batch size."]
    for r in runs[1:]:
        if r["allreduce_alone_s"]:
            moved = 2 * (r["ranks"] - 1) / r["ranks"] * nbytes
            lines.append(f"All-reduce alone with {r['ranks']} ranks (shared memory, pack + MPI "
                         f"Allreduce + unpack): median {ms(r['allreduce_alone_s'])} ms, min "
                         f"{ms(r['allreduce_alone_min_s'])} ms; as a ring that is "
                         f"{moved / 1e6:.0f} MB per rank, {moved / r['allreduce_alone_s'] / 1e9:.2f} "
                         f"GB/s.")
    lines += ["", "In the step, the all-reduce column also holds the time one rank waits for the "
                  "other to finish its backward pass.", "",
              "## PROJECTION for N machines (not measured)", "",
              f"Each machine: one rank with this machine's measured compute speed, "
              f"{projection['batch_per_machine']} images per step (global batch N x "
              f"{projection['batch_per_machine']}): compute {projection['compute_s']:.2f} s per "
              f"step ({projection['single_images_per_s']:.1f} images/s alone). Ring all-reduce "
              f"time = 2(N-1)/N x {nbytes / 1e6:.0f} MB / link speed; no overlap with backward, "
              "no latency, no other traffic.", "",
              "| link | machines | all-reduce s | step s | images/s | speed-up | efficiency |",
              "|---|---|---|---|---|---|---|"]
    for row in projection["rows"]:
        lines.append(f"| {row['gbit']} Gb/s | {row['machines']} | {row['allreduce_s']:.3f} | "
                     f"{row['compute_s'] + row['allreduce_s']:.2f} | {row['images_per_s']:.1f} | "
                     f"{row['speedup']:.2f}x | {row['efficiency']:.0%} |")
    lines += ["", "With this CPU's slow compute the link hardly matters; a GPU step is hundreds "
                  "of times shorter, and then the same all-reduce dominates the step: see "
                  "docs/distributed.md.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="global batch (all ranks together)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to run")
    ap.add_argument("--project-batch", type=int, default=128,
                    help="images per machine per step in the N-machine projection")
    ap.add_argument("--quick", action="store_true", help="global batch 4, 2 timed steps")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    ap.add_argument("--out", help="results file name without extension "
                                  "(default scaling_mpi, or scaling_mpi_quick with --quick)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.steps = 4, 2
    if args.worker:
        return worker(args)
    for n in args.ranks:
        if n < 1 or args.batch % n:
            ap.error(f"--batch {args.batch} must be divisible by every rank count, got {n}")

    info = machine()
    note = ""
    ranks = sorted(set(args.ranks))
    if any(n > 1 for n in ranks):
        import importlib.util

        if importlib.util.find_spec("mpi4py") is None or find_mpiexec() is None:
            note = ("mpi4py or mpiexec missing (pip install -e .[dist]): only the 1-process run "
                    "was measured")
            ranks = [n for n in ranks if n == 1] or [1]
    if ranks[0] != 1:
        ranks = [1] + ranks                       # the projection needs the 1-process run
    runs = [launch(n, args, info["cores"]) for n in ranks]
    projection = project(runs[0], args.project_batch)
    md = markdown(info, runs, projection, args, note)
    name = args.out or ("scaling_mpi_quick" if args.quick else "scaling_mpi")
    save(name, {"machine": info, "quick": args.quick, "note": note, "runs": runs,
                "projection": projection}, md)
    print(md)


if __name__ == "__main__":
    main()
