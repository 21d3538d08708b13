"""The CPU kernels (tinynet/ops/cpu_kernels.py): thread pool, conv_path setting, glibc memory reuse."""

import ctypes
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tinynet.ops import cpu_kernels


@pytest.fixture
def threads():
    """Three pool threads for the test, a fresh pool; the old count comes back afterwards."""
    old = cpu_kernels.get_num_threads()
    cpu_kernels.set_num_threads(3)
    yield 3
    cpu_kernels.set_num_threads(old)


def test_pieces_cover_the_range_once(threads):
    seen = np.zeros(10, int)

    def fn(i0, i1):
        seen[i0:i1] += 1

    cpu_kernels.parallel_chunks(fn, 10, bytes_per_item=1, target_bytes=3)  # pieces of 3 items
    assert seen.tolist() == [1] * 10
    cpu_kernels.parallel_chunks(fn, 0, bytes_per_item=1)                  # empty: nothing runs
    assert seen.tolist() == [1] * 10


def test_a_failing_piece_is_raised_only_after_every_piece_has_finished(threads):
    """The caller reuses its scratch buffers as soon as parallel_chunks returns or raises; a
    piece still running then would write into a buffer that already holds something else."""
    finished = []

    def fn(i0, i1):
        if i0 == 0:
            raise RuntimeError("piece 0 failed")
        time.sleep(0.2)          # still writing when piece 0's error arrives
        finished.append(i0)

    with pytest.raises(RuntimeError, match="piece 0 failed"):
        cpu_kernels.parallel_chunks(fn, 3, bytes_per_item=1, target_bytes=1)
    assert sorted(finished) == [1, 2]


def test_the_calling_thread_and_the_workers_run_pieces_at_once(threads):
    """Three threads (the caller and two workers) each take a piece: three pieces that each
    wait for the other two all finish (one thread taking two would wait forever: the timeout
    then fails the test)."""
    barrier = threading.Barrier(3, timeout=10)
    names = []

    def fn(i0, i1):
        names.append(threading.current_thread().name)
        barrier.wait()

    cpu_kernels.parallel_chunks(fn, 3, bytes_per_item=1, target_bytes=1)
    assert len(set(names)) == 3 and threading.current_thread().name in names


def test_the_caller_waits_for_the_pieces_not_for_a_late_worker(threads, monkeypatch):
    """A worker that wakes only after the caller has run every piece finds none to run; the
    call returns without waiting for it.  Here the workers are held until the call is over:
    had it waited for them, it would still be running when the guard's time is up."""
    release = threading.Event()
    started, late = [], []  # the held workers' threads; those that ran after the call

    class LateWorkers:
        def submit(self, fn):  # as ThreadPoolExecutor.submit: a future, here already running
            future = Future()
            future.set_running_or_notify_cancel()

            def run():
                release.wait(timeout=30)
                fn()  # the queue is empty by now: this must run no piece
                late.append(threading.current_thread().name)
                future.set_result(None)
            thread = threading.Thread(target=run, name=f"late-{len(started)}")
            thread.start()
            started.append(thread)
            return future

    monkeypatch.setattr(cpu_kernels, "_executor", lambda n: LateWorkers())
    seen = []
    call = threading.Thread(target=cpu_kernels.parallel_chunks,
                            args=(lambda i0, i1: seen.append((i0, i1, threading.current_thread().name)), 3),
                            kwargs=dict(bytes_per_item=1, target_bytes=1), name="caller")
    call.start()
    call.join(timeout=10)  # a guard against waiting for the held workers, not a timing
    returned = not call.is_alive()
    release.set()
    for thread in started + [call]:
        thread.join()
    assert returned, "parallel_chunks waited for workers that had no piece left to run"
    assert sorted(seen) == [(0, 1, "caller"), (1, 2, "caller"), (2, 3, "caller")]
    assert len(late) == 2  # both held workers ran afterwards, and found nothing


