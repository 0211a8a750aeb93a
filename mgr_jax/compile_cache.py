"""JAX's persistent compilation cache, on by default for every command of this project.

The one cache mechanism: every entry point that parses its flags with `mgr_jax.cli` (train,
train_generator, compare, study, lambda_search, hypergrad, figures) turns it on there, and
the experiments' runs share it with each other and with single runs.

A step of MGR takes XLA tens of seconds to compile on a small CPU. With the cache on, a second
run of the same command (a resumed run, another seed, the next method of `experiments.compare`
that shares a step shape) loads the compiled executables from disk instead of compiling them.

Where: ``$MGR_JAX_CACHE_DIR`` if set (an empty value or ``off`` turns the cache off), else JAX's
own ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/mgr_jax/jax`` (default
``~/.cache/mgr_jax/jax``). Entries are keyed by the program, the compile options, the device
kind and the jax/jaxlib version, so one directory serves every config and a new jax version
simply misses. The directory grows with every new shape; delete it to reclaim the space.

Every compilation that takes at least `MIN_COMPILE_SECONDS` is written (JAX's default, 1 s,
would skip the eval step and most of the small programs around the steps on a fast machine).
"""
import os
from typing import Optional

import jax

ENV = 'MGR_JAX_CACHE_DIR'
MIN_COMPILE_SECONDS = 0.1  # Smaller programs compile about as fast as they load.


def default_dir() -> Optional[str]:
  """The cache directory the environment asks for, or None when the cache is off."""
  if ENV in os.environ:
    value = os.environ[ENV].strip()
    return None if value.lower() in ('', 'off', '0', 'none') else os.path.expanduser(value)
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.path.expanduser(os.environ['JAX_COMPILATION_CACHE_DIR'])
  return user_cache_dir('jax')


def user_cache_dir(name: str) -> str:
  """``$XDG_CACHE_HOME/mgr_jax/<name>`` (default ``~/.cache/mgr_jax/<name>``): XLA's
  executables (here) and the C++ kernel's library (`mgr_jax.models.native_conv`)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'mgr_jax', name)


def enable(path: Optional[str] = None,
           min_compile_seconds: float = MIN_COMPILE_SECONDS) -> Optional[str]:
  """Turns JAX's persistent compilation cache on at ``path`` (default: `default_dir()`).

  Call before the first compilation (cheap, idempotent). Returns the directory in use, or
  None when the environment turned the cache off. A directory that cannot be created is not
  an error: the run goes on uncached, as JAX does for a cache it cannot write.
  """
  path = path or default_dir()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  # JAX's own environment variables, when set, keep the last word on what is written.
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_seconds))
  if 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES' not in os.environ:
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)  # No size floor.
  return path


def entries(path: str):
  """Names of the executables stored in the cache directory ``path``."""
  if not os.path.isdir(path):
    return []
  return sorted(n for n in os.listdir(path) if n.endswith('-cache'))
