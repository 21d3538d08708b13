"""Data parallelism over MPI (tinynet.distributed).

Without mpiexec every call is a no-op: tested in this process. The MPI tests launch
``mpiexec -n 2`` in a subprocess (tests/mpi_programs.py, examples/alexnet_train.py) with a
timeout, so a hang fails the test instead of blocking CI; they skip with a printed reason when
mpi4py or mpiexec is missing (pip install -e .[dist]).
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import tinynet as tn
import tinynet.distributed as dist
import tinynet.functional as F
from tinynet import nn

from conftest import image_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = os.path.join(ROOT, "tests", "mpi_programs.py")
TIMEOUT = 60        # seconds for one mpiexec job; the jobs here take a few seconds


def load_programs():
    spec = importlib.util.spec_from_file_location("mpi_programs", PROGRAMS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_mpiexec():
    """mpiexec next to this Python (the mpich wheel puts it there), else on PATH; or None."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def mpi_missing():
    """Why the MPI tests cannot run here, or None."""
    try:
        import mpi4py  # noqa: F401  (the package only: this does not start MPI)
    except ImportError:
        return "mpi4py is not installed (pip install -e .[dist])"
    if find_mpiexec() is None:
        return "no mpiexec next to Python or on PATH (pip install -e .[dist] installs MPICH's)"
    return None


needs_mpi = pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))


