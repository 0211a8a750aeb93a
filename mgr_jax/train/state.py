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


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """lr x decay_factor at each fraction of training in `lr_decay_at`, on epoch boundaries."""
  boundaries = {int(round(f * config.num_epochs)) * steps_per_epoch: config.lr_decay_factor
                for f in config.lr_decay_at}
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


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
