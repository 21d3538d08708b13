"""Packaging: metadata is in setup.cfg.  This file only copies the C++ and
CUDA sources (kernels/*.cu, the CPU loops kernels/*.cpp, kept at the top of
the repository where readers look for them, and kernels/host/, which builds
the .cu files for the CPU) into the installed package as tinynet/kernels/, so that a non-editable
``pip install .`` finds them too."""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithKernels(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "tinynet", "kernels")
        os.makedirs(target, exist_ok=True)
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
        for path in glob.glob(os.path.join(source, "*.cu")) + glob.glob(os.path.join(source, "*.cpp")):
            shutil.copy(path, target)
        os.makedirs(os.path.join(target, "host"), exist_ok=True)
        for path in glob.glob(os.path.join(source, "host", "*")):
            shutil.copy(path, os.path.join(target, "host"))


setup(cmdclass={"build_py": BuildWithKernels})
