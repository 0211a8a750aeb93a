"""Files of a run directory (classifier and GAN loops alike): one run at a time (an OS
lock), atomic JSON writes, clear errors on missing/corrupt files, the refusal to resume
with another config, the divergence check, disk errors told apart."""
import contextlib
import errno
import fcntl
import json
import os
import sys
import tempfile
import time

import numpy as np

from mgr_jax.errors import UserError


def atomic_write_json(path: str, obj) -> None:
  """Write-then-rename: a crash never leaves a half-written file under `path`."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=list)
    f.write('\n')
  os.replace(tmp, path)


def read_json(path: str, what: str):
  """Parsed JSON; a missing or corrupt file raises UserError ending with `what`."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f'{path} is missing: {what}') from None
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is corrupt ({e}): {what}') from None


def write_jsonl(path: str, rows) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
  os.replace(tmp, path)


def append_jsonl(path: str, row) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(row) + '\n')


def _plain(value):
  return json.loads(json.dumps(value, default=list))


def config_differences(old: dict, new: dict, prefix: str = '', defaults: dict = None):
  """Dotted keys whose values differ between two nested config dicts.

  `defaults`: a key that `old` lacks and `new` holds at its default value is no difference:
  a newer version added the key, and the old run ran as its default says.
  """
  diffs = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    default = (defaults or {}).get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += config_differences(a, b, f'{prefix}{key}.',
                                  default if isinstance(default, dict) else None)
    elif key not in old and key in (defaults or {}) and _plain(b) == _plain(default):
      continue
    elif _plain(a) != _plain(b):
      diffs.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return diffs


def check_config(workdir: str, filename: str, config: dict, what: str, fix: str,
                 defaults: dict = None) -> None:
  """Refuses to resume `workdir` when its saved config differs from `config` (it would mix two
  experiments); `what` names the run ('a run', 'a generator'), `fix` says what to do;
  `defaults`: keys added since the run was made are no difference at their default."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return
  diffs = config_differences(read_json(path, 'remove the workdir and start again.'), config,
                             defaults=defaults)
  if diffs:
    raise UserError(f'Workdir {workdir!r} holds {what} with a different config ('
                    + '; '.join(diffs[:8]) + f'). {fix}')


def check_finite(metrics: dict, where: str, fix: str) -> None:
  """Fails fast on a non-finite metric, before a diverged state is checkpointed."""
  if not all(np.isfinite(v) for v in metrics.values()):
    raise UserError(f'{where} diverged: {metrics}. {fix}, and use a new workdir.')


LOCK_FILE = '.lock'


def _lock_holder(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip() or 'unknown'
  except OSError:
    return 'unknown'


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True):
  """Holds `workdir` for this process: a second run on it refuses at once, naming the holder.

  An flock on <workdir>/.lock: the kernel releases it when the holder exits in any way
  (kill -9 included), so a lock file left behind never blocks a resume. The file only
  records the holder (pid, host, start time) for the message. `enabled=False` is a no-op
  (the other processes of a multi-process run).
  """
  if not enabled:
    yield
    return
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(f'Cannot use workdir {workdir!r}: {e.strerror} ({e.filename}). Choose a '
                    'writable --workdir.') from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UserError(f'Workdir {workdir!r} is in use by another run ({_lock_holder(path)}). '
                      'Two runs in one workdir would overwrite each other\'s checkpoints and '
                      'results: wait for that run to end (or stop it, then run this command '
                      'again to resume), or use another --workdir.') from None
    holder = (f'process {os.getpid()} on {os.uname().nodename} since '
              f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n').encode()
    os.pwrite(fd, holder, 0)
    os.ftruncate(fd, len(holder))
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the lock.


# A workdir that cannot be written: read-only, no permission, disk or quota full, too large.
_DISK_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                errno.EFBIG)
_DISK_WORDS = ('No space left on device', 'Read-only file system', 'Permission denied',
               'Disk quota exceeded', 'File too large')


def disk_problem(e: BaseException):
  """What is wrong with the disk if `e` is a failed write to it, else None. Orbax and
  TensorStore report these as ValueError text, so the text is checked as well as errno."""
  if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
    return f'{e.strerror} ({e.filename})' if e.filename else e.strerror
  text = str(e)
  for words in _DISK_WORDS:
    if words in text:
      return f'{words} ({text.splitlines()[0][:300]})'
  return None


@contextlib.contextmanager
def stderr_captured():
  """Collects what anything in this process (threads, C++) writes to fd 2 meanwhile; the
  caller gets a list that holds the text once the block has ended. Orbax's background
  threads print pages of tracebacks when a checkpoint fails to write or read."""
  sys.stderr.flush()
  saved = os.dup(2)
  out = []
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield out
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out.append(tmp.read().decode(errors='replace'))
