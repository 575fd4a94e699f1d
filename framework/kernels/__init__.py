"""The numerics: Numba kernels over flat arrays (dense.py), the per-machine choice of GEMM (gemm_choice.py) and
the warm-up of the on-disk kernel cache (startup.py)."""
