"""Pieces every method's step shares: the static context, losses, the eval step."""
import dataclasses
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import optax

from mgr_jax.data.pipeline import preprocess


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Everything static a step needs; hashable, bound before jit."""
  model: Any  # The Flax classifier (ResNet18).
  tx: optax.GradientTransformation
  lr_schedule: Callable[[Any], Any]
  crop_pad: int
  flip: bool
  mean: Tuple[float, ...]
  std: Tuple[float, ...]

  def real_inputs(self, images_uint8, rng, train: bool = True):
    return preprocess(images_uint8, rng, train=train, crop_pad=self.crop_pad, flip=self.flip,
                      mean=self.mean, std=self.std)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classifier_forward(model, params, batch_stats, x, train: bool = True):
  """Logits and the new BatchNorm statistics (batch statistics when training)."""
  if not train:
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False), batch_stats
  logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                mutable=['batch_stats'])
  return logits, updates['batch_stats']


def eval_step(params, batch_stats, batch, *, ctx: StepContext):
  """Sums of loss and correct predictions over the real (unmasked) examples."""
  x = ctx.real_inputs(batch['image'], None, train=False)
  logits, _ = classifier_forward(ctx.model, params, batch_stats, x, train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  mask = batch['mask'].astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}
