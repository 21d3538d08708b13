"""Every CUDA source compiles cleanly with nvcc (warnings are errors), for
sm_80 (A100) and sm_90 (H100).  Needs nvcc, not a GPU."""

import glob
import os
import shutil
import subprocess

import pytest

KERNELS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "kernels", "*.cu")))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def test_there_are_kernels():
    assert {os.path.basename(k) for k in KERNELS} >= {"im2col.cu", "maxpool.cu", "lrn.cu"}


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA sources not compile-checked here")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", KERNELS, ids=os.path.basename)
def test_kernel_compiles_without_warnings(source, arch, tmp_path):
    result = subprocess.run(
        [NVCC, "-std=c++14", "-Werror", "all-warnings", f"-arch={arch}", "-c", source,
         "-o", str(tmp_path / "k.o")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
