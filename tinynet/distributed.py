"""Data-parallel training over MPI: n processes ("ranks"), one copy of the model each.

    mpiexec -n 2 python examples/alexnet_train.py --data-parallel --batch-size 32

One training step with n ranks and a GLOBAL batch of B images:

    1. every rank takes its own B/n images of the global batch (DataLoader(rank=, world_size=));
    2. every rank runs forward and backward on them: gradients of the mean loss over B/n images;
    3. allreduce_gradients(params): the gradients of all ranks are summed (MPI Allreduce, one
       flat buffer) and divided by n. Every rank now holds the gradient of the mean loss over
       all B images, exactly what one process with batch B computes (up to float32 summation
       order), because the mean of n equal-sized means is the mean of the whole;
    4. every rank runs optimizer.step() with that same gradient: weights that were equal stay
       equal, so the copies never drift apart and no weights are ever sent during training.

What is sent per step is every gradient: 4 bytes x 61M parameters = 244 MB for AlexNet, whatever
the batch size. docs/distributed.md compares this with AlexNet's own two-GPU (model-parallel)
split.

The same program runs without MPI: when the process was not started by mpiexec (or by one
process only), world_size() is 1 and every call here is a no-op (abort() then just prints and
exits). mpi4py is imported only when the environment says there are several processes
(PMI_SIZE from MPICH's mpiexec, OMPI_COMM_WORLD_SIZE from Open MPI's), so a serial run never
needs it. Install MPI with ``pip install -e .[dist]`` (mpi4py and the MPICH wheel, which puts
``mpiexec`` next to ``python`` in the virtual environment).

Rules every rank must follow (or the job hangs in a collective call until aborted):
  * call the collective functions (init, broadcast_*, allreduce_*, barrier) in the same order
    on every rank;
  * decide "stop now" together (allreduce_sum a flag), never from a rank's own clock alone.
A rank that fails calls abort(): it prints the reason with its rank and MPI_Abort kills every
rank. init() arranges the same for the other ways a rank can fail: an uncaught exception (an
excepthook), and sys.exit with a failing status, argparse's errors included (SystemExit never
reaches the excepthook: sys.exit notes the status, and at exit a failing one aborts the job
instead of waiting in MPI_Finalize for ranks that wait for this one). ``raise SystemExit(n)``
written out bypasses sys.exit: call sys.exit or abort() in a data-parallel program.
"""

import atexit
import os
import sys
import threading
import time
import traceback
from contextlib import nullcontext

import numpy as np

from . import autograd as _autograd

# Environment variables through which the launchers tell each process the job's shape.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")                       # processes in the job
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK")   # index on this machine
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")   # processes on this machine

_state = {
    "initialized": False,
    "MPI": None,        # the mpi4py.MPI module when world size > 1
    "comm": None,       # MPI.COMM_WORLD
    "rank": 0,
    "size": 1,
    "local_rank": 0,
    "local_size": 1,
    "buffers": {},      # (count, dtype) -> the reusable host buffer of allreduce_gradients
    "exit_status": None,  # the status of the main thread's last sys.exit call
}


def _env_int(names):
    """The first of the environment variables `names` that is set, as an int; else None."""
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise RuntimeError(f"tinynet.distributed: environment variable {name}={value!r} "
                                   f"is not an integer") from None
    return None


def launched_size():
    """Processes in this job according to the launcher's environment (1 without mpiexec).

    Reads PMI_SIZE / OMPI_COMM_WORLD_SIZE only: it never imports mpi4py, so a program can ask
    whether it runs under mpiexec before deciding anything else.
    """
    return _env_int(_SIZE_VARS) or 1


