"""Streaming input on grain (`data.loader=grain`): datasets larger than host memory, and
every process reading only its share.

  random-access source (digits arrays | image folder by path | prepared TFDS array_record)
    -> split positions (the paper's protocol, from the labels alone)
    -> the epoch's order, a function of (seed, epoch) shared with the in-memory loader
    -> this process's slice of each global batch (jax.process_index() of process_count())
    -> reading, decoding and resizing in grain worker processes (`data.workers`)
    -> jax.make_array_from_process_local_data in the training process.

A batch is a pure function of (seed, epoch, step, process), so the global batches are
exactly those of `pipeline.epoch_batches` (same images, same order) and a run resumed at
step k reads what an uninterrupted run reads at step k. Nothing holds decoded images
beyond the batches in flight, so host memory does not grow with the dataset (the digits
arrays, 1797 tiny images, stay cached). The module imports no JAX: workers stay light.
"""
import dataclasses
import io
import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from mgr_jax.data import pipeline
from mgr_jax.data.protocol import split_indices
from mgr_jax.data.sources import (decode_image, list_folder, load_digits, read_image,
                                  tfds_builder, tfds_image)
from mgr_jax.data.transforms import resize_image, to_uint8
from mgr_jax.errors import UserError


# ----------------------------------------------------------------------------- sources
# Each source: len(), .labels (int32, cheap), source[i] -> uint8 [size, size, 3]. Picklable:
# grain sends them to its worker processes.

@dataclasses.dataclass
class ArraySource:
  """Images already in memory (the digits: small enough to cache)."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return self.images[i]


@dataclasses.dataclass
class FolderSource:
  """Image files by path, decoded and resized on every read (`sources.read_image`, the very
  function of the in-memory folder loader)."""
  paths: Sequence[str]
  labels: np.ndarray
  image_size: int

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return read_image(self.paths[i], self.image_size)


@dataclasses.dataclass
class TfdsSource:
  """One split of a prepared TFDS dataset via `tfds.data_source` (array_record, no
  TensorFlow). Images stay encoded until read; each process opens its own reader.
  `cache_dir`: where `labels-<split>.npy` is kept (the prepared dataset's directory)."""
  name: str
  split: str
  data_dir: str
  image_size: int
  cache_dir: str = ''
  labels: Optional[np.ndarray] = None
  _reader: Any = dataclasses.field(default=None, repr=False, compare=False)

  def reader(self):
    if self._reader is None:
      import tensorflow_datasets as tfds
      self._reader = tfds.data_source(
          self.name, split=self.split, data_dir=self.data_dir or None, download=False,
          decoders={'image': tfds.decode.SkipDecoding()})
    return self._reader

  def __getstate__(self):  # Readers hold open files: every worker opens its own.
    return dict(self.__dict__, _reader=None)

  def __len__(self):
    return len(self.reader())

  def __getitem__(self, i):
    encoded = self.reader()[int(i)]['image']
    with Image.open(io.BytesIO(encoded)) as im:
      return to_uint8(resize_image(decode_image(im), self.image_size))

  def read_labels(self) -> np.ndarray:
    """Every label of the split. The first time, one pass over all records (images not
    decoded; for ImageNet the whole 150 GB), kept in `cache_dir` when it is writable: run
    it once before a multi-process launch (docs/scaling.md), not in every process."""
    path = os.path.join(self.cache_dir, f'labels-{self.split}.npy')
    if self.cache_dir and os.path.exists(path):
      return np.load(path)
    reader = self.reader()
    labels = np.asarray([int(reader[i]['label']) for i in range(len(reader))], np.int32)
    if self.cache_dir:
      try:
        tmp = f'{path}.{os.getpid()}.tmp.npy'
        np.save(tmp, labels)
        os.replace(tmp, path)
      except OSError:  # A read-only dataset directory: read again next time.
        pass
    return labels


# ------------------------------------------------------------------------------ splits

@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """Positions `indices` of `source`, with their labels. `images[idx]` reads on demand (the
  in-memory loader's interface, for code that takes a few images in the main process)."""
  source: Any
  indices: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)

  @property
  def images(self):
    return _LazyImages(self)

  def read(self, positions) -> np.ndarray:
    return np.stack([self.source[self.indices[p]] for p in positions])


@dataclasses.dataclass(frozen=True)
class _LazyImages:
  split: StreamSplit

  def __len__(self):
    return len(self.split)

  def __getitem__(self, positions):
    if isinstance(positions, slice):
      positions = range(*positions.indices(len(self.split)))
    return self.split.read(np.atleast_1d(np.asarray(positions)))


