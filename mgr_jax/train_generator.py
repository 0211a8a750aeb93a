"""Train the conditional StyleGAN2-ADA generator G(z, y) on D (the training split only).

  python -m mgr_jax.train_generator --config=configs/digits.py --workdir=runs/digits_gan
  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits_pcr \
      --config.method=pcr --config.generator.checkpoint=runs/digits_gan

Settings: `config.data` and `config.generator`; what the workdir gets: `mgr_jax/gan/loop.py`.
Running the same command again resumes; a finished run says so and does nothing.
"""
from absl import flags
from ml_collections import config_flags

from mgr_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, samples and the generator.')
flags.mark_flags_as_required(['config', 'workdir'])


def main():
  from mgr_jax.gan.loop import train_generator  # After flag parsing: --help stays fast.
  train_generator(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
