"""Checkpoints: one .npz file, written atomically, loaded without pickle.

Layout of the archive (every entry a plain array):
    model/<name>           the model's state_dict, e.g. model/conv1.weight
    optim/velocity/<i>     the optimiser's momentum buffers, in parameter order
    meta                   UTF-8 JSON (as uint8): format version, epoch, step,
                           optimiser hyper-parameters, scheduler and RNG states,
                           the run's configuration

Loading uses ``np.load(allow_pickle=False)``, so a checkpoint can never run
code.  Writing goes to a temporary file in the same folder, flushed and
fsynced, then ``os.replace``d over the target, and the folder is fsynced so
that the rename itself survives a power loss: a crash leaves either the old
or the new checkpoint, never half of one.

The file gets the permissions of any new file (0666 less the umask), so a
job under another account in the same group can read it.  The temporary
file is named ``.<name>.tmp-<host>-<pid>-<random>``: a writer killed
mid-write (SIGKILL, out of memory) leaves it behind, and the next save in
that folder removes it once its process is gone (same host) or after a day
(another host, whose processes cannot be asked).
"""

import json
import os
import re
import secrets
import socket
import time
import warnings
import zipfile

import numpy as np

FORMAT_VERSION = 1

# .latest.npz.tmp-<host>-<pid>-<8 hex digits>: the temporary file of one write
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
# a temporary file from another host is taken for orphaned after this long untouched
_FOREIGN_TEMP_AGE = 24 * 3600


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Write model (and optimiser) state plus a JSON-able ``meta`` dict."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    meta["format_version"] = FORMAT_VERSION
    if optimizer is not None:
        state = optimizer.state_dict()
        for i, v in enumerate(state.pop("velocity")):
            arrays[f"optim/velocity/{i}"] = v
        meta["optimizer"] = state
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    def write(tmp):
        # mode 0o666 before the umask, as open() gives any new file (mkstemp would give 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())

    return _replace_atomically(path, write)


def link_checkpoint(source, path):
    """Make ``path`` the same checkpoint as ``source``, atomically, without writing it again:
    a hard link where the file system has them, else a copy.  (The training program's
    best.npz, when the latest weights are the best: a later save of ``source`` replaces its
    name with a new file, and ``path`` keeps these bytes.)"""
    import shutil

    def write(tmp):
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    return _replace_atomically(path, write)


def _replace_atomically(path, write):
    """write(tmp) makes a temporary file beside ``path``; it then replaces ``path`` in one rename
    (and the folder is fsynced), or is removed if anything failed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_orphaned_temp_files(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{_host()}-{os.getpid()}-"
                               f"{secrets.token_hex(4)}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)  # the rename is an entry in the folder: make it durable too
    return path


def _host():
    """This machine's name as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _fsync_folder(folder):
    """Flush a folder's entries (a rename, a new file) to the disk (POSIX; Windows cannot
    open a folder for that, and its file system journals renames itself)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another account
        return True
    return True


def remove_orphaned_temp_files(folder):
    """Remove temporary checkpoint files in ``folder`` whose writer is gone: on this host,
    its process no longer runs; from another host, untouched for a day.  Returns the names
    removed (and warns with them, so nothing disappears unsaid)."""
    removed = []
    for name in os.listdir(folder):
        m = _TEMP_NAME.match(name)
        if m is None:
            continue
        full = os.path.join(folder, name)
        try:
            if m["host"] == _host():
                orphaned = not _process_alive(int(m["pid"]))
            else:
                orphaned = time.time() - os.stat(full).st_mtime > _FOREIGN_TEMP_AGE
            if orphaned:
                os.unlink(full)
                removed.append(name)
        except FileNotFoundError:  # its writer finished (renamed it) or another cleaner was first
            continue
    if removed:
        warnings.warn(f"save_checkpoint: removed {len(removed)} temporary file(s) left in {folder} "
                      f"by a writer that was killed: {', '.join(sorted(removed))}", stacklevel=3)
    return removed


def load_checkpoint(path):
    """Read a checkpoint: returns dict(model=state_dict, velocity=[...], meta=dict)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # every .npz is a zip archive, and every zip starts so
        kind = "an empty file" if not head else f"a file that starts with {head!r}"
        raise ValueError(f"load_checkpoint: {path} is not a tinynet checkpoint: it is {kind}, "
                         "not the .npz archive that training writes (latest.npz or best.npz)")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a lone .npy array, not an archive
            raise ValueError("a single array, not an .npz archive")
        with z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("its meta entry is not a JSON object")
            model = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
            vel_keys = sorted((k for k in z.files if k.startswith("optim/velocity/")),
                              key=lambda k: int(k.rsplit("/", 1)[1]))
            velocity = [z[k] for k in vel_keys]
    # EOFError: empty file; BadZipFile: truncated or damaged archive
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"load_checkpoint: {path} is not a tinynet checkpoint ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"load_checkpoint: {path} has format version {meta.get('format_version')}, "
            f"this tinynet reads version {FORMAT_VERSION}"
        )
    return {"model": model, "velocity": velocity, "meta": meta}


def restore(checkpoint, model, optimizer=None):
    """Load a checkpoint dict (from load_checkpoint) into model and optimiser."""
    model.load_state_dict(checkpoint["model"])
    if optimizer is not None and "optimizer" in checkpoint["meta"]:
        state = dict(checkpoint["meta"]["optimizer"], velocity=checkpoint["velocity"])
        optimizer.load_state_dict(state)
    return checkpoint["meta"]
