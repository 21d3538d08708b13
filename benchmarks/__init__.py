# Importing tinynet before anything loads NumPy lets OpenBLAS's idle threads sleep at once
# instead of spinning after every GEMM (see tinynet/__init__.py): a script that imports
# benchmarks.common (which imports NumPy) first still gets it, and so do the workers it starts.
import tinynet  # noqa: F401
