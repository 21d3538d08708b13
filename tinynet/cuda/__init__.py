"""The CuPy backend: CUDA kernels from kernels/*.cu, compiled once per device.

Nothing here is imported unless a CuPy array reaches an op, so tinynet
imports and runs without CuPy.
"""
