"""Shared command-line plumbing of the entry points (main, train_generator, experiments)."""
import contextlib
import functools
import logging as std_logging
import os
import sys

from absl import app, flags, logging

from mgr_jax import host_memory
from mgr_jax.errors import UserError
from mgr_jax.workdir import disk_problem


def _config_keys(argv):
  return [a[len('--config.'):].split('=')[0] for a in argv[1:] if a.startswith('--config.')]


def parse_flags(argv):
  """absl parsing, with a one-paragraph error for a bad --config file, key or value.

  Then turns on JAX's persistent compilation cache (mgr_jax/compile_cache.py) and, on a CPU,
  the reuse of each step's buffers (mgr_jax/host_memory.py): every entry point parses its
  flags here, before its first compilation and before JAX starts a backend.
  """
  try:
    rest = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
      flags.FLAGS['config'].value.keys()  # ml_collections defers a config file's load error.
    from mgr_jax import compile_cache  # After parsing: --help stays fast (no jax import).
    compile_cache.enable()
  except flags.IllegalFlagValueError as e:  # e.g. --config.num_epochs=abc.
    print(f'Error: {e}. Give each --config.key a value of the type of its default in the '
          'config file (see configs/*.py and mgr_jax/config.py:base_config).', file=sys.stderr)
    sys.exit(2)
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
  except OSError as e:  # ml_collections: the --config file is missing or does not load.
    cause = ' '.join(str(e.__cause__ or e).split())
    print(f'Error: {cause}. Pass --config=configs/<name>.py, a Python file with a get_config() '
          'function (see configs/).', file=sys.stderr)
    sys.exit(2)
  host_memory.reuse_step_buffers()
  return rest


@contextlib.contextmanager
def user_errors():
  """Exit 2 with one paragraph for a UserError or an unwritable/full workdir; anything else
  is a bug and keeps its traceback."""
  try:
    yield
  except UserError as e:
    _exit(f'Error: {e}')
  except Exception as e:  # pylint: disable=broad-except
    problem = disk_problem(e)
    if problem is None:
      raise
    _exit(f'Error: cannot write the workdir: {problem}. Free some space or make the '
          'workdir writable (or choose another --workdir), then run the same command again: '
          'it resumes from the last checkpoint.')


def _exit(message: str):
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Orbax's background threads may still be failing on the same disk; exiting without
  # interpreter shutdown spares the user their "Event loop is closed" tracebacks.
  std_logging.disable(std_logging.CRITICAL)
  os._exit(2)


def exit_on_user_error(fn):
  """`fn` run inside `user_errors()`: a problem the user can fix is 'Error: …' on stderr and
  exit status 2, without a traceback."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with user_errors():
      return fn(*args, **kwargs)
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
