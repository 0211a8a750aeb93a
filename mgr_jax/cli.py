"""Shared command-line plumbing of the entry points (main, train_generator, experiments)."""
import sys

from absl import flags


def _config_keys(argv):
  return [a[len('--config.'):].split('=')[0] for a in argv[1:] if a.startswith('--config.')]


def parse_flags(argv):
  """absl parsing, with a one-paragraph error for a --config.key that does not exist."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # Only on this error path: mgr_jax.config loads the method registry (JAX), and --help
    # must stay fast.
    from mgr_jax.config import moved_key
    moved = [(k, moved_key(k)) for k in _config_keys(argv) if moved_key(k)]
    if moved:
      print('Error: ' + '; '.join(f'--config.{old} has moved to --config.{new}'
                                  for old, new in moved)
            + '. The meta-learning settings (hypergradient, inner step, finder) live in '
            'config.meta (mgr_jax/config.py).', file=sys.stderr)
      sys.exit(2)
    bad = ['--config.' + k for k in _config_keys(argv)]
    print(f'Error: unknown config key ({e}) among {", ".join(bad)}. Every key must exist in '
          'the config file; see configs/*.py and mgr_jax/config.py:base_config for the keys '
          '(e.g. --config.data.fraction=0.1, --config.model.width=0.5).', file=sys.stderr)
    sys.exit(2)
