"""The paper's data protocol (§4.1): train -> D / D_val at 9:1, a fixed fraction of D.

All splits are stratified by class (every class keeps ~the same share in each split) and
depend only on seeds, so every method and training seed sees the same D, D_val and test.
Fractions are nested: the 10% subset is contained in the 25% subset, and so on.
"""
import dataclasses
from typing import Optional, Sequence

import numpy as np

from mgr_jax.errors import UserError

# The held-out test split of sources without one never changes, whatever data.seed is.
TEST_SPLIT_SEED = 20231210


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  indices: np.ndarray  # positions in the source's train (or test) array, for audits

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Split  # D (after `fraction`)
  val: Split  # D_val
  test: Split
  class_names: Sequence[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class RawData:
  """What a source gives: its train set, its test set when it has one, class names."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: Optional[np.ndarray]
  test_labels: Optional[np.ndarray]
  class_names: Sequence[str]


def stratified_split(labels, share, rng):
  """Returns (rest, taken): per class, round(share * n_c) indices go to `taken`."""
  taken, rest = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    k = int(round(share * len(idx)))
    taken.append(idx[:k])
    rest.append(idx[k:])
  return np.sort(np.concatenate(rest)), np.sort(np.concatenate(taken))


def nested_fraction(labels, fraction, rng):
  """Per class, the first max(1, round(fraction * n_c)) of one fixed permutation."""
  keep = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    keep.append(idx[:max(1, int(round(fraction * len(idx))))])
  return np.sort(np.concatenate(keep))


def split_indices(labels, has_test: bool, cfg):
  """Index arrays (d, val, test) of the protocol from the train labels alone: `test` indexes
  the train set when the source has no test split, else it is None (use the source's own)."""
  if not 0.0 < cfg.fraction <= 1.0:
    raise UserError(f'data.fraction={cfg.fraction} is out of range: it is the share of D to '
                    'keep, in (0, 1], e.g. --config.data.fraction=0.1.')
  labels = np.asarray(labels, np.int32)
  test_idx = None
  if not has_test:
    pool, test_idx = stratified_split(labels, cfg.test_ratio,
                                      np.random.default_rng(TEST_SPLIT_SEED))
  else:
    pool = np.arange(len(labels))
  rng = np.random.default_rng([cfg.seed, 0])
  d_rel, val_rel = stratified_split(labels[pool], cfg.val_ratio, rng)
  d_idx, val_idx = pool[d_rel], pool[val_rel]
  if cfg.fraction < 1.0:
    frac_rng = np.random.default_rng([cfg.seed, 1])
    d_idx = d_idx[nested_fraction(labels[d_idx], cfg.fraction, frac_rng)]
  for name, idx in (('D', d_idx), ('D_val', val_idx)):
    if len(idx) == 0:
      raise UserError(f'The {name} split is empty: the dataset has too few training images '
                      f'({len(labels)}) for data.val_ratio={cfg.val_ratio}. Add images or '
                      'lower data.val_ratio.')
  return d_idx, val_idx, test_idx


def make_splits(raw: RawData, cfg) -> Splits:
  images, labels = raw.train_images, np.asarray(raw.train_labels, np.int32)
  d_idx, val_idx, test_idx = split_indices(labels, raw.test_images is not None, cfg)
  if test_idx is not None:
    test = Split(images[test_idx], labels[test_idx], test_idx)
  else:
    test_labels = np.asarray(raw.test_labels, np.int32)
    test = Split(raw.test_images, test_labels, np.arange(len(test_labels)))
  return Splits(train=Split(images[d_idx], labels[d_idx], d_idx),
                val=Split(images[val_idx], labels[val_idx], val_idx),
                test=test, class_names=tuple(raw.class_names))
