"""Train and evaluate one run.

  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits \
      [--config.method=base --config.data.fraction=0.1 ...]

Running the same command again resumes an interrupted run; a finished run is not retrained.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from mgr_jax.cli import parse_flags, user_errors

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
  from mgr_jax.train.loop import train_and_evaluate  # After flag parsing: a fast --help.
  if _CONFIG.value.distributed:
    import jax
    jax.distributed.initialize()  # Coordinator and process ids from the cluster environment.
  with user_errors():
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