@dataclasses.dataclass(frozen=True)
class StreamSplits:
  train: StreamSplit
  val: StreamSplit
  test: StreamSplit
  class_names: Sequence[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _sources(cfg):
  """(train source, test source or None, class names) of `cfg.source`, nothing decoded."""
  source = cfg.source
  if source == 'digits':
    raw = load_digits(cfg.image_size)
    return ArraySource(raw.train_images, raw.train_labels), None, raw.class_names
  if source.startswith('folder:'):
    listing = list_folder(source[len('folder:'):])
    test = (None if listing.test_paths is None
            else FolderSource(listing.test_paths, listing.test_labels, cfg.image_size))
    return (FolderSource(listing.paths, listing.labels, cfg.image_size), test,
            listing.class_names)
  if source.startswith('tfds:'):
    name = source[len('tfds:'):]
    builder = tfds_builder(name, cfg)
    open_split = lambda split: TfdsSource(name, split, cfg.data_dir, cfg.image_size,
                                          str(builder.data_dir))
    train = open_split(cfg.train_split)
    train.labels = train.read_labels()
    test = None
    if cfg.test_split in builder.info.splits:
      test = open_split(cfg.test_split)
      test.labels = test.read_labels()
    return train, test, tuple(builder.info.features['label'].names)
  raise UserError(f'Unknown data.source {source!r}. Use `digits`, `tfds:<name>` or '
                  '`folder:<path>`.')


def open_splits(cfg) -> StreamSplits:
  """D / D_val / test as positions in their sources: the splits of `data.load_splits`
  (same protocol, same seeds), without reading a single image."""
  train, test, class_names = _sources(cfg)
  labels = np.asarray(train.labels, np.int32)
  d_idx, val_idx, test_idx = split_indices(labels, test is not None, cfg)
  split = lambda source, idx: StreamSplit(source, idx, np.asarray(source.labels)[idx])
  test_split = (split(train, test_idx) if test is None
                else split(test, np.arange(len(test.labels))))
  return StreamSplits(split(train, d_idx), split(train, val_idx), test_split,
                      tuple(class_names))


# ----------------------------------------------------------------------------- batches

def _local_slice(global_size: int, process_index: int, process_count: int) -> slice:
  if global_size % process_count:
    raise UserError(f'A batch of {global_size} cannot be split evenly over {process_count} '
                    'processes; use a batch size divisible by the number of processes.')
  share = global_size // process_count
  return slice(process_index * share, (process_index + 1) * share)


@dataclasses.dataclass
class TrainBatches:
  """Step -> this process's share of the global training batch of one epoch; with `val`,
  also its share of the meta step's D_val batch (`pipeline.val_positions`)."""
  train: StreamSplit
  batch_size: int
  seed: int
  epoch: int
  process_index: int = 0
  process_count: int = 1
  val: Optional[StreamSplit] = None
  val_batch_size: int = 0

  def __post_init__(self):
    self.order = pipeline.epoch_order(len(self.train), self.batch_size, self.seed, self.epoch)
    self.mine = _local_slice(self.batch_size, self.process_index, self.process_count)
    if self.val is not None:
      self.val_mine = _local_slice(self.val_batch_size, self.process_index,
                                   self.process_count)

  def __len__(self):
    return pipeline.steps_per_epoch(len(self.train), self.batch_size)

  def positions(self, step: int) -> np.ndarray:
    """Positions in D of this process's examples at `step`."""
    return self.order[step * self.batch_size:(step + 1) * self.batch_size][self.mine]

  def __call__(self, step: int) -> dict:
    pos = self.positions(step)
    batch = {'image': self.train.read(pos), 'label': self.train.labels[pos]}
    if self.val is not None:
      vpos = pipeline.val_positions(len(self.val), self.val_batch_size, self.seed,
                                    self.epoch, step)[self.val_mine]
      batch.update(val_image=self.val.read(vpos), val_label=self.val.labels[vpos])
    return batch


@dataclasses.dataclass
class EvalBatches:
  """Batch number -> this process's share of `pipeline.eval_batches`' padded batch."""
  split: StreamSplit
  batch_size: int
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    self.mine = _local_slice(self.batch_size, self.process_index, self.process_count)

  def __len__(self):
    return -(-len(self.split) // self.batch_size)

  def __call__(self, number: int) -> dict:
    start = number * self.batch_size
    pos = np.arange(start, start + self.batch_size)[self.mine]
    mask = pos < len(self.split)
    pos = np.where(mask, pos, 0)
    return {'image': self.split.read(pos), 'label': self.split.labels[pos], 'mask': mask}


def iterate(make_batch, workers: int, start: int = 0):
  """Yields make_batch(start), make_batch(start + 1), ... up to len(make_batch), read ahead
  by `workers` grain worker processes (0: in this process)."""
  import grain
  from absl import flags
  if not flags.FLAGS.is_parsed():  # Grain reads absl flags; outside app.run, the defaults.
    flags.FLAGS.mark_as_parsed()
  dataset = grain.MapDataset.range(start, len(make_batch)).map(make_batch).to_iter_dataset()
  if workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  iterator = iter(dataset)
  try:
    yield from iterator
  finally:  # Stops the workers now, also when the consumer stops early or fails.
    getattr(iterator, 'close', lambda: None)()
