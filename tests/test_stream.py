"""The grain loader (mgr_jax/data/stream.py): the in-memory loader's batches, resume, process
shards, and host memory that does not grow with the dataset."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from mgr_jax.data import load_splits, stream
from mgr_jax.data.pipeline import epoch_batches, eval_batches
from mgr_jax.train.setup import val_batch


def make_folder(root, classes=3, per_class=8, size=20, seed=0, ext='png'):
  """<root>/<class>/<i>.<ext> of random colour images of differing sizes."""
  rng = np.random.default_rng(seed)
  for c in range(classes):
    os.makedirs(os.path.join(root, f'class{c}'), exist_ok=True)
    for i in range(per_class):
      shape = (size + i % 3, size + (i * 7) % 5, 3)
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
          os.path.join(root, f'class{c}', f'{i}.{ext}'))
  return root


@pytest.fixture
def folder_config(tiny_config, tmp_path):
  tiny_config.data.source = 'folder:' + make_folder(str(tmp_path / 'images'))
  tiny_config.data.fraction = 1.0
  tiny_config.data.test_ratio = 0.25
  tiny_config.data.loader = 'grain'
  tiny_config.data.workers = 0
  return tiny_config


def _equal_batches(a, b):
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_grain_batches_are_the_in_memory_batches(folder_config):
  """Same splits, same training, D_val and eval batches, read in a grain worker process."""
  cfg = folder_config.data
  memory, streamed = load_splits(cfg), stream.open_splits(cfg)
  for m, s in ((memory.train, streamed.train), (memory.val, streamed.val),
               (memory.test, streamed.test)):
    np.testing.assert_array_equal(m.indices, s.indices)
    np.testing.assert_array_equal(m.images, s.images[:])
  expected = []
  for i, b in enumerate(epoch_batches(memory.train, 4, seed=3, epoch=1)):
    expected.append(dict(b, **val_batch(memory.val, 2, 3, 1, i)))
  make = stream.TrainBatches(streamed.train, 4, seed=3, epoch=1, val=streamed.val,
                             val_batch_size=2)
  _equal_batches(list(stream.iterate(make, workers=1)), expected)
  _equal_batches(list(stream.iterate(stream.EvalBatches(streamed.test, 4), workers=0)),
                 list(eval_batches(memory.test, 4)))


def test_resume_mid_epoch_reads_what_an_uninterrupted_run_reads(folder_config):
  splits = stream.open_splits(folder_config.data)
  make = stream.TrainBatches(splits.train, 4, seed=0, epoch=2)
  full = list(stream.iterate(make, workers=0))
  again = stream.TrainBatches(splits.train, 4, seed=0, epoch=2)  # As after a restart.
  assert len(full) == 3
  _equal_batches(list(stream.iterate(again, workers=0, start=1)), full[1:])
  other = list(stream.iterate(stream.TrainBatches(splits.train, 4, seed=0, epoch=3), 0))
  assert not all(np.array_equal(a['label'], b['label']) for a, b in zip(full, other))


def test_two_processes_read_disjoint_halves_covering_the_epoch_once():
  labels = np.arange(48) % 4
  split = stream.StreamSplit(stream.ArraySource(np.zeros((48, 2, 2, 3), np.uint8), labels),
                             np.arange(48), labels)
  shards = [stream.TrainBatches(split, 8, seed=1, epoch=0, process_index=p, process_count=2)
            for p in (0, 1)]
  seen = []
  for step in range(len(shards[0])):
    halves = [s.positions(step) for s in shards]
    assert len(halves[0]) == len(halves[1]) == 4
    seen += list(halves[0]) + list(halves[1])
  assert sorted(seen) == list(range(48))  # Every example exactly once per epoch.
  # Evaluation: masked halves cover a split of 13 (not a multiple of the batch) exactly once.
  covered = []
  for p in (0, 1):
    make = stream.EvalBatches(split, 8, process_index=p, process_count=2)
    for n in range(len(make)):
      b = make(n)
      covered += list(np.arange(n * 8, n * 8 + 8)[p * 4:(p + 1) * 4][b['mask']])
  assert sorted(covered) == list(range(48))


def test_loop_feeds_the_same_device_batches_from_both_loaders(folder_config):
  """What `train.loop` steps on: global arrays over the data mesh, equal for both loaders."""
  import jax
  from mgr_jax.data.feed import Feed, load_splits as feed_splits
  from mgr_jax.methods import METHODS
  from mgr_jax.train.setup import Run, make_mesh
  folder_config.batch_size = folder_config.eval_batch_size = 8
  folder_config.meta.val_batch_size = 8
  run = Run(method=METHODS['mgr'], ctx=None, state=None, gen_vars={}, steps_per_epoch=0,
            mesh=make_mesh(folder_config))
  feeds = {}
  for loader in ('grain', 'memory'):
    folder_config.data.loader = loader
    feeds[loader] = Feed(folder_config, feed_splits(folder_config.data), run)
  grain, memory = feeds['grain'], feeds['memory']
  assert isinstance(grain.splits, stream.StreamSplits)
  pairs = list(zip(grain.train(epoch=1), memory.train(epoch=1)))
  assert len(pairs) == 1  # 15 images in D, batches of 8.
  evals = list(zip(grain.evaluate(grain.splits.test, 8), memory.evaluate(memory.splits.test, 8)))
  for g, m in [(g[1], m[1]) for g, m in pairs] + evals:
    assert g.keys() == m.keys() >= {'image', 'label'}
    for k in g:
      assert g[k].sharding == m[k].sharding and len(g[k].sharding.device_set) == 8
      np.testing.assert_array_equal(jax.device_get(g[k]), jax.device_get(m[k]), err_msg=k)


_EPOCH_PEAK = '''
import resource, sys
from ml_collections import ConfigDict
from mgr_jax.data import stream
cfg = ConfigDict(dict(source='folder:' + sys.argv[1], image_size=64, fraction=1.0, seed=0,
                      val_ratio=0.1, test_ratio=0.2))
splits = stream.open_splits(cfg)
for batch in stream.iterate(stream.TrainBatches(splits.train, 16, seed=0, epoch=0), 0):
  pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux.
'''


def test_host_memory_does_not_grow_with_the_dataset(tmp_path):
  """Peak RSS of an epoch over 40 and over 400 images of 64 px (the in-memory loader would
  hold 0.5 MB vs 4.9 MB of pixels, plus its decoding buffers)."""
  peaks = {}
  for n in (40, 400):
    root = make_folder(str(tmp_path / str(n)), classes=4, per_class=n // 4, size=96, seed=n,
                       ext='jpg')
    out = subprocess.run([sys.executable, '-c', _EPOCH_PEAK, root], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    peaks[n] = int(out.split()[-1]) / 1024
  assert abs(peaks[400] - peaks[40]) < 3.0, peaks  # MiB


def test_tfds_source_decodes_like_the_in_memory_tfds_loader_and_caches_labels(tmp_path):
  """A stand-in for `tfds.data_source` (encoded images, as SkipDecoding gives them)."""
  import io
  from mgr_jax.data.sources import tfds_image
  rng = np.random.default_rng(0)
  pixels = [rng.integers(0, 256, (30 + i, 20, 3), dtype=np.uint8) for i in range(3)]
  records = []
  for i, p in enumerate(pixels):
    encoded = io.BytesIO()
    Image.fromarray(p).save(encoded, format='PNG')
    records.append({'image': encoded.getvalue(), 'label': 2 - i})
  source = stream.TfdsSource('fake', 'train', '', 16, cache_dir=str(tmp_path))
  source._reader = records  # pylint: disable=protected-access
  for i, p in enumerate(pixels):
    np.testing.assert_array_equal(source[i], tfds_image(p, 16))
  np.testing.assert_array_equal(source.read_labels(), [2, 1, 0])
  again = stream.TfdsSource('fake', 'train', '', 16, cache_dir=str(tmp_path))
  again._reader = []  # pylint: disable=protected-access  # The cache answers, not the records.
  np.testing.assert_array_equal(again.read_labels(), [2, 1, 0])
  assert os.listdir(tmp_path) == ['labels-train.npy']
