"""Joining a multi-process run (TPU pod slices, multi-GPU hosts, SLURM, or processes on one
machine) before JAX is used: `initialize` is what `--config.distributed=True` calls.

Every process runs the same command. Each sees all devices of all processes in one data mesh
(`jax.devices()`), gathers only its share of every global batch, and process 0 alone writes
the workdir's JSON files; Orbax checkpoints are written by all together.
"""
from typing import Optional

import jax

from mgr_jax.errors import UserError


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """jax.distributed.initialize: with no arguments the cluster (Cloud TPU, SLURM, Open MPI,
  Kubernetes) says who is who; on a plain machine pass all three (e.g. 'localhost:1234', 2,
  0 and 1)."""
  named = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(named) and not all(named):
    raise UserError('Pass all three of --coordinator_address=HOST:PORT, --num_processes=N and '
                    '--process_id=I (0..N-1), or none of them inside a cluster that names the '
                    'processes (Cloud TPU, SLURM, Open MPI, Kubernetes).')
  # CPU processes need a collectives backend for the cross-process reductions (XLA's default
  # has none); it is ignored by GPU and TPU backends.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
