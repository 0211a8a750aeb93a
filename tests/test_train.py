"""Optimiser, schedule, and the base step on a fixed batch."""
import functools

import jax
import numpy as np
import optax

from mgr_jax.data import load_splits
from mgr_jax.methods import ClassifierContext, StepContext, base_step
from mgr_jax.models import build_model
from mgr_jax.train.state import create_train_state, lr_schedule, make_optimizer


def test_lr_schedule_decays_at_30_60_80_percent(tiny_config):
  tiny_config.num_epochs = 200
  tiny_config.learning_rate = 0.01
  schedule = lr_schedule(tiny_config, steps_per_epoch=10)
  got = [float(schedule(e * 10)) for e in (0, 59, 60, 119, 120, 159, 160, 199)]
  np.testing.assert_allclose(got, [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


def test_optimizer_is_torch_nesterov_sgd_with_weight_decay():
  class C:  # The few keys make_optimizer reads.
    num_epochs, learning_rate, lr_decay_at, lr_decay_factor = 10, 0.1, (), 0.1
    momentum, nesterov, weight_decay = 0.9, True, 0.01
  tx = make_optimizer(C, steps_per_epoch=1)
  p = {'w': np.array([1.0, -2.0], np.float32)}
  g = {'w': np.array([0.5, 0.25], np.float32)}
  state = tx.init(p)
  buf, expected = np.zeros(2), p['w'].astype(np.float64)
  for _ in range(3):  # torch.optim.SGD(nesterov=True) update rule, written out.
    d = g['w'] + 0.01 * expected
    buf = 0.9 * buf + d
    expected = expected - 0.1 * (d + 0.9 * buf)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(p['w'], expected, rtol=1e-6)


def test_base_step_lowers_loss_on_fixed_batch(tiny_config):
  splits = load_splits(tiny_config.data)
  model = build_model(tiny_config.model, splits.num_classes)
  tx = make_optimizer(tiny_config, 10)
  state = create_train_state(model, tx, 16, jax.random.PRNGKey(0))
  ctx = StepContext(ClassifierContext(model=model, tx=tx, lr_schedule=lr_schedule(tiny_config, 10),
                                      crop_pad=0, flip=False, mean=(0.5,) * 3, std=(0.5,) * 3))
  step = jax.jit(functools.partial(base_step, ctx=ctx))
  batch = {'image': splits.train.images[:32], 'label': splits.train.labels[:32]}
  losses = []
  before = jax.tree.map(np.asarray, state.params)
  for _ in range(8):
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 8
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, state.params)
  assert all(jax.tree.leaves(changed))
