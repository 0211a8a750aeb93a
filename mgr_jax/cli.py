"""Shared command-line plumbing of the entry points (main, train_generator, experiments)."""
import functools
import sys

from absl import app, flags, logging

from mgr_jax.errors import UserError


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


def exit_on_user_error(fn):
  """`fn` with its UserError (a problem the user can fix) printed as 'Error: …' on stderr and
  exit status 2, without a traceback; anything else is a bug and keeps its traceback."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      print(f'Error: {e}', file=sys.stderr)
      sys.exit(2)
  return wrapper


def run(main):
  """`app.run(main)` for the absl entry points: config-key errors and UserError as messages
  (exit 2), Orbax's per-file INFO logs off, no positional arguments."""
  @exit_on_user_error
  def wrapped(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    logging.set_verbosity(logging.WARNING)
    return main()
  app.run(wrapped, flags_parser=parse_flags)
