"""Files written whole or not at all: checkpoints, a run's metrics, data caches, built kernels.

Every such file is written the same way, by ``replace_atomically(path, write)``:

1. ``write(tmp)`` makes the new content under a temporary name beside ``path`` (same folder,
   so the same file system), ``.<name>.tmp-<host>-<pid>-<8 hex digits>``;
2. the temporary file is flushed to the disk (fsync);
3. ``os.replace`` renames it over ``path`` in one step, and the folder is fsynced so that the
   rename itself survives a power loss.

A reader (another process, or the next run) therefore sees either the old file or the new
one, never half of one.  If ``write`` fails, the temporary file is removed and the error
goes on.  A writer killed mid-write (SIGKILL, out of memory) leaves its temporary file
behind; the next write into that folder removes it once its process is gone (same host and
process-id namespace) or after a day (another host, whose processes cannot be asked), and
says so.

New files get the permissions of any new file, 0666 less the umask (``create``), so a job
under another account in the same group can read a run's files.  (``tempfile.mkstemp``
would give 0600.)
"""

import errno
import os
import re
import secrets
import socket
import time
import warnings

# .latest.npz.tmp-<host>-<pid>-<8 hex digits>: the temporary file of one write
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
# a temporary file from another host is taken for orphaned after this long untouched
FOREIGN_TEMP_AGE = 24 * 3600


def create(path, binary=True):
    """A new file at ``path``, open for writing; refuses to open one that exists (O_EXCL).
    Mode 0666 before the umask, as ``open()`` gives any new file.  (O_BINARY: on Windows a
    descriptor is otherwise in text mode, and every newline byte would become two.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (getattr(os, "O_BINARY", 0) if binary else 0)
    return os.fdopen(os.open(path, flags, 0o666), "wb" if binary else "w")


def replace_atomically(path, write, keep_existing=False):
    """Call ``write(tmp)`` to make a temporary file beside ``path``, make it durable, then
    rename it over ``path``; on any failure remove it and re-raise.  Returns ``path``.

    ``keep_existing``: if ``path`` exists by then (another process made it meanwhile), keep
    that one and drop ours, so a file another process may have open (a loaded library, on a
    network file system) is never replaced under it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_orphaned_temp_files(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{host()}-{os.getpid()}-"
                               f"{secrets.token_hex(4)}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the bytes on the disk before the name points at them
            os.fsync(f.fileno())
        if keep_existing:
            _link_unless_there(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(folder)  # the rename is an entry in the folder: make it durable too
    return path


def _link_unless_there(tmp, path):
    """Give ``tmp``'s file the name ``path`` unless a file has that name already; ``tmp`` goes."""
    try:
        os.link(tmp, path)       # fails if path exists: the first file to land stays
    except FileExistsError:
        pass
    except OSError:              # no hard links on this file system: a rename, if still needed
        if not os.path.exists(path):
            os.replace(tmp, path)
            return
    os.unlink(tmp)


def write_atomically(path, dump, binary=True, keep_existing=False):
    """``dump(f)`` writes the whole content into an open file ``f``; ``path`` then holds it, or
    (on failure) what it held before.  ``keep_existing``: as replace_atomically's.  Returns
    ``path``."""
    def write(tmp):
        with create(tmp, binary) as f:
            dump(f)
    return replace_atomically(path, write, keep_existing=keep_existing)


def host():
    """Who may ask whether a writer's process is alive, as it may appear in a file name: this
    machine's name and, on Linux, its process-id namespace (containers that share a host name
    but not their process ids are different hosts here)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    try:
        return f"{name}~{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux, or no /proc
        return name


def fsync_folder(folder):
    """Flush a folder's entries (a rename, a new file) to the disk (POSIX; Windows cannot
    open a folder for that, and its file system journals renames itself).  Some network and
    FUSE file systems refuse to flush a folder (EINVAL and the like): the rename is done and
    stays, only without that guarantee."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EACCES, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _process_alive(pid):
    """True or False; None where this system cannot tell (Windows: signal 0 is Ctrl+C there)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another account
        return True
    return True


def remove_orphaned_temp_files(folder):
    """Remove temporary files in ``folder`` whose writer is gone: on this host, its process
    no longer runs; from another host, untouched for a day.  Returns the names removed (and
    warns with them, so nothing disappears unsaid)."""
    removed, kept = [], []
    for name in os.listdir(folder):
        m = _TEMP_NAME.match(name)
        if m is None:
            continue
        full = os.path.join(folder, name)
        try:
            alive = _process_alive(int(m["pid"])) if m["host"] == host() else None
            if alive is None:  # another host, or no way to ask: by age
                orphaned = time.time() - os.stat(full).st_mtime > FOREIGN_TEMP_AGE
            else:
                orphaned = not alive
            if orphaned:
                os.unlink(full)
                removed.append(name)
        except FileNotFoundError:  # its writer finished (renamed it) or another cleaner was first
            continue
        except OSError as e:       # e.g. another user's file in a shared folder: not ours to remove
            kept.append(f"{name} ({e.strerror or e})")
    if removed:
        warnings.warn(f"removed {len(removed)} temporary file(s) left in {folder} by a writer "
                      f"that was killed: {', '.join(sorted(removed))}", stacklevel=3)
    if kept:
        warnings.warn(f"could not remove {len(kept)} temporary file(s) left in {folder} by a "
                      f"writer that was killed: {', '.join(sorted(kept))}", stacklevel=3)
    return removed
