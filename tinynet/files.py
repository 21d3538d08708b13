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
behind; the next write into that folder removes it once its process is gone (same host) or
after a day (another host, whose processes cannot be asked), and says so.

New files get the permissions of any new file, 0666 less the umask (``create``), so a job
under another account in the same group can read a run's files.  (``tempfile.mkstemp``
would give 0600.)
"""

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
    Mode 0666 before the umask, as ``open()`` gives any new file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, "wb" if binary else "w")


def replace_atomically(path, write):
    """Call ``write(tmp)`` to make a temporary file beside ``path``, make it durable, then
    rename it over ``path``; on any failure remove it and re-raise.  Returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_orphaned_temp_files(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{host()}-{os.getpid()}-"
                               f"{secrets.token_hex(4)}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the bytes on the disk before the name points at them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(folder)  # the rename is an entry in the folder: make it durable too
    return path


def write_atomically(path, dump, binary=True):
    """``dump(f)`` writes the whole content into an open file ``f``; ``path`` then holds it, or
    (on failure) what it held before.  Returns ``path``."""
    def write(tmp):
        with create(tmp, binary) as f:
            dump(f)
    return replace_atomically(path, write)


def host():
    """This machine's name as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def fsync_folder(folder):
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
    """Remove temporary files in ``folder`` whose writer is gone: on this host, its process
    no longer runs; from another host, untouched for a day.  Returns the names removed (and
    warns with them, so nothing disappears unsaid)."""
    removed = []
    for name in os.listdir(folder):
        m = _TEMP_NAME.match(name)
        if m is None:
            continue
        full = os.path.join(folder, name)
        try:
            if m["host"] == host():
                orphaned = not _process_alive(int(m["pid"]))
            else:
                orphaned = time.time() - os.stat(full).st_mtime > FOREIGN_TEMP_AGE
            if orphaned:
                os.unlink(full)
                removed.append(name)
        except FileNotFoundError:  # its writer finished (renamed it) or another cleaner was first
            continue
    if removed:
        warnings.warn(f"removed {len(removed)} temporary file(s) left in {folder} by a writer "
                      f"that was killed: {', '.join(sorted(removed))}", stacklevel=3)
    return removed