def init():
    """Start MPI if this process is one of several started by mpiexec. Returns the world size.

    Safe to call more than once (later calls return at once); every other function here calls
    it. World size 1 (no mpiexec, or ``mpiexec -n 1``): MPI is not touched at all.

    Raises RuntimeError with the fix when mpiexec started several processes but mpi4py is
    missing, or when mpi4py's MPI library is not the one of the mpiexec that started us (then
    each process would see a world of 1 and silently train alone).
    """
    if _state["initialized"]:
        return _state["size"]
    size = launched_size()
    if size > 1:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise RuntimeError(
                f"tinynet.distributed: mpiexec started {size} processes but mpi4py cannot be "
                f"imported ({e}); install it with: pip install -e .[dist]") from None
        comm = MPI.COMM_WORLD
        if comm.Get_size() != size:
            raise RuntimeError(
                f"tinynet.distributed: the launcher says {size} processes but MPI sees "
                f"{comm.Get_size()}: mpi4py uses another MPI library than the mpiexec that "
                f"started this job; use the mpiexec of the same environment "
                f"({os.path.join(os.path.dirname(sys.executable), 'mpiexec')})")
        _state.update(MPI=MPI, comm=comm, rank=comm.Get_rank(), size=size)
        local_rank, local_size = _env_int(_LOCAL_RANK_VARS), _env_int(_LOCAL_SIZE_VARS)
        if local_rank is None or local_size is None:
            # no launcher hint: ask MPI which ranks share this machine's memory
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
            local_rank, local_size = node.Get_rank(), node.Get_size()
            node.Free()
        _state.update(local_rank=local_rank, local_size=local_size)
        _install_failure_hooks()
    _state["initialized"] = True
    return size


def active():
    """True when MPI is running with more than one rank (init() has run under mpiexec -n >1)."""
    return _state["initialized"] and _state["size"] > 1


def rank():
    """This process's index in the job, 0..world_size()-1 (0 without mpiexec)."""
    init()
    return _state["rank"]


def world_size():
    """Number of processes in the job (1 without mpiexec)."""
    return init()


def is_main():
    """True on rank 0, the one rank that prints, logs and writes files."""
    return rank() == 0


def local_rank():
    """This process's index among the ranks on the same machine (picks its GPU: cuda:local_rank)."""
    init()
    return _state["local_rank"]


def local_size():
    """Number of ranks on this machine (they share its cores and GPUs)."""
    init()
    return _state["local_size"]


# ----------------------------------------------------------------------------
# Failure: one rank fails -> every rank stops, with a message naming the rank
# ----------------------------------------------------------------------------


ABORT_PAUSE = 0.5  # seconds between printing a failing rank's message and MPI_Abort