def run_mpi(nprocs, args, timeout=TIMEOUT):
    """Run ``mpiexec -n nprocs python args...``; return the CompletedProcess.

    The job gets its own process group, killed whole when the timeout expires (then the test
    fails with the output so far): a hang can never block the test suite.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "MPI_", "OMPI_", "HYDRA_"))}
    env["OPENBLAS_NUM_THREADS"] = "1"       # 2 ranks on 2 cores: one BLAS thread each
    cmd = [find_mpiexec(), "-n", str(nprocs), sys.executable, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s (a hang?)\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ------------------------------------------------------------------------------------------
# World size 1: the same program runs serially, every call a no-op
# ------------------------------------------------------------------------------------------

def test_world_size_one_is_a_no_op():
    assert "PMI_SIZE" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ
    assert dist.launched_size() == 1
    assert (dist.init(), dist.rank(), dist.world_size(), dist.local_rank()) == (1, 0, 1, 0)
    assert dist.is_main()
    model = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(0)), nn.ReLU(),
                          nn.Linear(4, 2, rng=np.random.default_rng(1)))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    dist.broadcast_parameters(model)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k])
    loss = F.cross_entropy(model(tn.tensor(np.ones((5, 3), np.float32))), np.array([0, 1, 0, 1, 1]))
    loss.backward()
    grads = [p.grad.copy() for p in model.parameters()]
    assert dist.allreduce_gradients(model.parameters()) == 0
    for p, g in zip(model.parameters(), grads):
        assert np.array_equal(p.grad, g)
    total = dist.allreduce_sum([3, 4])
    assert total.tolist() == [3, 4] and total.dtype == np.int64
    assert float(dist.allreduce_sum(2.5)) == 2.5
    dist.barrier()
    assert dist.local_batch_size(7) == 7
    assert dist.device_for_rank("cpu") == "cpu"
    with dist.dropout_rows(8):
        assert F._dropout_rows is None        # nothing to slice in a single process


def test_serial_import_never_needs_mpi4py():
    """A serial run must not import mpi4py (it may not be installed)."""
    code = ("import sys, tinynet.distributed as d; d.init(); d.allreduce_sum(1.0); d.barrier(); "
            "print(d.world_size(), 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "False"]


def test_launched_without_mpi4py_is_a_clear_error():
    """PMI_SIZE says 2 processes but mpi4py cannot be imported: a RuntimeError naming the fix."""
    code = ("import sys; sys.modules['mpi4py'] = None\n"   # makes `import mpi4py` fail
            "import tinynet.distributed as d\n"
            "try:\n    d.init()\nexcept RuntimeError as e:\n    print(e)\n")
    env = dict(os.environ, PMI_SIZE="2", PMI_RANK="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "mpiexec started 2 processes" in out.stdout and "pip install -e .[dist]" in out.stdout


def test_dropout_rows_slices_the_global_mask():
    """Inside dropout_rows(start, total) a rank's mask is rows start.. of the global mask, and the
    generator advances exactly as in the single process (so later masks agree too)."""
    rng_serial, rng_rank = np.random.default_rng(5), np.random.default_rng(5)
    full = F.dropout_mask((8, 6), 0.5, np.float32, rng_serial)
    with F.dropout_rows(4, 8):
        part = F.dropout_mask((4, 6), 0.5, np.float32, rng_rank)
    assert np.array_equal(part, full[4:8])
    assert np.array_equal(F.dropout_mask((3,), 0.5, np.float32, rng_serial),
                          F.dropout_mask((3,), 0.5, np.float32, rng_rank))
    with pytest.raises(ValueError, match="global batch of 8"):
        with F.dropout_rows(6, 8):
            F.dropout_mask((4, 6), 0.5, np.float32, rng_rank)
    with pytest.raises(ValueError, match="start < total"):
        F.dropout_rows(8, 8)
    assert F._dropout_rows is None


# ------------------------------------------------------------------------------------------
# Two ranks
# ------------------------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_compute_the_serial_update(tmp_path):
    """mpiexec -n 2 with global batch 8 (4 per rank, dropout on) vs one process with batch 8:
    the weights after 3 SGD steps agree to 1e-5 relative (float32 summation order only), and
    both ranks hold bit-identical copies."""
    job = run_mpi(2, [PROGRAMS, "exact", str(tmp_path / "dp.npz")])
    assert job.returncode == 0, job.stderr
    programs = load_programs()
    state, losses = programs.train_steps()          # here: world size 1, the serial reference
    dp = np.load(tmp_path / "dp.npz")
    assert int(dp["world_size"]) == 2
    assert float(dp["spread"]) == 0.0               # the two copies are identical
    init = programs.tiny_model(programs.SEED).state_dict()
    for name, serial in state.items():
        assert not np.array_equal(serial, init[name]), f"{name} did not train"
        rel = np.abs(dp[name] - serial).max() / np.abs(serial).max()
        assert rel < 1e-5, f"{name}: relative difference {rel:.2e}"
    np.testing.assert_allclose(dp["losses"], losses, rtol=1e-5)


@needs_mpi
def test_uneven_local_batches_weigh_each_rank_by_its_samples(tmp_path):
    """7 samples split 4/3, 5/2 and 7/0 over 2 ranks: allreduce_gradients(count=...) gives the
    gradient of the mean loss over all 7 (one process: float64, to rounding), and a parameter
    that no rank's loss uses keeps no gradient (the optimiser skips it, as one process does)."""
    job = run_mpi(2, [PROGRAMS, "uneven", str(tmp_path / "g.npz")])
    assert job.returncode == 0, job.stderr
    got = np.load(tmp_path / "g.npz")
    import tinynet as tn
    import tinynet.functional as F
    from tinynet import nn
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    lin = nn.Linear(6, 3, rng=np.random.default_rng(1), dtype=np.float64)
    F.cross_entropy(lin(tn.tensor(x)), y).backward()
    for first in (4, 5, 7):
        np.testing.assert_allclose(got[f"w{first}"], lin.weight.grad, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got[f"b{first}"], lin.bias.grad, rtol=1e-12, atol=1e-15)
        assert bool(got[f"unused_is_none{first}"])


@needs_mpi
def test_data_parallelism_refuses_weights_updated_in_backward(tmp_path):
    """SGD(update_in_backward=True) would update each rank's copy with its own gradient before
    the sum over ranks: allreduce_gradients refuses on every rank, and no rank hangs."""
    job = run_mpi(2, [PROGRAMS, "in_backward", str(tmp_path / "message.txt")])
    assert job.returncode == 0, job.stderr
    message = (tmp_path / "message.txt").read_text()
    assert "allreduce_gradients: parameter(s) [0] were updated in backward by SGD(update_in_backward=True)" in message


