"""Shared command-line plumbing of the entry points (main, train_generator, experiments)."""
import sys

from absl import flags


def parse_flags(argv):
  """absl parsing, with a one-paragraph error for a --config.key that does not exist."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    print(f'Error: unknown config key ({e}) among {", ".join(bad)}. Every key must exist in '
          'the config file; see configs/*.py and mgr_jax/config.py:base_config for the keys '
          '(e.g. --config.data.fraction=0.1, --config.model.width=0.5).', file=sys.stderr)
    sys.exit(2)
