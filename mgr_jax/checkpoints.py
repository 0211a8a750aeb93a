"""Orbax checkpoints of a training loop (the classifier's and the GAN's): named items per step.

Items are pytrees (a flax.struct state, a dict of arrays), except 'progress', a JSON dict
(epoch or step, metrics history, timings). Written synchronously: a `kill -9` leaves at most an
unfinished temporary directory, which Orbax ignores. A damaged checkpoint (a file cut short or
lost later) is skipped for the newest one that restores.
"""
import os
import shutil
import sys
import time

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from mgr_jax.errors import UserError
from mgr_jax.workdir import disk_problem, stderr_captured

JSON_ITEMS = ('progress',)


def open_manager(workdir: str, item_names, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """The manager of <workdir>/checkpoints holding the items `item_names`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=tuple(item_names))


def quietly(fn, show_noise=lambda error: True):
  """fn() with Orbax's stderr held back: shown after success, and after an error for which
  show_noise(error) is true. A full disk or a damaged file makes Orbax's threads print
  pages of tracebacks; the caller reports those errors in one line instead."""
  error = None
  with stderr_captured() as noise:
    try:
      result = fn()
    except Exception as e:  # Re-raised below, once stderr is back.
      error = e
  if error is None or show_noise(error):
    sys.stderr.write(noise[0])
  if error is not None:
    raise error
  return result


def save(manager, step: int, **items) -> None:
  """Saves the given items (a subset of the manager's is allowed) as checkpoint `step`."""
  args = {name: ocp.args.JsonSave(value) if name in JSON_ITEMS
          else ocp.args.StandardSave(flax.serialization.to_state_dict(value))
          for name, value in items.items()}

  def write():
    manager.save(step, args=ocp.args.Composite(**args))
    manager.wait_until_finished()
  quietly(write, show_noise=lambda e: disk_problem(e) is None)


def _root_cause(e: Exception) -> str:
  """The root cause's first line: TensorStore's outer exception only says where it was."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:300] if text else ""}'


def _set_aside(manager, steps) -> str:
  """Moves the checkpoints `steps` to <workdir>/damaged_checkpoints/: Orbax would otherwise
  skip saving over their step numbers."""
  root = str(manager.directory)
  aside = os.path.join(os.path.dirname(root), 'damaged_checkpoints')
  if jax.process_index() == 0:
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      shutil.move(os.path.join(root, str(step)),
                  os.path.join(aside, f'{step}.{time.strftime("%Y%m%d-%H%M%S")}'))
  if jax.process_count() > 1:  # Every process must see the same steps before saving.
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('damaged checkpoints set aside')
  manager.reload()
  return aside


def restore(manager, resuming: bool = False, remedy: str = None, **templates) -> dict:
  """The named items of the newest checkpoint that restores, each restored into the
  structure of its template (arrays or shapes, which the restored arrays must have); JSON
  items take None as template.

  A newer checkpoint that does not restore is reported on stderr and, when `resuming`, set
  aside. When none restores: UserError ending with `remedy` (default: what to delete).
  """
  args = {name: ocp.args.JsonRestore() if name in JSON_ITEMS
          else ocp.args.StandardRestore(flax.serialization.to_state_dict(template))
          for name, template in templates.items()}
  shapes = lambda tree: [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]

  def restore_step(step):
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    out = {}
    for name, template in templates.items():
      if name in JSON_ITEMS:
        out[name] = restored[name]
        continue
      # Orbax restores the saved shapes whatever the template says.
      if shapes(restored[name]) != shapes(flax.serialization.to_state_dict(template)):
        raise ValueError(f'the saved {name!r} arrays have other shapes than the model')
      out[name] = flax.serialization.from_state_dict(template, restored[name])
    return out

  root = str(manager.directory)
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for i, step in enumerate(steps):
    try:
      out = quietly(lambda: restore_step(step), show_noise=lambda e: False)
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
      failures.append((step, _root_cause(e)))
      if i + 1 < len(steps):
        print(f'Warning: checkpoint {os.path.join(root, str(step))} does not restore '
              f'({failures[-1][1]}); trying an older one.', file=sys.stderr, flush=True)
      continue
    if failures and resuming:
      aside = _set_aside(manager, [bad for bad, _ in failures])
      print(f'Moved the damaged checkpoint(s) {[bad for bad, _ in failures]} to {aside} '
            f'(delete them when you like); resuming from checkpoint {step}.',
            file=sys.stderr, flush=True)
    return out
  reasons = '; '.join(f'{step}: {why}' for step, why in failures)
  raise UserError(f'No checkpoint in {root} restores ({reasons}). ' + (remedy or (
      f'The files are damaged (disk full, a copy cut short?). Delete {root} to start this run '
      'again from the beginning, or put back intact copies of these checkpoints.')))
