"""Files of a run directory (classifier and GAN loops alike): atomic JSON writes, clear errors
on missing/corrupt files, the refusal to resume with another config, the divergence check."""
import json
import os

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


def config_differences(old: dict, new: dict, prefix: str = ''):
  """Dotted keys whose values differ between two nested config dicts."""
  diffs = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += config_differences(a, b, f'{prefix}{key}.')
    elif json.loads(json.dumps(a, default=list)) != json.loads(json.dumps(b, default=list)):
      diffs.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return diffs


def check_config(workdir: str, filename: str, config: dict, what: str, fix: str) -> None:
  """Refuses to resume `workdir` when its saved config differs from `config` (it would mix two
  experiments); `what` names the run ('a run', 'a generator'), `fix` says what to do."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return
  diffs = config_differences(read_json(path, 'remove the workdir and start again.'), config)
  if diffs:
    raise UserError(f'Workdir {workdir!r} holds {what} with a different config ('
                    + '; '.join(diffs[:8]) + f'). {fix}')


def check_finite(metrics: dict, where: str, fix: str) -> None:
  """Fails fast on a non-finite metric, before a diverged state is checkpointed."""
  if not all(np.isfinite(v) for v in metrics.values()):
    raise UserError(f'{where} diverged: {metrics}. {fix}, and use a new workdir.')
