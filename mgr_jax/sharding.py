"""Laying out values the jitted steps make themselves over the data-parallel mesh."""
from typing import Optional

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def split_over_data(mesh: Optional[Mesh], x, batch_axis: int = 0):
  """`x` split over the mesh's 'data' axis along `batch_axis` (None, or one device: as is).

  For what a step draws itself (z, y_p, T's draws, a GAN's reals and latents): left alone,
  XLA replicates them and every device would do the whole batch's work. The values do not
  change (threefry is partitionable), only where they are computed.
  """
  if mesh is None or mesh.size == 1 or x is None:
    return x
  spec = [None] * x.ndim
  spec[batch_axis] = 'data'
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))
