"""Orbax checkpoints of a run: the latest train state, the best model so far, progress.

One checkpoint per finished epoch (step number = epochs done), written synchronously: a
`kill -9` leaves at most an unfinished temporary directory, which Orbax ignores.
"""
import os

import flax
import orbax.checkpoint as ocp

ITEMS = ('state', 'best', 'progress')


def open_manager(workdir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=ITEMS)


def save(manager, epoch: int, state, best, progress: dict) -> None:
  manager.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
      best=ocp.args.StandardSave(best),
      progress=ocp.args.JsonSave(progress)))
  manager.wait_until_finished()


def save_best_only(manager, step: int, best) -> None:
  """Only the 'best' item (a converted classifier): enough for `restore_best`, not `restore`."""
  manager.save(step, args=ocp.args.Composite(best=ocp.args.StandardSave(best)))
  manager.wait_until_finished()


def restore(manager, state_template, best_template):
  """(state, best, progress) of the latest checkpoint."""
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(flax.serialization.to_state_dict(state_template)),
      best=ocp.args.StandardRestore(best_template),
      progress=ocp.args.JsonRestore()))
  state = flax.serialization.from_state_dict(state_template, restored['state'])
  return state, restored['best'], restored['progress']


def restore_best(manager, best_template):
  """Only the best model (params + batch_stats) of the latest checkpoint."""
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      best=ocp.args.StandardRestore(best_template)))
  return restored['best']
