"""Batches for training and evaluation, and the jit-side preprocessing of real images.

Datasets of this project are small, so splits live in memory as uint8 and batches are
index gathers; decoding-free and far faster than a CPU step. Augmentation and
normalisation run inside the jitted step (`weak_augment`), so the host only gathers bytes.
"""
import jax
import jax.numpy as jnp
import numpy as np



def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(1, num_examples // batch_size)


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """Positions in a split of n examples, batch after batch, for one epoch (at least
  steps * batch_size of them); a function of (seed, epoch) only, shared by every loader."""
  steps = steps_per_epoch(n, batch_size)
  rng = np.random.default_rng([seed, epoch, 7])
  return np.concatenate([rng.permutation(n) for _ in range(-(-steps * batch_size // n))])


def process_share(rows, process_index: int = 0, process_count: int = 1):
  """This process's contiguous share of a global batch's row indices: the rows its devices
  hold when the batch is split over a data mesh ordered by process (jax.devices())."""
  return np.split(rows, process_count)[process_index] if process_count > 1 else rows


def epoch_batches(split, batch_size: int, seed: int, epoch: int, process_index: int = 0,
                  process_count: int = 1):
  """Yields dicts of uint8 images / int32 labels; order depends only on (seed, epoch).

  Drops the last partial batch (fixed shapes, one compilation); a split smaller than
  one batch is cycled to fill it. In a multi-process run each process gathers only its
  share of every global batch of `batch_size` (`process_share`).
  """
  order = epoch_order(len(split), batch_size, seed, epoch)
  for s in range(steps_per_epoch(len(split), batch_size)):
    idx = process_share(order[s * batch_size:(s + 1) * batch_size], process_index,
                        process_count)
    yield {'image': split.images[idx], 'label': split.labels[idx]}


def val_positions(n: int, size: int, seed: int, epoch: int, step: int) -> np.ndarray:
  """Positions in D_val of the meta step's validation batch (drawn with replacement)."""
  return np.random.default_rng([seed, epoch, step, 11]).integers(0, n, size)


def eval_batches(split, batch_size: int, process_index: int = 0, process_count: int = 1):
  """Fixed-size batches covering the split once; `mask` marks the real examples. Per
  process: its share of each global batch, as `epoch_batches`."""
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = batch_size - len(idx)
    idx_padded = np.concatenate([idx, np.zeros(pad, idx.dtype)])
    mask = np.arange(batch_size) < len(idx)
    rows = process_share(np.arange(batch_size), process_index, process_count)
    yield {'image': split.images[idx_padded[rows]], 'label': split.labels[idx_padded[rows]],
           'mask': mask[rows]}


def _random_crop_flip(image, rng, pad: int, flip: bool):
  """One HWC image: pad-and-crop by up to `pad` pixels (reflect), then maybe flip."""
  h, w = image.shape[:2]
  k_crop, k_flip = jax.random.split(rng)
  if pad > 0:
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))
  if flip:
    image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
  return image


def weak_augment(images_uint8, rng, *, crop_pad: int, flip: bool):
  """uint8 NHWC -> float32 in [0, 1], randomly cropped/flipped per sample (rng=None: neither)."""
  x = images_uint8.astype(jnp.float32) / 255.0
  if rng is not None and (crop_pad > 0 or flip):
    keys = jax.random.split(rng, x.shape[0])
    x = jax.vmap(lambda im, k: _random_crop_flip(im, k, crop_pad, flip))(x, keys)
  return x
