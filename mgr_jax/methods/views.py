"""Generator output as classifier input, and PCR's two views (x_p, T(x_p)).

Everything is differentiable w.r.t. the images: the synthetic terms back-propagate through
these into the generator's latents and the finder. Generator output in [−1, 1] goes to [0, 1]
(clipped), is resized bilinearly to the classifier's input size, and is normalised by the same
`data.transforms.normalize` as real inputs.
"""
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from mgr_jax.data.transforms import normalize
from mgr_jax.randaugment import OPS, RandAugmentParams, apply_rand_augment, rand_augment


def to_unit_range(images_m11):
  """Generator output in [−1, 1] → [0, 1], clipped (saturated pixels get no gradient)."""
  return jnp.clip((images_m11 + 1.0) * 0.5, 0.0, 1.0)


def resize(images, size: Union[int, Tuple[int, int]], antialias: bool = True):
  """Differentiable bilinear resize of NHWC images to ``size`` (int or (h, w))."""
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  if images.shape[1:3] == (h, w):
    return images
  shape = (images.shape[0], h, w, images.shape[-1])
  return jax.image.resize(images, shape, method='linear', antialias=antialias)


def resize_and_normalize(images_m11, size, mean: Sequence[float], std: Sequence[float],
                         antialias: bool = True):
  """Generator output in [−1, 1] → classifier input: to [0, 1], resize, normalise."""
  return normalize(resize(to_unit_range(images_m11), size, antialias), mean, std)


def pcr_views(rng_or_params, images_m11, size, mean, std, *, num_ops: int = 2,
              magnitude=10.0, ops: Sequence[str] = OPS, random_magnitude: bool = False,
              fill: float = 0.5):
  """(x_p, T(x_p)) as classifier inputs, both from one resize: what PCR (Eq. 5) compares.
  T is applied at the classifier's resolution.

  ``rng_or_params``: a PRNG key, or `RandAugmentParams` drawn beforehand (to reuse the draws).
  """
  x01 = resize(to_unit_range(images_m11), size)
  if isinstance(rng_or_params, RandAugmentParams):
    augmented = apply_rand_augment(x01, rng_or_params, ops=ops, fill=fill)
  else:
    augmented = rand_augment(rng_or_params, x01, num_ops, magnitude, ops=ops,
                             random_magnitude=random_magnitude, fill=fill)
  return normalize(x01, mean, std), normalize(augmented, mean, std)
