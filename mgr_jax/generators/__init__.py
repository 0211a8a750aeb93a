"""Frozen generators G(z, y): StyleGAN2-ADA (and other kinds registered in `io.KINDS`).

  from mgr_jax import generators
  gen = generators.load(DIR)        # DIR written by a converter or generators.save
  x = gen(z, labels)                # NHWC float32 in about [-1, 1]
"""
from mgr_jax.generators.io import (GeneratorDef, LoadedGenerator, generator_def, load,
                                   register_kind, save)

__all__ = ['GeneratorDef', 'LoadedGenerator', 'generator_def', 'load', 'register_kind', 'save']
