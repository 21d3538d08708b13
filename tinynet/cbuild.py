"""Building C++ from ``kernels/`` into a shared library, once per source version.

Two parts of tinynet compile C++ at first use: the CPU's compiled loops
(``kernels/cpu_loops.cpp``, see ``tinynet.ops.cpu_loops``) and the CUDA
kernels run on an emulated grid (``tinynet.cuda.emulate``).  Both go through
``build_library``, which puts the result in a cache folder named by a hash of
the compiler, the flags and every source file:

    ~/.cache/tinynet/<what>/<hash>/<name>.so      (or $XDG_CACHE_HOME/tinynet/...)

so a changed source or flag builds again, and an unchanged one is reused.
The library is built under a temporary name and renamed into place, so two
processes building at once (MPI ranks) never load a half-written file.
"""

import hashlib
import os
import shutil
import subprocess

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


def build_folder(what, cxx, flags, sources):
    """The cache folder for this compiler, these flags and these sources (paths)."""
    digest = hashlib.sha256(" ".join([cxx] + list(flags)).encode())
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
    if not os.path.exists(path):
        def build(tmp):  # built aside, then renamed: another process never loads half a library
            result = subprocess.run([cxx] + list(flags) + [main_source, "-o", tmp],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"tinynet: {os.path.basename(cxx)} failed on {main_source}:\n"
                                   f"{result.stderr}")
        files.replace_atomically(path, build, keep_existing=True)  # never under a loaded copy
    return path
