"""Train and evaluate one run.

  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits \
      [--config.method=base --config.data.fraction=0.1 ...]

Running the same command again resumes an interrupted run; a finished run is not retrained.
"""
from absl import flags
from ml_collections import config_flags

from mgr_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main():
  # Imported after flag parsing: --help stays fast.
  import jax
  from mgr_jax.train.loop import train_and_evaluate
  if _CONFIG.value.distributed:
    jax.distributed.initialize()  # Coordinator and process ids from the cluster environment.
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
