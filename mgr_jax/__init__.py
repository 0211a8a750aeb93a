"""mgr-jax: Meta Generative Regularization (NeurIPS 2023) in JAX/Flax."""