def test_two_threads_starting_the_pool_at_once_make_one_pool(threads, monkeypatch):
    """The loader's prefetch thread and the training loop may both be first to need the pool."""
    made = []
    real = cpu_kernels.ThreadPoolExecutor

    class SlowToMake(real):
        def __init__(self, *args, **kwargs):
            made.append(self)
            time.sleep(0.2)      # widen the window between "no pool yet" and "pool stored"
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cpu_kernels, "ThreadPoolExecutor", SlowToMake)
    start = threading.Barrier(2)

    def work():
        start.wait()
        cpu_kernels.parallel_chunks(lambda i0, i1: None, 4, bytes_per_item=1, target_bytes=1)

    workers = [threading.Thread(target=work) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(made) == 1


@pytest.mark.parametrize("path", ["whole", "chunked", "threaded", "numpy"])
def test_conv_path_runs_the_kernels_the_way_it_names(path, monkeypatch):
    """conftest.conv_path must take the path it names: the hypothesis tests of convolution,
    pooling and LRN rely on it to cover every path."""
    import tinynet as tn
    import tinynet.functional as F
    from conftest import conv_path

    from tinynet.cbuild import compiler

    pieces = []   # (kernel, thread name, images) of every piece
    modules = set()   # where the loops came from
    real = cpu_kernels.parallel_chunks

    def spy(fn, n, bytes_per_item, target_bytes=None):
        kernel = fn.__qualname__.split(".")[0]
        modules.add(fn.__module__)

        def traced(i0, i1):
            pieces.append((kernel, threading.current_thread().name, i1 - i0))
            return fn(i0, i1)

        return real(traced, n, bytes_per_item, target_bytes)

    monkeypatch.setattr(cpu_kernels, "parallel_chunks", spy)
    x = tn.tensor(np.random.default_rng(0).standard_normal((3, 4, 8, 8)), requires_grad=True)
    old = F.set_conv_algorithm("im2col")  # the im2col path's kernels (a 3x3 would run by Winograd)
    try:
        with conv_path(path):
            y = F.conv2d(x, tn.tensor(np.ones((4, 4, 3, 3)), requires_grad=True), padding=1)
            kept = y._creator.saved[2] is not None
            y = F.max_pool2d(F.local_response_norm(y), 2)
            y.sum().backward()
    finally:
        F.set_conv_algorithm(old)
    compiled = path != "numpy" and compiler() is not None
    # NumPy's max-pool backward is one np.add.at on the calling thread, not a shared-out pass
    assert {k for k, _, _ in pieces} == {"im2col", "col2im", "conv_output", "conv_grad_rows", "maxpool_forward",
                                         "lrn_forward", "lrn_backward"} | ({"maxpool_backward"} if compiled else set())
    im2col_images = [n for k, _, n in pieces if k == "im2col"]  # images, or channels of one image
    assert modules == {"tinynet.ops.cpu_loops" if compiled else "tinynet.ops.cpu_kernels"}
    assert kept == (path in ("whole", "numpy"))
    main = threading.current_thread().name
    if path == "threaded":  # one-image pieces, on the pool's workers and the calling thread
        assert all((name.startswith("tinynet-cpu") or name == main) and n == 1 for _, name, n in pieces)
    else:
        assert all(name == main for _, name, _ in pieces)
        # the convolution's own passes go chunk by chunk, the layers after it over the whole batch
        per_chunk = ("im2col", "col2im", "conv_output", "conv_grad_rows")
        assert all(n == 3 for k, _, n in pieces if k not in per_chunk)
    # whole: one im2col of 3 images (kept); chunked: one per image, twice (rebuilt), each shared
    # out by the image's 4 channels (one thread: one run of 4); threaded: 3 images, one a thread
    assert im2col_images == {"whole": [3], "chunked": [4] * 6, "threaded": [1] * 6, "numpy": [3]}[path]


# Run in a fresh process (the setting is process-wide): allocate and free 40 MB, and ask glibc
# (mallinfo2) where it lived: in its own mmap'd block, or in the heap, kept after the free.
MALLOC_PROBE = """
import ctypes, sys
import numpy as np
import tinynet as tn

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
accepted = tn.reuse_freed_memory() if sys.argv[1] == "reuse" else None
mmapped_before = libc.mallinfo2().hblkhd
a = np.ones((5000, 2000), np.float32)         # 40 MB: above glibc's mmap threshold
mmapped = libc.mallinfo2().hblkhd - mmapped_before
del a
kept = libc.mallinfo2().fordblks              # free bytes glibc keeps for reuse
assert np.ones((5000, 2000), np.float32).sum() == 1e7
print(accepted, mmapped, kept)
"""


def test_reuse_freed_memory_keeps_big_blocks_for_reuse():
    if platform.libc_ver()[0] != "glibc":
        import tinynet as tn

        assert tn.reuse_freed_memory() is False   # not glibc: nothing to do, and it says so
        pytest.skip(f"reuse_freed_memory acts on glibc only; this is {platform.libc_ver()}")
    if not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2 to look inside malloc")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def probe(mode):
        out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True,
                             text=True, cwd=root, timeout=120, check=True)
        accepted, mmapped, kept = out.stdout.split()
        return accepted, int(mmapped), int(kept)

    accepted, mmapped, kept = probe("default")
    assert mmapped >= 40e6 and kept < 40e6        # glibc's default: its own block, unmapped at free
    accepted, mmapped, kept = probe("reuse")
    assert accepted == "True"
    assert mmapped == 0 and kept >= 40e6          # now: from the heap, and kept after the free


