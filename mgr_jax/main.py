"""Train and evaluate one run.

  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits \
      [--config.method=base --config.data.fraction=0.1 ...]

Running the same command again resumes an interrupted run; a finished run is not retrained.
Multi-process runs: the same command on every process with --config.distributed=True (the
cluster names the processes), or on a plain machine also --coordinator_address=HOST:PORT
--num_processes=N --process_id=I.
"""
from absl import flags
from ml_collections import config_flags

from mgr_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, results.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'With --config.distributed=True outside a cluster that '
    'names the processes: HOST:PORT of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator_address: 0..N-1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main():
  # Imported after flag parsing: --help stays fast.
  from mgr_jax import distributed
  from mgr_jax.errors import UserError
  from mgr_jax.train.loop import train_and_evaluate
  process_flags = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in process_flags) and not _CONFIG.value.distributed:
    raise UserError('--coordinator_address, --num_processes and --process_id are for '
                    'multi-process runs: add --config.distributed=True.')
  if _CONFIG.value.distributed:
    distributed.initialize(*process_flags)
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