@needs_mpi
@pytest.mark.parametrize("mode, words", [("raise", "an error injected by the test"),
                                         ("nan", "loss became nan at step 2")])
def test_failure_on_one_rank_aborts_all(mode, words):
    """Rank 1 fails while rank 0 waits for it in the Allreduce: the job ends quickly, non-zero,
    with the rank named (never a hang)."""
    job = run_mpi(2, [PROGRAMS, mode], timeout=30)
    assert job.returncode != 0
    assert "rank 1 of 2" in job.stderr and words in job.stderr, job.stderr


@needs_mpi
def test_sys_exit_on_one_rank_aborts_all():
    """Rank 1 calls sys.exit(3) while rank 0 waits for it in the Allreduce. SystemExit never
    reaches the excepthook; without the exit hook rank 1 would wait in MPI_Finalize and rank 0
    in the Allreduce, for ever."""
    job = run_mpi(2, [PROGRAMS, "exit"], timeout=30)
    assert job.returncode != 0
    assert "rank 1 of 2: sys.exit(3)" in job.stderr, job.stderr


@needs_mpi
def test_sys_exit_zero_on_every_rank_ends_the_job_cleanly():
    job = run_mpi(2, [PROGRAMS, "exit0"], timeout=30)
    assert job.returncode == 0, job.stderr
    assert "aborting" not in job.stderr, job.stderr