BLAS_IDLE_PROBE = """
import os, sys, time
if sys.argv[1] == "openblas-default":
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "28"  # set before tinynet: kept, as a user's would be
import tinynet
import numpy as np
a = np.ones((768, 768), np.float32)
a @ a                                  # large enough for OpenBLAS to use its worker threads
t0 = time.process_time()
time.sleep(0.05)                       # this thread sleeps; any CPU time now is idle workers spinning
print(os.environ["OPENBLAS_THREAD_TIMEOUT"], time.process_time() - t0)
"""


def test_every_script_imports_tinynet_before_numpy():
    """The setting above takes effect only if tinynet comes before NumPy.  A benchmark whose bare
    step ran with spinning BLAS threads measured a slower step than the program it was compared
    with.  Each script's first module-level import of numpy, tinynet or the benchmarks package
    (whose __init__ imports tinynet) must not be numpy's."""
    import ast
    import glob

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "benchmarks", "__init__.py")) as f:
        assert any(isinstance(node, ast.Import) and node.names[0].name == "tinynet" for node in ast.parse(f.read()).body)
    scripts = glob.glob(os.path.join(root, "benchmarks", "*.py")) + glob.glob(os.path.join(root, "examples", "*.py"))
    assert len(scripts) > 5
    for path in scripts:
        if path.endswith("__init__.py"):
            continue
        with open(path) as f:
            text = f.read()
        if '__name__ == "__main__"' not in text:  # a module, imported as benchmarks.x: __init__ first
            continue
        body = ast.parse(text).body
        first = None
        for node in body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            tops = [name.split(".")[0] for name in names if name.split(".")[0] in ("numpy", "tinynet", "benchmarks")]
            if tops:
                first = tops[0]
                break
        assert first != "numpy", f"{os.path.relpath(path, root)} imports numpy before tinynet"


def test_importing_tinynet_lets_idle_blas_threads_sleep():
    """OpenBLAS's idle workers spin for ~0.1 s after a GEMM, taking a core from the elementwise
    passes between GEMMs; importing tinynet before NumPy makes them sleep at once, and a value
    the user set is kept.  Measured as the process's CPU time while its only busy thread
    sleeps just after a GEMM: the control (OpenBLAS's own default) shows the spin."""
    config = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    if "openblas" not in str(config.get("name", "")).lower():
        pytest.skip(f"NumPy's BLAS is {config.get('name')!r}, not OpenBLAS")
    if (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) < 2:
        pytest.skip("one core: OpenBLAS runs no worker threads")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}

    def probe(mode):
        out = subprocess.run([sys.executable, "-c", BLAS_IDLE_PROBE, mode], capture_output=True,
                             text=True, cwd=root, env=env, timeout=120, check=True)
        value, cpu = out.stdout.split()
        return value, float(cpu)

    value, spun = probe("openblas-default")
    assert value == "28"                              # the user's setting is kept
    if spun < 0.02:
        pytest.skip(f"this OpenBLAS's idle workers did not spin ({spun:.3f} s of CPU in 0.05 s)")
    value, idle = probe("tinynet")
    assert value == "4"
    assert idle < 0.01 < spun, (idle, spun)


