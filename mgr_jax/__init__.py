"""mgr-jax: Meta Generative Regularization (NeurIPS 2023) in JAX/Flax."""
from mgr_jax import host_memory

# First, before anything imports JAX: glibc keeps XLA's step buffers (mgr_jax/host_memory.py).
host_memory.keep_freed_memory()
