"""The train state record, the optimiser and the learning-rate schedule."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mgr_jax.models.classifier import init_variables


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # Classifier params {'backbone': ψ, 'fc': ω} (+ method-specific heads).
  batch_stats: Any
  opt_state: Any
  finder_params: Any = flax.struct.field(default_factory=dict)  # φ (meta-learning methods).
  finder_opt_state: Any = flax.struct.field(default_factory=dict)


def train_epochs(config, steps_per_epoch: int) -> int:
  """Epochs to train: `num_epochs`, raised until the run takes `min_train_steps` steps.

  A budget in epochs alone starves small datasets (541 images at batch 64 give 9 steps an
  epoch: 12 epochs are 108 steps, too few for any method to fit), so short epochs repeat.
  """
  return max(config.num_epochs, -(-config.min_train_steps // steps_per_epoch))


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """lr x decay_factor at each fraction of training in `lr_decay_at` (of all steps).

  Decays that land on one step compound (a dict keyed by step would keep only one), and
  none lands on step 0: the first step always runs at the full rate.
  """
  total = train_epochs(config, steps_per_epoch) * steps_per_epoch
  boundaries = {}
  for f in config.lr_decay_at:
    step = max(1, int(round(f * total)))
    boundaries[step] = boundaries.get(step, 1.0) * config.lr_decay_factor
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def lam_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """λ ramped linearly from 0 over the first `synth.lam_warmup` of training, then constant.

  An untrained g has large, unnormalised features: a full-weight consistency term in the
  first steps pulls them together before the cross-entropy has shaped them (see
  docs/small_data.md); consistency methods in semi-supervised learning ramp it up likewise.
  """
  warmup = int(round(config.synth.lam_warmup * train_epochs(config, steps_per_epoch)
                     * steps_per_epoch))
  if warmup <= 0:
    return optax.constant_schedule(config.synth.lam)
  return optax.linear_schedule(0.0, config.synth.lam, warmup)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """torch-style Nesterov SGD: weight decay added to the gradient before momentum."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(lr_schedule(config, steps_per_epoch), momentum=config.momentum,
                nesterov=config.nesterov))


def create_train_state(model, tx, image_size: int, rng, variables=None) -> TrainState:
  """A fresh state; `variables` (e.g. pretrained weights) replace the random init."""
  if variables is None:
    variables = init_variables(model, image_size, rng)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables['batch_stats'], opt_state=tx.init(params))
