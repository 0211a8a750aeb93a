"""Converters from official PyTorch checkpoints to mgr_jax formats (tensors and names only).

  python -m converters.stylegan2_ada --src network-snapshot.pkl --out DIR
"""
