"""Checkpoint files (and a run's metrics file) on disk: durable renames, ordinary permissions, no
leftovers after a kill.

(What a checkpoint holds, and atomicity when a write fails, are tested in test_alexnet.py.)
"""

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tinynet.checkpoint as ckpt
from tinynet import files, nn
from tinynet.checkpoint import load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def umask():
    """Set a umask for the test; the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_has_the_permissions_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "latest.npz"
    save_checkpoint(str(path), nn.Linear(3, 2))
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


@pytest.mark.skipif(os.name != "posix", reason="a folder is fsynced on POSIX only")
def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    """The rename lives in the folder: until the folder is flushed, a power loss can bring back
    the old checkpoint (or none) although save_checkpoint has returned."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                       else fd, stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "latest.npz"
    save_checkpoint(str(path), nn.Linear(3, 2))
    kinds = [e[0] for e in events]
    assert "replace" in kinds
    after = events[kinds.index("replace") + 1:]
    folder_syncs = [e for e in after if e[0] == "fsync" and e[2]]
    assert folder_syncs, f"no fsync of the folder after the rename: {events}"
    if os.path.exists("/proc/self/fd"):
        assert folder_syncs[0][1] == os.path.realpath(tmp_path)


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    import tinynet.checkpoint as ckpt
    from tinynet import nn

    def stuck(f, **arrays):          # half a file written, then the process is killed
        f.write(b"PK\\x03\\x04 half a zip file")
        f.flush()
        print("writing", flush=True)
        time.sleep(120)

    ckpt.np.savez = stuck
    ckpt.save_checkpoint({path!r}, nn.Linear(3, 2))
