"""Optimiser, schedule, and the base step on a fixed batch."""
import functools

import jax
import numpy as np
import optax

from mgr_jax.data import load_splits
from mgr_jax.methods import ClassifierContext, StepContext, base_step
from mgr_jax.models import build_model
from mgr_jax.train.state import (create_train_state, lam_schedule, lr_schedule, make_optimizer,
                                 train_epochs)


def test_lr_schedule_decays_at_30_60_80_percent(tiny_config):
  tiny_config.num_epochs = 200
  tiny_config.learning_rate = 0.01
  schedule = lr_schedule(tiny_config, steps_per_epoch=10)
  got = [float(schedule(e * 10)) for e in (0, 59, 60, 119, 120, 159, 160, 199)]
  np.testing.assert_allclose(got, [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


def test_short_runs_compound_decays_and_never_decay_step_0(tiny_config):
  # One epoch of 3 steps: 0.3/0.6/0.8 land on steps 1, 2, 2 -> two decays compound at step 2.
  tiny_config.num_epochs, tiny_config.learning_rate = 1, 0.1
  schedule = lr_schedule(tiny_config, steps_per_epoch=3)
  np.testing.assert_allclose([float(schedule(s)) for s in range(3)], [0.1, 0.01, 1e-4],
                             rtol=1e-6)
  # One epoch of one step: every decay lands after the only step, none at step 0.
  assert float(lr_schedule(tiny_config, steps_per_epoch=1)(0)) == np.float32(0.1)


def test_min_train_steps_adds_epochs_and_stretches_the_schedule(tiny_config):
  tiny_config.num_epochs, tiny_config.min_train_steps = 12, 300
  assert train_epochs(tiny_config, steps_per_epoch=9) == 34  # ceil(300 / 9)
  assert train_epochs(tiny_config, steps_per_epoch=40) == 12  # Already 480 steps.
  schedule = lr_schedule(tiny_config, steps_per_epoch=9)  # 306 steps: first decay at 92.
  np.testing.assert_allclose([float(schedule(91)), float(schedule(92))],
                             [tiny_config.learning_rate, tiny_config.learning_rate * 0.1],
                             rtol=1e-6)


def test_lam_warmup_ramps_linearly_then_holds(tiny_config):
  tiny_config.num_epochs, tiny_config.synth.lam, tiny_config.synth.lam_warmup = 10, 0.4, 0.5
  lam = lam_schedule(tiny_config, steps_per_epoch=10)  # 100 steps, warm-up 50.
  np.testing.assert_allclose([float(lam(s)) for s in (0, 25, 50, 99)], [0.0, 0.2, 0.4, 0.4],
                             rtol=1e-6)
  tiny_config.synth.lam_warmup = 0.0
  assert float(lam_schedule(tiny_config, 10)(0)) == np.float32(0.4)


def test_optimizer_is_torch_nesterov_sgd_with_weight_decay():
  class C:  # The few keys make_optimizer reads.
    num_epochs, learning_rate, lr_decay_at, lr_decay_factor = 10, 0.1, (), 0.1
    min_train_steps = 0
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


def test_checkpoints_wait_for_the_interval_but_the_last_epoch_is_always_saved(tiny_config,
                                                                              tmp_path):
  from mgr_jax import checkpoints
  from mgr_jax.train.loop import CHECKPOINT_ITEMS, train_and_evaluate
  tiny_config.num_epochs, tiny_config.data.fraction = 3, 0.1
  tiny_config.checkpoint_every_seconds = 1e9  # Never due by time within this run.
  train_and_evaluate(tiny_config, str(tmp_path))
  manager = checkpoints.open_manager(str(tmp_path), CHECKPOINT_ITEMS)
  assert list(manager.all_steps()) == [3]
  with open(tmp_path / 'metrics.jsonl') as f:
    assert len(f.readlines()) == 3  # Every epoch's line is still written.