def abort(message, code=1, everywhere=False, grace=5.0):
    """Stop the whole job because this rank cannot go on.

    Prints ``tinynet.distributed: rank R of N: <message>`` to stderr, then MPI_Abort kills every
    rank (the others may be waiting in an Allreduce for this one; without the abort they would
    wait forever). mpiexec then exits with a non-zero status. At world size 1 it prints
    ``<message>`` and exits with status `code` (what MPI_Abort would do to a job of one).

    everywhere: True for an error that every rank meets alike (a bad command-line option):
        then rank 0 reports it alone and ends the job, so the message is printed once. The
        other ranks wait `grace` seconds for that and report it themselves only if they are
        still alive (the error was theirs alone).
    """
    init()
    if _state["size"] == 1:
        print(message, file=sys.stderr, flush=True)
        sys.exit(code)
    if everywhere and _state["rank"] != 0:
        time.sleep(grace)          # normally rank 0's abort ends this process during the wait
    print(f"tinynet.distributed: rank {_state['rank']} of {_state['size']}: {message}",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    # The message is in the pipe to mpiexec's proxy now, but MPICH's MPI_Abort tears the job
    # down at once, and now and then the proxy is killed before it has passed the message on:
    # the job then ends with the right status and no word of why. Half a second lets it pass.
    time.sleep(ABORT_PAUSE)
    _state["comm"].Abort(code)
    # MPICH's MPI_Abort can return to the caller before mpiexec has killed the job: never run
    # another line of the program (it would report the error a second time, or go on)
    os._exit(code)


def _install_failure_hooks():
    """Make a failing rank abort the job, instead of leaving the other ranks blocked in their
    next collective call (and itself in MPI_Finalize, which waits for them).

    Two ways out of a Python program never call abort() by themselves:
      * an uncaught exception: the excepthook aborts (after the finally blocks have run);
      * sys.exit(status) with a failing status (not None or 0): the SystemExit it raises
        unwinds the program without reaching the excepthook, so sys.exit notes the status
        and an atexit handler, which runs before mpi4py's MPI_Finalize, aborts with it.
        (So a program that catches the SystemExit of a failing sys.exit and then ends
        normally still ends with the abort: on an MPI job, call sys.exit only to leave.)
    """
    previous_hook, previous_exit = sys.excepthook, sys.exit

    def excepthook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            return previous_hook(kind, value, tb)
        text = "".join(traceback.format_exception(kind, value, tb)).rstrip()
        abort(f"uncaught exception, aborting all ranks:\n{text}")

    def exit(status=None):
        if threading.current_thread() is threading.main_thread():  # elsewhere it ends a thread
            _state["exit_status"] = status
        previous_exit(status)

    sys.excepthook, sys.exit = excepthook, exit
    atexit.register(_abort_if_exit_failed)   # registered after mpi4py's: runs before it


def _abort_if_exit_failed():
    """At exit: if the program ends through sys.exit with a failing status, abort the job."""
    status = _state["exit_status"]
    if status is None or status == 0:
        return
    if isinstance(status, int):
        abort(f"sys.exit({status}), aborting all ranks", code=status)
    # sys.exit("message"): Python has printed the message and exits with 1
    abort(f"sys.exit({status!r}), aborting all ranks", code=1)


# ----------------------------------------------------------------------------
# Moving arrays between ranks
# ----------------------------------------------------------------------------


def _xp(array):
    """numpy or cupy (imported only if the array is a CuPy array)."""
    from .backend import get_array_module

    return get_array_module(array)


def _host_buffer(count, dtype):
    """A reusable 1-d host array of `count` elements (allocated once per size and dtype)."""
    key = (int(count), np.dtype(dtype).str)
    buf = _state["buffers"].get(key)
    if buf is None:
        buf = _state["buffers"][key] = np.empty(count, dtype=dtype)
    return buf


def _pack(arrays, dtype):
    """Copy `arrays` (NumPy or CuPy, any shapes) one after another into one flat host buffer.

    Returns (buf, offsets): buf (total,) host array of `dtype`, a view reused between calls;
    array i occupies buf[offsets[i]:offsets[i + 1]]. CuPy arrays are first concatenated on their
    GPU and then copied to the host in ONE transfer (the MPICH wheel cannot read GPU memory).
    """
    sizes = [int(a.size) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    buf = _host_buffer(offsets[-1], dtype)
    on_gpu = [a for a in arrays if _xp(a) is not np]
    if on_gpu and len(on_gpu) == len(arrays):
        cp = _xp(on_gpu[0])
        flat = cp.concatenate([a.reshape(-1).astype(dtype, copy=False) for a in arrays])
        flat.get(out=buf)                                  # device -> host, one copy
    elif on_gpu:
        raise ValueError("tinynet.distributed: arrays are partly on the GPU, partly on the host; "
                         "move the whole model to one device first")
    else:
        for a, i0, i1 in zip(arrays, offsets[:-1], offsets[1:]):
            buf[i0:i1] = a.reshape(-1)
    return buf, offsets


def _unpack(buf, offsets, arrays):
    """Copy buf's pieces back into `arrays`, in place (host -> GPU in one transfer for CuPy)."""
    if arrays and _xp(arrays[0]) is not np:
        cp = _xp(arrays[0])
        flat = cp.empty(buf.shape, dtype=buf.dtype)
        flat.set(buf)                                      # host -> device, one copy
        for a, i0, i1 in zip(arrays, offsets[:-1], offsets[1:]):
            a[...] = flat[i0:i1].reshape(a.shape)
        return
    for a, i0, i1 in zip(arrays, offsets[:-1], offsets[1:]):
        a[...] = buf[i0:i1].reshape(a.shape)


def broadcast_arrays(arrays, root=0):
    """Overwrite `arrays` (list of NumPy/CuPy arrays, same shapes and order on every rank) in
    place with rank `root`'s values: one flat buffer, one MPI Bcast. No-op at world size 1."""
    arrays = list(arrays)
    if world_size() == 1 or not arrays:
        return
    dtype = np.result_type(*[a.dtype for a in arrays])
    comm = _state["comm"]
    # check first (a tiny broadcast) that every rank has the same number of elements, so a
    # mismatch is reported instead of corrupting weights or hanging
    total = np.array([sum(int(a.size) for a in arrays)], dtype=np.int64)
    root_total = total.copy()
    comm.Bcast(root_total, root=root)
    if root_total[0] != total[0]:
        abort(f"broadcast_arrays: this rank has {total[0]} elements, rank {root} has "
              f"{root_total[0]}: the ranks built different models")
    buf, offsets = _pack(arrays, dtype)
    comm.Bcast(buf, root=root)                     # the raw memory: no pickling
    _unpack(buf, offsets, arrays)


def broadcast_parameters(model, root=0):
    """Give every rank rank `root`'s weights: model.parameters() overwritten in place.

    Call it once after building (and after restoring a checkpoint), before training: all
    copies then start equal, and identical updates keep them equal. No-op at world size 1.
    """
    broadcast_arrays([p.data for p in model.parameters()], root=root)


def allreduce_gradients(params, count=None):
    """Average the gradients of `params` over all ranks, in place: p.grad <- the mean gradient
    over the global batch.

    Args:
        params: the model's parameters (model.parameters()), in the same order on every rank,
            after loss.backward(). A gradient missing on some ranks (p.grad None: the
            parameter played no part in their step) counts as zeros there; missing on every
            rank, it stays None, and the optimiser skips that parameter as one process would.
        count: this rank's number of samples in the step, when the ranks' batches may differ
            (a DataLoader with drop_last=False splits its last, short batch unevenly, and may
            leave a rank none): each rank's mean gradient then counts in proportion to its
            samples, sum(count_r * grad_r) / sum(count_r), the mean over the global batch. None
            (the training program, whose global batch always splits evenly): every rank has
            as many samples, and the mean over ranks is that mean.
    Returns:
        the number of bytes this rank all-reduced (0 at world size 1, where nothing changes).

    How: all gradients are copied into ONE flat buffer (AlexNet: 61M float32 = 244 MB), summed
    over ranks by ``comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)`` through MPI's buffer
    interface (the raw memory, no pickling), divided by the world size, and copied back. One
    big message instead of 16 small ones pays the per-message latency once. GPU gradients are
    staged through host memory (the MPICH wheel is not CUDA-aware).
    """
    params = list(params)
    n = world_size()
    if n == 1 or not params:
        return 0
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise TypeError(f"allreduce_gradients: all parameters must share one dtype (one buffer), "
                        f"got {sorted(str(d) for d in dtypes)}")
    dtype = dtypes.pop()
    # which parameters have a gradient on some rank, and (count) how many samples there are
    # in all: one small Allreduce before the big one
    has_grad = [p.grad is not None for p in params]
    # and on how many ranks a parameter was already updated in backward with the rank's own
    # gradient (SGD(update_in_backward=True)), before any sum: every rank then refuses together
    pending = [i for i, p in enumerate(params) if _autograd.update_in_backward_pending(p)]
    *totals, updated = allreduce_sum(has_grad + [0 if count is None else count, len(pending)])
    if updated:
        raise RuntimeError(
            f"allreduce_gradients: parameter(s) {pending or '(on another rank)'} were updated in "
            "backward by SGD(update_in_backward=True) with a rank's own gradient, before any sum over "
            "the ranks; build the optimiser without update_in_backward for data parallelism")
    for p in params:
        if p.grad is None:
            p.grad = _xp(p.data).zeros_like(p.data)
    grads = [p.grad for p in params]
    buf, offsets = _pack(grads, dtype)
    if count is not None:
        buf *= count                # this rank's mean gradient times its samples: their sum
    MPI = _state["MPI"]
    _state["comm"].Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)   # every rank gets the sum
    if count is None:
        buf /= n                    # sum of the ranks' means / n = mean over the global batch
    elif totals[-1]:
        buf /= totals[-1]           # sum over the samples / their number
    _unpack(buf, offsets, grads)
    for p, ranks_with_grad in zip(params, totals[:-1]):
        if not ranks_with_grad:     # no rank had a gradient for it: none, not zeros
            p.grad = None
    return buf.nbytes


def allreduce_sum(array):
    """Sum an array (or a number) over all ranks; every rank gets the total.

    For metrics: e.g. allreduce_sum([wrong_top1, wrong_top5, loss_sum]) after each rank
    evaluated its shard. Returns a new NumPy array of the input's shape (float64 for Python
    floats, int64 for ints and bools). At world size 1 returns a copy of the input.
    """
    value = np.array(array, order="C")               # a copy, C-contiguous, any shape
    if value.dtype == bool:
        value = value.astype(np.int64)
    if value.dtype.kind not in "iuf":
        raise TypeError(f"allreduce_sum: expected numbers, got dtype {value.dtype}")
    if world_size() > 1:
        MPI = _state["MPI"]
        _state["comm"].Allreduce(MPI.IN_PLACE, value.reshape(-1), op=MPI.SUM)
    return value


def compare_with_root(value, root=0):
    """Every rank's float `value` against rank `root`'s, for checks that the ranks agree (the
    same weights, the same data). Returns (root's value, how many ranks hold another): one
    Allreduce adds root's value alone (exact in float64, the others adding 0), a second counts
    the ranks that differ. At world size 1: (value, 0)."""
    total = allreduce_sum([value if rank() == root else 0.0])
    differs = allreduce_sum([value != total[0]])
    return float(total[0]), int(differs[0])


def barrier():
    """Wait until every rank has arrived here (e.g. rank 0 prepared a data cache). No-op at
    world size 1."""
    if world_size() > 1:
        _state["comm"].Barrier()


# ----------------------------------------------------------------------------
# Helpers for a training program
# ----------------------------------------------------------------------------


def local_batch_size(global_batch):
    """Images per rank for a GLOBAL batch of `global_batch`: global_batch / world_size().

    Raises ValueError (one line, with both numbers) when the batch does not divide evenly:
    unequal local batches would make the average of the ranks' mean gradients differ from the
    mean over the global batch.
    """
    n = world_size()
    if global_batch % n:
        raise ValueError(f"--batch-size {global_batch} is the global batch and must be divisible "
                         f"by the {n} ranks (each rank takes batch/{n} images)")
    return global_batch // n


def dropout_rows(global_batch):
    """Context for one training step: dropout masks drawn for the whole global batch, of which
    this rank keeps its rows rank*B/n .. (rank+1)*B/n - 1 (see functional.dropout_rows). The
    masks then do not depend on the number of ranks. At world size 1: nothing to do."""
    if world_size() == 1:
        return nullcontext()
    from .functional import dropout_rows as rows

    return rows(rank() * local_batch_size(global_batch), global_batch)


def device_for_rank(spec):
    """The device this rank should use for `spec` ('cpu', 'cuda' or 'cuda:N'), as a string.

    'cuda' becomes 'cuda:<local_rank>': each rank on a machine gets its own GPU (start as many
    ranks per machine as it has GPUs). 'cpu' and an explicit 'cuda:N' are returned unchanged.
    For a GPU it also makes that GPU CuPy's current device in this process
    (``cupy.cuda.Device(N).use()``), so arrays created without an explicit device (the
    all-reduce staging buffers, for one) land on it and not on GPU 0.
    """
    from .backend import Device, require_cupy

    if spec.strip() == "cuda" and world_size() > 1:
        spec = f"cuda:{local_rank()}"
    dev = Device(spec)
    if dev.kind == "cuda":
        require_cupy(dev).cuda.Device(dev.index).use()
    return spec


def set_threads_per_rank(threads=None):
    """Share this machine's cores among its ranks; returns the threads per rank.

    Args:
        threads: threads for each rank; default: OPENBLAS_NUM_THREADS if set, else
            max(1, cores // ranks on this machine) (2 ranks on 2 cores: 1 thread each).
    Sets tinynet's own thread pool (tinynet.set_num_threads: the im2col/LRN/pool/SGD passes)
    and, through threadpoolctl when it is installed, the BLAS threads of NumPy's OpenBLAS (the
    GEMMs). Without threadpoolctl the BLAS limit must come from the environment before NumPy
    is imported: mpiexec -n 2 -genv OPENBLAS_NUM_THREADS 1 python ...
    More threads than cores per rank makes the ranks fight over the cores and runs slower.
    """
    from .ops.cpu_kernels import set_num_threads

    if threads is None:
        threads = _env_int(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))
    if threads is None:
        machine = os.cpu_count() or 1
        mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
        # bound by the launcher to fewer cores than the machine has: those cores are this
        # rank's own; otherwise all ranks on this machine share all its cores
        threads = mine if mine < machine else max(1, machine // local_size())
    set_num_threads(int(threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(threads), user_api="blas")
    except ImportError:
        pass
    return int(threads)
