"""What the training loop iterates, for either loader (`data.loader`).

`memory`: every split decoded into host memory at start (`data.load_splits`); each process
gathers only its slice of every global batch (`pipeline.process_share`). `grain`: splits are
positions in a source (`stream.open_splits`); each process reads and decodes only its
slice, in grain worker processes, and `jax.make_array_from_process_local_data` joins the
slices into the global batch. Both give the same global batches (tests/test_stream.py).
"""
import dataclasses

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from mgr_jax import data as data_lib
from mgr_jax.data import pipeline, stream
from mgr_jax.train.setup import val_batch


def load_splits(data_config):
  """Splits for the configured loader: in memory, or positions in a streamed source."""
  if data_config.loader == 'grain':
    return stream.open_splits(data_config)
  return data_lib.load_splits(data_config)


@dataclasses.dataclass
class Feed:
  """`train(epoch)` yields (host batch, device batch) per step, `evaluate(split)` device
  batches; under grain a host batch is this process's share only."""
  config: object
  splits: object
  run: object  # train.setup.Run: its mesh and shard_batch.

  @property
  def streaming(self) -> bool:
    return self.config.data.loader == 'grain'

  def put_local(self, batch):
    sharding = NamedSharding(self.run.mesh, P('data'))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  def train(self, epoch: int, start_step: int = 0):
    c, splits = self.config, self.splits
    meta = self.run.method.meta
    if self.streaming:
      make = stream.TrainBatches(
          splits.train, c.batch_size, c.seed, epoch, jax.process_index(), jax.process_count(),
          val=splits.val if meta else None, val_batch_size=c.meta.val_batch_size)
      for batch in stream.iterate(make, c.data.workers, start_step):
        yield batch, self.put_local(batch)
      return
    process = jax.process_index(), jax.process_count()  # Each gathers only its share.
    batches = pipeline.epoch_batches(splits.train, c.batch_size, c.seed, epoch, *process)
    for i, batch in enumerate(batches):
      if i < start_step:
        continue
      if meta:
        batch.update(val_batch(splits.val, c.meta.val_batch_size, c.seed, epoch, i, *process))
      yield batch, self.put_local(batch)

  def evaluate(self, split, batch_size: int):
    if self.streaming:
      make = stream.EvalBatches(split, batch_size, jax.process_index(), jax.process_count())
      for batch in stream.iterate(make, self.config.data.workers):
        yield self.put_local(batch)
      return
    for batch in pipeline.eval_batches(split, batch_size, jax.process_index(),
                                       jax.process_count()):
      yield self.put_local(batch)
