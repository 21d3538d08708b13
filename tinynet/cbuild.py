"""Building C++ from ``kernels/`` into a shared library, once per source version.

Two parts of tinynet compile C++ at first use: the CPU's compiled loops
(``kernels/cpu_loops.cpp``, see ``tinynet.ops.cpu_loops``) and the CUDA
kernels run on an emulated grid (``tinynet.cuda.emulate``).  Both go through
``build_library``, which puts the result in a cache folder named by a hash of
the compiler, the flags and every source file:

    ~/.cache/tinynet/<what>/<hash>/<name>.so      (or $XDG_CACHE_HOME/tinynet/...)

so a changed source or flag builds again, and an unchanged one is reused.
The compiler enters the hash by its path and the first line of its
``--version`` (another compiler installed at the same path builds anew).
The library is built under a temporary name and renamed into place, so two
processes building at once (MPI ranks) never load a half-written file; its
sha256 is written beside it (``<name>.so.sha256``) before it takes its name,
and a cached library whose bytes no longer match (a damaged disk, a cache
copied in part) is built again, with a warning, instead of loaded.
"""

import hashlib
import os
import shutil
import subprocess
import warnings

from . import files


def kernel_path(filename):
    """Where ``kernels/<filename>`` is: inside the installed package
    (``tinynet/kernels``, copied there by setup.py) or in the checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "kernels"), os.path.join(os.path.dirname(here), "kernels")):
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"tinynet: kernel source {filename} not found next to the package")


def compiler():
    """The host C++ compiler: $CXX, else g++, c++ or clang++ on PATH; None if there is none."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)
    return None


_versions = {}  # compiler path -> the first line of its --version, asked once per process


def compiler_identity(cxx):
    """The compiler's path and the first line of its ``--version`` ("g++ (Debian 12.2.0-14) 12.2.0")."""
    if cxx not in _versions:
        try:
            out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        _versions[cxx] = (out.splitlines() or ["unknown version"])[0]
    return f"{cxx} ({_versions[cxx]})"


def build_folder(what, cxx, flags, sources):
    """The cache folder for this compiler, these flags and these sources (paths)."""
    digest = hashlib.sha256(" ".join([compiler_identity(cxx)] + list(flags)).encode())
    for path in sources:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "tinynet", what, digest.hexdigest()[:16])


def build_library(what, name, main_source, sources, flags, cxx=None):
    """Compile ``main_source`` (which includes the rest of ``sources``) with
    ``flags`` into ``<cache>/<what>/<hash>/<name>.so`` unless it is there;
    return its path.  Raises RuntimeError with the compiler's messages if the
    build fails, or if there is no compiler."""
    cxx = cxx or compiler()
    if cxx is None:
        raise RuntimeError(f"tinynet: building {what}/{name}.so needs a C++ compiler, and none was found "
                           "(set CXX, or install g++ or clang++)")
    folder = build_folder(what, cxx, flags, sources)
    path = os.path.join(folder, name + ".so")
    digest_path = path + ".sha256"
    if os.path.exists(path) and not _intact(path, digest_path):
        warnings.warn(f"tinynet: {path} does not match the sha256 written when it was built (damaged, "
                      f"or left by an older tinynet); building it again", RuntimeWarning, stacklevel=3)
        for stale in (path, digest_path):
            if os.path.exists(stale):
                os.unlink(stale)  # a process that has it loaded keeps its copy (Linux)
    if not os.path.exists(path):
        def build(tmp):  # built aside, then renamed: another process never loads half a library
            result = subprocess.run([cxx] + list(flags) + [main_source, "-o", tmp],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"tinynet: {os.path.basename(cxx)} failed on {main_source}:\n"
                                   f"{result.stderr}")
            # the digest first (kept if another process wrote its own), then the library's name
            digest = _sha256(tmp)
            files.write_atomically(digest_path, lambda f: f.write(digest), binary=False, keep_existing=True)
        files.replace_atomically(path, build, keep_existing=True)  # never under a loaded copy
    return path


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _intact(path, digest_path):
    """Whether the library at `path` has the bytes its digest file says it was built with."""
    try:
        with open(digest_path) as f:
            return f.read().strip() == _sha256(path)
    except OSError:
        return False
