"""The CPU kernels' thread pool (tinynet/ops/cpu_kernels.py)."""

import threading
import time

import numpy as np
import pytest

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
