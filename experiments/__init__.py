"""Scripts that reproduce the paper's tables and our benchmarks."""
import mgr_jax  # noqa: F401  First: its import sets up host memory (mgr_jax/host_memory.py).
