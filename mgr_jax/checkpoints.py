"""Orbax checkpoints of a training loop (the classifier's and the GAN's): named items per step.

Items are pytrees (a flax.struct state, a dict of arrays), except 'progress', a JSON dict
(epoch or step, metrics history, timings). Written synchronously: a `kill -9` leaves at most an
unfinished temporary directory, which Orbax ignores.
"""
import os

import flax
import orbax.checkpoint as ocp

JSON_ITEMS = ('progress',)


def open_manager(workdir: str, item_names, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """The manager of <workdir>/checkpoints holding the items `item_names`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=tuple(item_names))


def save(manager, step: int, **items) -> None:
  """Saves the given items (a subset of the manager's is allowed) as checkpoint `step`."""
  args = {name: ocp.args.JsonSave(value) if name in JSON_ITEMS
          else ocp.args.StandardSave(flax.serialization.to_state_dict(value))
          for name, value in items.items()}
  manager.save(step, args=ocp.args.Composite(**args))
  manager.wait_until_finished()


def restore(manager, **templates) -> dict:
  """The named items of the latest checkpoint, each restored into the structure of its
  template (arrays or shapes); JSON items take None as template."""
  args = {name: ocp.args.JsonRestore() if name in JSON_ITEMS
          else ocp.args.StandardRestore(flax.serialization.to_state_dict(template))
          for name, template in templates.items()}
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(**args))
  return {name: restored[name] if name in JSON_ITEMS
          else flax.serialization.from_state_dict(template, restored[name])
          for name, template in templates.items()}