@needs_mpi
def test_training_program_rejects_an_uneven_global_batch(tmp_path):
    job = run_mpi(2, [os.path.join(ROOT, "examples", "alexnet_train.py"), "--data-parallel",
                      "--preset", "demo", "--batch-size", "3", "--out", str(tmp_path / "out"),
                      "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert job.returncode != 0
    assert "--batch-size 3" in job.stderr and "2 ranks" in job.stderr, job.stderr
    assert job.stderr.count("--batch-size 3") == 1, job.stderr     # reported once, by rank 0


@needs_mpi
@pytest.mark.slow
def test_training_program_two_ranks_match_one_process(tmp_path):
    """The real program on the full AlexNet (dropout on): 2 ranks x 1 image against one process
    with batch 2, one epoch of 2 steps. Rank 0 alone writes the run folder; the weights,
    momentum and validation numbers equal the serial run's."""
    from tinynet.checkpoint import load_checkpoint

    data = image_tree(tmp_path / "images", {"train": 2, "val": 1}, ("a", "b"), (40, 40), mark=230, seed=0)
    prog_path = os.path.join(ROOT, "examples", "alexnet_train.py")

    def argv(out):
        return ["--preset", "demo", "--data", str(data), "--epochs", "1", "--batch-size", "2",
                "--time-budget", "0", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                "--quiet"]

    job = run_mpi(2, [prog_path, "--data-parallel", *argv(tmp_path / "dp")], timeout=120)
    assert job.returncode == 0, job.stderr
    assert job.stdout.count("AlexNet (") == 1                    # printed by rank 0 only
    assert "data parallel: 2 ranks, 1 image(s) each = global batch 2" in job.stdout
    serial = subprocess.run([sys.executable, prog_path, *argv(tmp_path / "serial")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert serial.returncode == 0, serial.stderr

    dp_dir, serial_dir = tmp_path / "dp", tmp_path / "serial"
    assert sorted(os.listdir(dp_dir)) == sorted(os.listdir(serial_dir)) == [
        "best.npz", "config.json", "conv1_filters.png", "curves.png", "latest.npz", "metrics.jsonl"]
    a, b = load_checkpoint(str(dp_dir / "latest.npz")), load_checkpoint(str(serial_dir / "latest.npz"))
    assert a["meta"]["config"]["data_parallel"] == {"ranks": 2, "local_batch": 1,
                                                     "threads_per_rank": 1}
    assert (a["meta"]["global_step"], a["meta"]["rng"]) == (b["meta"]["global_step"], b["meta"]["rng"])
    # float32 through the whole AlexNet, and the serial run's BLAS uses 2 threads where each
    # rank uses 1, so sums run in other orders: up to ~1e-4 of the largest entry where two
    # images cancel (a real error is of order 1; the small-model test holds 1e-5)
    for name, w in b["model"].items():
        rel = np.abs(a["model"][name] - w).max() / max(np.abs(w).max(), 1e-30)
        assert rel < 2e-4, f"{name}: relative difference {rel:.2e}"
    for i, (va, vb) in enumerate(zip(a["velocity"], b["velocity"])):
        assert np.abs(va - vb).max() <= 2e-4 * max(np.abs(vb).max(), 1e-30), f"velocity {i}"
    with open(dp_dir / "metrics.jsonl") as f_dp, open(serial_dir / "metrics.jsonl") as f_s:
        evals = [[json.loads(line) for line in f if '"eval"' in line] for f in (f_dp, f_s)]
    assert [(e["top1_err"], e.get("top5_err")) for e in evals[0]] == \
        [(e["top1_err"], e.get("top5_err")) for e in evals[1]]
    np.testing.assert_allclose([e["loss"] for e in evals[0]], [e["loss"] for e in evals[1]],
                               rtol=1e-4)


@needs_mpi
@pytest.mark.parametrize("subset", [[], ["--max-train-images", "2"]])
def test_training_program_ranks_reading_other_images_are_stopped(tmp_path, subset):
    """Each rank trains on its share of one list of images. Ranks that list other images (here
    each is given another folder, as machines with different copies of the data would be) stop
    with an error before the first step, instead of training on shards of two lists; also when
    a subset of the same size is taken from each (a subset keeps no file names)."""
    a = image_tree(tmp_path / "a", {"train": 2, "val": 1}, ("a", "b"), (40, 40), mark=230, seed=0)
    b = image_tree(tmp_path / "b", {"train": 3, "val": 1}, ("a", "b"), (40, 40), mark=230, seed=1)
    prog_path = os.path.join(ROOT, "examples", "alexnet_train.py")

    def rank(data):
        return ["-n", "1", sys.executable, prog_path, "--data-parallel", "--preset", "demo",
                "--data", str(data), "--epochs", "1", "--batch-size", "2", "--time-budget", "0",
                "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet", *subset]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI_", "OMPI_", "HYDRA_"))}
    env["OPENBLAS_NUM_THREADS"] = "1"
    job = subprocess.run([find_mpiexec(), *rank(a), ":", *rank(b)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=TIMEOUT, start_new_session=True)
    assert job.returncode != 0
    assert "data parallel: 1 of 2 rank(s) read other images than rank 0" in job.stderr, job.stderr
    assert not os.path.exists(tmp_path / "out" / "latest.npz")     # no step was trained


@needs_mpi
@pytest.mark.slow
def test_training_program_ranks_share_the_budget_schedule(tmp_path):
    """The budget schedule's horizon comes from a clock; every rank takes rank 0's, so that all
    step at one learning rate and hold one model (the program checks at every evaluation that
    the ranks' weights are equal, and stops if not). A budget far shorter than the epochs, so
    that the horizon sets the rate."""
    data = image_tree(tmp_path / "images", {"train": 4, "val": 1}, ("a", "b"), (40, 40), mark=230, seed=0)
    job = run_mpi(2, [os.path.join(ROOT, "examples", "alexnet_train.py"), "--data-parallel", "--preset", "demo",
                      "--data", str(data), "--epochs", "100", "--batch-size", "2", "--lr", "0.001",
                      "--warmup-steps", "0", "--lr-schedule", "budget", "--time-budget", "30", "--dropout", "0",
                      "--out", str(tmp_path / "dp"), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
                  timeout=240)
    assert job.returncode == 0, job.stderr
    assert "differ from rank 0's" not in job.stderr
    assert "time budget of 30 s: training stopped" in job.stdout  # the budget, not the epochs, ended it
    with open(tmp_path / "dp" / "metrics.jsonl") as f:
        assert sum('"eval"' in line for line in f) >= 3