""")


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_save(tmp_path):
    path = tmp_path / "latest.npz"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(root=ROOT, path=str(path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".latest.npz.tmp-")]
        assert len(leftovers) == 1 and f"-{writer.pid}-" in leftovers[0]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert os.listdir(tmp_path) == leftovers                 # SIGKILL: nothing could clean up
    with pytest.warns(UserWarning, match=r"removed 1 temporary file\(s\).*" + leftovers[0]):
        save_checkpoint(str(path), nn.Linear(3, 2), meta={"run": 2})
    assert os.listdir(tmp_path) == ["latest.npz"]
    assert load_checkpoint(str(path))["meta"]["run"] == 2


def test_temp_files_of_live_writers_and_other_files_are_kept(tmp_path):
    host = files.host()
    live = f".latest.npz.tmp-{host}-{os.getpid()}-0123abcd"          # this process: alive
    fresh_foreign = ".latest.npz.tmp-elsewhere-7-89abcdef"            # another host, just written
    old_foreign = ".best.npz.tmp-elsewhere-8-00000000"                # another host, a day old
    unrelated = [".tmp-notes", "latest.npz.tmp-x-1-0000000g", "data.npz"]
    for name in [live, fresh_foreign, old_foreign, *unrelated]:
        (tmp_path / name).write_bytes(b"x")
    day_ago = time.time() - files.FOREIGN_TEMP_AGE - 60
    os.utime(tmp_path / old_foreign, (day_ago, day_ago))
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        assert files.remove_orphaned_temp_files(str(tmp_path)) == [old_foreign]
    assert sorted(os.listdir(tmp_path)) == sorted([live, fresh_foreign, *unrelated])


def test_a_temp_file_of_a_finished_process_on_this_host_is_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    name = f".latest.npz.tmp-{files.host()}-{int(done.stdout)}-0123abcd"
    (tmp_path / name).write_bytes(np.zeros(3).tobytes())
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        assert files.remove_orphaned_temp_files(str(tmp_path)) == [name]
    assert os.listdir(tmp_path) == []


def test_a_file_that_is_not_a_checkpoint_is_named_in_our_words(tmp_path):
    from tinynet.checkpoint import load_checkpoint

    for name, content in (("notes.txt", b"hello\n"), ("empty.npz", b""), ("fake.npz", b"\x93NUMPY")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match="is not a tinynet checkpoint") as info:
            load_checkpoint(str(path))
        assert "pickle" not in str(info.value)


@pytest.mark.parametrize("links", [True, False])
def test_a_linked_checkpoint_keeps_its_weights_when_the_source_is_saved_again(tmp_path, monkeypatch, links):
    """best.npz made from latest.npz without a second write: the same bytes, and a later save of
    latest.npz (a new file under the old name) leaves them alone; without hard links, a copy."""
    if not links:
        def no_link(src, dst):
            raise OSError("no hard links on this file system")
        monkeypatch.setattr(os, "link", no_link)
    model = nn.Linear(3, 2)
    latest, best = tmp_path / "latest.npz", tmp_path / "best.npz"
    save_checkpoint(str(latest), model, meta=dict(step=1))
    before = latest.read_bytes()
    ckpt.link_checkpoint(str(latest), str(best))
    assert best.read_bytes() == before
    assert (os.stat(best).st_ino == os.stat(latest).st_ino) == links
    model.weight.data[...] += 1.0
    save_checkpoint(str(latest), model, meta=dict(step=2))
    assert best.read_bytes() == before and latest.read_bytes() != before
    assert load_checkpoint(str(best))["meta"]["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "latest.npz"]   # no temporary file left


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_runs_metrics_file_has_the_permissions_the_umask_gives(tmp_path, umask, mask, mode):
    """metrics.jsonl is replaced atomically too, and readable like the run's other files."""
    from tinynet import runs

    umask(mask)
    path = tmp_path / "metrics.jsonl"
    runs.write_metrics(str(path), [dict(kind="train", step=1, loss=2.0)])
    runs.write_metrics(str(path), [dict(kind="train", step=1, loss=1.5)])
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert path.read_text() == '{"kind": "train", "step": 1, "loss": 1.5}\n'
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize("writer", ["checkpoint", "metrics", "npy cache", "json cache"])
def test_every_atomic_writer_gives_the_umask_mode_and_leaves_no_temp_file(tmp_path, umask, writer):
    """Checkpoints, metrics and the data caches all go through tinynet.files: 0666 less the
    umask (not mkstemp's 0600), and nothing but the file itself left in the folder."""
    from tinynet import runs
    from tinynet.data.dataset import save_json_atomic, save_npy_atomic

    write = {"checkpoint": lambda p: save_checkpoint(p, nn.Linear(3, 2)),
             "metrics": lambda p: runs.write_metrics(p, [dict(step=1)]),
             "npy cache": lambda p: save_npy_atomic(p, np.arange(3)),
             "json cache": lambda p: save_json_atomic(p, {"a": 1})}[writer]
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        umask(mask)
        path = tmp_path / f"out-{mask:o}"
        write(str(path))
        write(str(path))                       # the second write replaces the first
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert sorted(os.listdir(tmp_path)) == ["out-22", "out-77"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = tmp_path / "cache.json"
    files.write_atomically(str(path), lambda f: f.write("old"), binary=False)

    def half_then_fail(f):
        f.write("new, but only h")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        files.write_atomically(str(path), half_then_fail, binary=False)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["cache.json"]


def test_a_failed_kernel_build_leaves_no_temp_file(tmp_path, monkeypatch):
    from tinynet import cbuild

    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++\n")
    if cbuild.compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setattr(cbuild, "build_folder", lambda *a: str(tmp_path / "build"))
    with pytest.raises(RuntimeError, match="failed on"):
        cbuild.build_library("test", "broken", str(source), [str(source)], ["-shared", "-fPIC"])
    assert os.listdir(tmp_path / "build") == []


def test_a_leftover_that_cannot_be_removed_is_named_and_the_write_goes_on(tmp_path, monkeypatch):
    """Another user's leftover in a shared (sticky) folder: unlink is refused; our write still
    happens, and the warning names the file it could not remove."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    theirs = f".cache.json.tmp-{files.host()}-{int(done.stdout)}-0123abcd"
    (tmp_path / theirs).write_bytes(b"x")
    real_unlink = os.unlink

    def refuse(path, *a, **k):
        if os.path.basename(path) == theirs:
            raise PermissionError(1, "Operation not permitted")
        return real_unlink(path, *a, **k)
    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.warns(UserWarning, match=r"could not remove 1 temporary file.*" + re.escape(theirs)):
        files.write_atomically(str(tmp_path / "cache.json"), lambda f: f.write("{}"), binary=False)
    assert (tmp_path / "cache.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == sorted(["cache.json", theirs])


def test_keep_existing_keeps_the_file_that_landed_first(tmp_path):
    """Two processes build the same kernel library: the second keeps the first one's file (a
    process may have it loaded) and leaves no temporary file."""
    path = tmp_path / "lib.so"

    def build_while_another_lands(tmp):
        path.write_bytes(b"first")          # the other process's build lands meanwhile
        with open(tmp, "wb") as f:
            f.write(b"second")
    files.replace_atomically(str(path), build_while_another_lands, keep_existing=True)
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["lib.so"]
    path.unlink()
    files.replace_atomically(str(path), lambda tmp: open(tmp, "wb").close(), keep_existing=True)
    assert path.exists() and os.listdir(tmp_path) == ["lib.so"]


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="Linux process-id namespaces")
def test_the_writer_id_names_the_process_id_namespace():
    """Containers may share a host name but not process ids: a writer's pid is only asked
    about from its own namespace."""
    assert files.host().endswith(f"~{os.stat('/proc/self/ns/pid').st_ino}")


@pytest.mark.skipif(os.name != "posix", reason="folders are flushed on POSIX only")
def test_a_folder_that_cannot_be_flushed_is_not_an_error(tmp_path, monkeypatch):
    import errno

    def fsync(fd, code):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "fsync", lambda fd: fsync(fd, errno.EINVAL))
    files.fsync_folder(str(tmp_path))            # a file system that cannot flush folders
    monkeypatch.setattr(os, "fsync", lambda fd: fsync(fd, errno.EIO))
    with pytest.raises(OSError, match=os.strerror(errno.EIO)):
        files.fsync_folder(str(tmp_path))        # a real I/O error still says so


def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    """The build cache keeps each library's sha256: one whose bytes changed since (cut short by a
    full disk, copied in part) is built again, with a warning, instead of loaded (a cut-short
    library crashed every process that loaded it)."""
    import ctypes

    from tinynet import cbuild

    if cbuild.compiler() is None:
        pytest.skip("no C++ compiler")
    source = tmp_path / "tiny.cpp"
    source.write_text('extern "C" int forty_two() { return 42; }\n')
    monkeypatch.setattr(cbuild, "build_folder", lambda *a: str(tmp_path / "build"))
    args = ("test", "tiny", str(source), [str(source)], ["-shared", "-fPIC"])
    path = cbuild.build_library(*args)
    assert os.path.exists(path + ".sha256")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.warns(RuntimeWarning, match="does not match the sha256 written when it was built"):
        again = cbuild.build_library(*args)
    assert again == path and ctypes.CDLL(path).forty_two() == 42


def test_the_build_cache_tells_compilers_apart_by_version(monkeypatch):
    from tinynet import cbuild

    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels", "cpu_loops.cpp")
    monkeypatch.setattr(cbuild, "_versions", {"/usr/bin/c++": "c++ 12.2.0"})
    first = cbuild.build_folder("x", "/usr/bin/c++", ["-O3"], [source])
    monkeypatch.setattr(cbuild, "_versions", {"/usr/bin/c++": "c++ 13.1.0"})
    assert cbuild.build_folder("x", "/usr/bin/c++", ["-O3"], [source]) != first
