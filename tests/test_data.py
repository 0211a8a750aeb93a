"""Data sources and the D / D_val / test protocol."""
import os

import numpy as np
import pytest
from PIL import Image

from mgr_jax.data import load_splits
from mgr_jax.data.pipeline import epoch_batches, eval_batches
from mgr_jax.errors import UserError


def _ids(split):
  return set(split.indices.tolist())


def test_digits_splits_disjoint_and_cover(tiny_config):
  tiny_config.data.fraction = 1.0
  s = load_splits(tiny_config.data)
  train, val = _ids(s.train), _ids(s.val)
  # D and D_val come from the pool left after the fixed test split: all three disjoint.
  from mgr_jax.data.protocol import TEST_SPLIT_SEED, stratified_split
  labels = np.asarray(__import__('sklearn.datasets').datasets.load_digits().target)
  pool, test_idx = stratified_split(labels, tiny_config.data.test_ratio,
                                    np.random.default_rng(TEST_SPLIT_SEED))
  assert np.array_equal(np.sort(s.test.indices), test_idx)
  assert not train & val and not train & set(test_idx) and not val & set(test_idx)
  assert train | val | set(test_idx) == set(range(1797))
  assert abs(len(val) / (len(val) + len(train)) - 0.1) < 0.01
  assert s.train.images.shape[1:] == (16, 16, 3) and s.train.images.dtype == np.uint8
  assert s.num_classes == 10 and set(np.unique(s.val.labels)) == set(range(10))


def test_splits_deterministic_and_seeded(tiny_config):
  a = load_splits(tiny_config.data)
  b = load_splits(tiny_config.data)
  for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
    assert np.array_equal(x.indices, y.indices) and np.array_equal(x.images, y.images)
  tiny_config.data.seed = 1
  c = load_splits(tiny_config.data)
  assert not np.array_equal(a.val.indices, c.val.indices)
  assert np.array_equal(a.test.indices, c.test.indices)  # The test split never moves.


def test_fraction_subset_fixed_by_data_seed_and_nested(tiny_config):
  subsets = {}
  for fraction in (0.1, 0.25, 0.5, 1.0):
    tiny_config.data.fraction = fraction
    subsets[fraction] = _ids(load_splits(tiny_config.data).train)
  full = len(subsets[1.0])
  for fraction in (0.1, 0.25, 0.5):
    assert abs(len(subsets[fraction]) - fraction * full) <= 10
  assert subsets[0.1] < subsets[0.25] < subsets[0.5] < subsets[1.0]
  tiny_config.data.fraction = 0.1
  tiny_config.seed = 123  # Training seed (other method/seed) must not move the subset.
  tiny_config.method = 'base'
  assert _ids(load_splits(tiny_config.data).train) == subsets[0.1]
  tiny_config.data.seed = 5
  assert _ids(load_splits(tiny_config.data).train) != subsets[0.1]


def test_epoch_batches_fixed_shape_and_order(tiny_config):
  s = load_splits(tiny_config.data)
  first = [b['label'] for b in epoch_batches(s.train, 32, seed=0, epoch=0)]
  again = [b['label'] for b in epoch_batches(s.train, 32, seed=0, epoch=0)]
  other = [b['label'] for b in epoch_batches(s.train, 32, seed=0, epoch=1)]
  assert all(len(b) == 32 for b in first) and len(first) == len(s.train) // 32
  assert all(np.array_equal(x, y) for x, y in zip(first, again))
  assert not all(np.array_equal(x, y) for x, y in zip(first, other))
  batches = list(eval_batches(s.val, 64))
  assert sum(int(b['mask'].sum()) for b in batches) == len(s.val)
  assert all(b['image'].shape[0] == 64 for b in batches)


