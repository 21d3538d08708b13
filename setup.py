"""Packaging: metadata is in setup.cfg.  This file only copies the CUDA
sources (kernels/*.cu, kept at the top of the repository where readers look
for them) into the installed package as tinynet/kernels/, so that a
non-editable ``pip install .`` finds them too."""

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
        for path in glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "*.cu")):
            shutil.copy(path, target)


setup(cmdclass={"build_py": BuildWithKernels})