def test_importing_tinynet_after_numpy_warns_and_says_so():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when it loads.  Imported after NumPy, with
    no value in the environment, tinynet cannot set it: it warns, naming the two ways out, and
    blas_kernels() (the training program's header, the benchmarks' machine line) says the idle
    threads spin.  Imported first, or with a value in the environment, it says nothing and
    blas_kernels() says where the value came from.  Each case in a fresh process."""
    if cpu_kernels._openblas_control() is None:
        pytest.skip(f"no OpenBLAS here: {cpu_kernels.blas_kernels()}")
    if (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) < 2:
        pytest.skip("one core: tinynet runs one thread, and warns of nothing")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS")}
    report = "from tinynet.ops import cpu_kernels as c; print(c.blas_kernels())"

    def run(imports, **env):
        out = subprocess.run([sys.executable, "-W", "default", "-c", imports + "; " + report], capture_output=True,
                             text=True, cwd=root, env={**base, **env}, timeout=120,
                             check=True)
        return out.stdout.strip(), out.stderr

    said, warned = run("import numpy; import tinynet", OPENBLAS_NUM_THREADS="2")
    assert "tinynet was imported after NumPy had loaded OpenBLAS" in warned
    assert "Import tinynet before numpy, or set OPENBLAS_THREAD_TIMEOUT=4" in warned
    assert said.endswith("its idle threads spin about 0.1 s after each product (OpenBLAS loaded before tinynet), "
                         "so tinynet runs its products on its own threads")
    said, warned = run("import tinynet; import numpy", OPENBLAS_NUM_THREADS="2")
    assert "RuntimeWarning" not in warned
    assert said.endswith("its idle threads sleep at once (OPENBLAS_THREAD_TIMEOUT=4, set by tinynet)")
    said, warned = run("import numpy; import tinynet", OPENBLAS_NUM_THREADS="2", OPENBLAS_THREAD_TIMEOUT="4")
    assert "RuntimeWarning" not in warned
    assert said.endswith("from the environment (OPENBLAS_THREAD_TIMEOUT=4)")
    said, warned = run("import numpy; import tinynet", OPENBLAS_NUM_THREADS="1")  # no workers to spin
    assert "RuntimeWarning" not in warned
    assert said.endswith("it runs one thread, so none idles")


# ----------------------------------------------------------------------------
# batched_matmul: a batch of products shared between the threads, one BLAS thread each
# ----------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 9), m=st.integers(1, 40), k=st.integers(1, 70), p=st.integers(1, 50),
       transposed=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_batched_matmul_gives_np_matmuls_numbers(threads, batch, m, k, p, transposed, dtype):
    """The same products as np.matmul, to the bit, on three threads (the route that splits,
    where OpenBLAS's thread count can be set), with a transposed operand as conv.py passes.
    (The thread fixture holds for every example: none changes the count.)"""
    rng = np.random.default_rng(batch * 1000 + m * 100 + k)
    a = rng.standard_normal((batch, m, k)).astype(dtype)
    b = rng.standard_normal((batch, p, k)).astype(dtype).transpose(0, 2, 1) if transposed else \
        rng.standard_normal((batch, k, p)).astype(dtype)
    out = np.full((batch, m, p), np.nan, dtype)
    assert cpu_kernels.batched_matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, np.matmul(a, b))
    fresh = cpu_kernels.batched_matmul(a, b)  # no out: a new array
    np.testing.assert_array_equal(fresh, np.matmul(a, b))
    assert fresh.dtype == dtype


def test_batched_matmul_puts_blas_threads_back_also_after_an_error(threads):
    control = cpu_kernels._openblas_control()
    if control is None:
        pytest.skip(f"no OpenBLAS thread control here: {cpu_kernels.batched_matmul_route()}")
    _, get_blas_threads = control
    before = get_blas_threads()
    assert "one product per thread" in cpu_kernels.batched_matmul_route()
    a, b = np.ones((4, 3, 5), np.float32), np.ones((4, 5, 2), np.float32)
    cpu_kernels.batched_matmul(a, b)
    assert get_blas_threads() == before
    with pytest.raises(ValueError):  # a wrong out shape fails inside the threads
        cpu_kernels.batched_matmul(a, b, out=np.empty((4, 3, 7), np.float32))
    assert get_blas_threads() == before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 40), k=st.integers(1, 70), p=st.integers(1, 50), transposed=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_rows_matmul_gives_np_matmuls_numbers(threads, m, k, p, transposed, dtype):
    """a @ b with a's rows shared between three threads (fewer rows than threads too), with a
    transposed a as the fully connected layers' weight gradient passes gy.T: within a dot
    product's rounding bound of np.matmul (a share of one or a few rows may take another of
    OpenBLAS's kernels, which can round a last bit apart)."""
    rng = np.random.default_rng(m * 10000 + k * 100 + p)
    a = rng.standard_normal((k, m)).astype(dtype).T if transposed else rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, p)).astype(dtype)
    out = cpu_kernels.rows_matmul(a, b)
    bound = (k + 1) * np.finfo(dtype).eps * (np.abs(a) @ np.abs(b))
    assert np.all(np.abs(out - np.matmul(a, b)) <= bound)
    assert out.dtype == dtype and out.flags.c_contiguous and out.shape == (m, p)