def test_each_process_gathers_only_its_share_of_every_global_batch(tiny_config):
  """Two processes: process i gets the i-th half of each global batch (train, eval, D_val),
  so together they hold exactly the one-process batches, and each gathers half the bytes."""
  from mgr_jax.train.setup import val_batch
  s = load_splits(tiny_config.data)
  whole = list(epoch_batches(s.train, 32, seed=0, epoch=1))
  halves = [list(epoch_batches(s.train, 32, seed=0, epoch=1, process_index=i, process_count=2))
            for i in range(2)]
  evals = [list(eval_batches(s.val, 64, process_index=i, process_count=2)) for i in range(2)]
  vals = [val_batch(s.val, 16, 0, 1, 3, process_index=i, process_count=2) for i in range(2)]
  for key in ('image', 'label'):
    for b, b0, b1 in zip(whole, *halves):
      assert b0[key].shape[0] == b1[key].shape[0] == 16
      np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), b[key])
    for b, b0, b1 in zip(eval_batches(s.val, 64), *evals):
      np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), b[key])
    np.testing.assert_array_equal(np.concatenate([v[f'val_{key}'] for v in vals]),
                                  val_batch(s.val, 16, 0, 1, 3)[f'val_{key}'])
  for b, b0, b1 in zip(eval_batches(s.val, 64), *evals):
    np.testing.assert_array_equal(np.concatenate([b0['mask'], b1['mask']]), b['mask'])


def _write_folder(root, classes=('cat', 'dog'), per_class=6, size=(20, 14)):
  rng = np.random.default_rng(0)
  for name in classes:
    os.makedirs(root / name, exist_ok=True)
    for i in range(per_class):
      arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
      Image.fromarray(arr).save(root / name / f'{i}.png')


def _folder_config(tiny_config, path):
  tiny_config.data.source = f'folder:{path}'
  tiny_config.data.fraction = 1.0
  tiny_config.data.val_ratio = 0.2
  tiny_config.data.test_ratio = 0.25
  return tiny_config.data


def test_folder_source_with_test_tree(tmp_path, tiny_config):
  _write_folder(tmp_path / 'train')
  _write_folder(tmp_path / 'test', per_class=3)
  s = load_splits(_folder_config(tiny_config, tmp_path))
  assert s.class_names == ('cat', 'dog')
  assert len(s.test) == 6 and len(s.train) + len(s.val) == 12
  assert s.train.images.shape[1:] == (16, 16, 3)
  # The stored image is the file, resized: check one against PIL directly.
  from mgr_jax.data.transforms import resize_image, to_uint8
  first = np.asarray(Image.open(tmp_path / 'test' / 'cat' / '0.png').convert('RGB')) / 255.0
  assert np.array_equal(s.test.images[0], to_uint8(resize_image(first, 16)))


def test_folder_source_without_test_tree(tmp_path, tiny_config):
  _write_folder(tmp_path, per_class=8)
  s = load_splits(_folder_config(tiny_config, tmp_path))
  assert len(s.test) == 4 and len(s.train) + len(s.val) == 12


@pytest.mark.parametrize('problem', ['unknown_source', 'missing', 'empty_class', 'bad_image',
                                     'no_classes'])
def test_bad_data_gives_clear_error(tmp_path, tiny_config, problem):
  cfg = _folder_config(tiny_config, tmp_path / 'data')
  expected = {'unknown_source': 'Unknown data.source', 'missing': 'does not exist',
              'empty_class': 'has no images', 'bad_image': 'Cannot read image',
              'no_classes': 'no class sub-folders'}[problem]
  if problem == 'unknown_source':
    cfg.source = 'hub:cars'
  elif problem != 'missing':
    os.makedirs(tmp_path / 'data')
    if problem != 'no_classes':
      _write_folder(tmp_path / 'data')
  if problem == 'empty_class':
    os.makedirs(tmp_path / 'data' / 'zebra')
  if problem == 'bad_image':
    (tmp_path / 'data' / 'dog' / 'broken.jpg').write_bytes(b'not a jpeg at all')
  with pytest.raises(UserError, match=expected):
    load_splits(cfg)


def test_tfds_not_prepared_says_how(tmp_path, tiny_config):
  tiny_config.data.source = 'tfds:mnist'
  tiny_config.data.data_dir = str(tmp_path)
  with pytest.raises(UserError, match='tfds build mnist'):
    load_splits(tiny_config.data)