def test_rows_matmul_puts_blas_threads_back_and_with_one_thread_is_np_matmul(threads, monkeypatch):
    control = cpu_kernels._openblas_control()
    if control is None:
        pytest.skip(f"no OpenBLAS thread control here: {cpu_kernels.batched_matmul_route()}")
    before = control[1]()
    a, b = np.ones((6, 5), np.float32), np.ones((5, 2), np.float32)
    np.testing.assert_array_equal(cpu_kernels.rows_matmul(a, b), np.full((6, 2), 5, np.float32))
    assert control[1]() == before
    with pytest.raises(ValueError):  # mismatched inner sizes fail inside the threads
        cpu_kernels.rows_matmul(a, np.ones((4, 2), np.float32))
    assert control[1]() == before
    cpu_kernels.set_num_threads(1)
    monkeypatch.setattr(cpu_kernels, "_openblas_control", lambda: pytest.fail("thread count touched"))
    np.testing.assert_array_equal(cpu_kernels.rows_matmul(a, b), np.full((6, 2), 5, np.float32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 60), k=st.integers(1, 70), n=st.integers(1, 60), transposed=st.booleans(),
       batch_of_one=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_matmul_where_blas_threads_spin_shares_the_product_and_gives_its_numbers(threads, monkeypatch, m, k, n,
                                                                                  transposed, batch_of_one, dtype):
    """Where OpenBLAS's idle threads spin (NumPy imported first), a single product (linear's,
    and a convolution's batch of one: conv1) runs on tinynet's threads, a run of the output's
    columns or rows each, on one BLAS thread.  Every entry is one whole dot product, so the
    numbers are np.matmul's up to the rounding of another of OpenBLAS's kernels; OpenBLAS's
    thread count comes back; elsewhere it is np.matmul, the count never touched."""
    control = cpu_kernels._openblas_control()
    if control is None:
        pytest.skip(f"no OpenBLAS thread control here: {cpu_kernels.batched_matmul_route()}")
    rng = np.random.default_rng(m * 10000 + k * 100 + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T if transposed else rng.standard_normal((k, n)).astype(dtype)
    want = np.matmul(a, b)
    tol = dict(rtol=1e-5, atol=1e-5 * np.sqrt(k)) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12 * np.sqrt(k))
    before = control[1]()
    shares = []
    real = cpu_kernels._on_one_blas_thread_each
    monkeypatch.setattr(cpu_kernels, "_on_one_blas_thread_each", lambda c, run, size: (shares.append(size), real(c, run, size)))
    monkeypatch.setitem(cpu_kernels._blas, "timeout", "default")
    got = cpu_kernels.batched_matmul(a[None], b[None])[0] if batch_of_one else cpu_kernels.matmul(a, b)
    np.testing.assert_allclose(got, want, **tol)
    assert shares == [max(m, n)]  # shared out along the longer side of the output
    assert control[1]() == before
    monkeypatch.setitem(cpu_kernels._blas, "timeout", "tinynet")  # idle threads sleep: np.matmul's own threads
    shares.clear()
    np.testing.assert_array_equal(cpu_kernels.matmul(a, b), want)
    assert shares == []


def test_importing_numpy_first_a_training_step_leaves_blas_threads_asleep():
    """The point of matmul's route: in a process that imported NumPy first, a training step of
    a small net with a convolution of one group (by im2col) and a fully connected layer, at
    sizes OpenBLAS shares between its threads, leaves no OpenBLAS thread spinning after it;
    a plain product does (else this OpenBLAS does not spin, and there is nothing to show)."""
    if cpu_kernels._openblas_control() is None:
        pytest.skip(f"no OpenBLAS here: {cpu_kernels.blas_kernels()}")
    if (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) < 2:
        pytest.skip("one core: OpenBLAS runs no worker threads")
    code = """
import numpy as np
import time
import tinynet as tn
import tinynet.functional as F
rng = np.random.default_rng(0)
x = tn.tensor(rng.standard_normal((64, 3, 40, 40)).astype(np.float32))
w = tn.tensor(rng.standard_normal((64, 3, 5, 5)).astype(np.float32) * 0.1, requires_grad=True)
v = tn.tensor(rng.standard_normal((10, 64 * 18 * 18)).astype(np.float32) * 0.01, requires_grad=True)
labels = np.arange(64) % 10
def idle():  # CPU time of the process while this thread sleeps: idle workers spinning
    t0 = time.process_time()
    time.sleep(0.05)
    return time.process_time() - t0
def step():
    loss = F.cross_entropy(F.linear(F.flatten(F.conv2d(x, w, stride=2, relu=True)), v), labels)
    loss.backward()
step()
time.sleep(0.3)  # any spinning from the first step's setup runs out
step()
after_step = idle()
a = np.ones((768, 768), np.float32)
a @ a
print(after_step, idle())
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=root,
                         env=env, timeout=300, check=True)
    after_step, after_product = (float(v) for v in out.stdout.split())
    if after_product < 0.02:
        pytest.skip(f"this OpenBLAS's idle workers did not spin ({after_product:.3f} s of CPU in 0.05 s)")
    assert after_step < 0.01 < after_product, (after_step, after_product)


def test_batched_matmul_with_one_thread_is_np_matmul(monkeypatch):
    """One tinynet thread: no split, and OpenBLAS's thread count is never touched."""
    old = cpu_kernels.get_num_threads()
    cpu_kernels.set_num_threads(1)
    monkeypatch.setattr(cpu_kernels, "_openblas_control", lambda: pytest.fail("thread count touched"))
    try:
        a, b = np.ones((4, 3, 5), np.float32), np.ones((4, 5, 2), np.float32)
        np.testing.assert_array_equal(cpu_kernels.batched_matmul(a, b), np.full((4, 3, 2), 5, np.float32))
        assert cpu_kernels.batched_matmul_route() == "np.matmul: tinynet has one thread"
    finally:
        cpu_kernels.set_num_threads(old)


def test_blas_kernels_names_the_kernels_openblas_chose_and_the_setting_that_chose_them():
    """OpenBLAS picks its kernels when it loads, unless OPENBLAS_CORETYPE names some; the training
    program prints blas_kernels(), so a run on kernels narrower than its processor's says so.
    Each case in a fresh process: the variable counts only before NumPy loads OpenBLAS."""
    if cpu_kernels._openblas_control() is None:
        pytest.skip(f"no OpenBLAS here: {cpu_kernels.blas_kernels()}")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the Haswell kernels are x86-64's")
    code = "import tinynet.ops.cpu_kernels as c; print(c.blas_kernels())"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    said = subprocess.run([sys.executable, "-c", code], env={**env, "OPENBLAS_CORETYPE": "Haswell"},
                          capture_output=True, text=True, check=True).stdout.strip()
    kernels = said.split("; ")[0]  # then what its idle threads do (the test above)
    assert kernels == "OpenBLAS's Haswell kernels, with OPENBLAS_CORETYPE=Haswell set in the environment"
    said = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    kernels = said.split("; ")[0]
    assert kernels.startswith("OpenBLAS's ") and kernels.endswith(" kernels") and "environment" not in kernels, said
