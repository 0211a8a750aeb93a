"""config.data.augment: each augmentation's defining property, and augment=none is today's step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgr_jax import randaugment as ra
from mgr_jax.config import validate
from mgr_jax.data import augment
from mgr_jax.errors import UserError
from mgr_jax.methods.common import (accuracy, apply_classifier_update, classifier_forward,
                                    cross_entropy)

B = 8


def _indexed_images(b=B, size=8):
  """Sample i is the constant i / b: every pixel names the sample it came from."""
  return jnp.broadcast_to((jnp.arange(b, dtype=jnp.float32) / b)[:, None, None, None],
                          (b, size, size, 3))


def _random_images(seed=0, b=B, size=8):
  return jax.random.uniform(jax.random.PRNGKey(seed), (b, size, size, 3))


@pytest.mark.parametrize('name', ['mixup', 'cutmix'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_label_mass_sums_to_one_and_matches_the_mix(name, seed):
  x, labels = _indexed_images(), jnp.arange(B)  # one class per sample
  fn = getattr(augment, name)
  mixed, targets = jax.jit(fn, static_argnums=3)(jax.random.PRNGKey(seed), x, labels, B)
  mixed, targets = np.asarray(mixed), np.asarray(targets)
  assert targets.shape == (B, B) and (targets >= 0).all()
  np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
  values = np.arange(B) / B
  for i in range(B):
    if name == 'cutmix':  # The share of pixels from sample c is the label mass of c.
      share = np.array([np.mean(np.isclose(mixed[i, ..., 0], v)) for v in values])
      np.testing.assert_allclose(share, targets[i], atol=1e-6)
    else:  # Every pixel is the targets-weighted mix of the sources.
      np.testing.assert_allclose(mixed[i], targets[i] @ values, atol=1e-6)


def test_cutmix_pastes_a_nonempty_box_sometimes():
  shares = [float(augment.cutmix(jax.random.PRNGKey(s), _indexed_images(), jnp.arange(B), B)[1]
                  .max(-1).min()) for s in range(6)]
  assert min(shares) < 1.0  # Some draw did paste a box.


def test_augmix_is_a_convex_mix_of_its_chains():
  x, key = _random_images(), jax.random.PRNGKey(3)
  both = jax.jit(lambda k, x: (augment.augmix(k, x, width=2, depth=2),
                               augment.augmix_parts(k, x, width=2, depth=2)))  # one compile
  out, (chains, w, m) = jax.tree.map(np.asarray, both(key, x))
  assert chains.shape == (2,) + x.shape
  assert (w >= 0).all() and (m >= 0).all() and (m <= 1).all()
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  x = np.asarray(x)
  expected = (1 - m)[:, None, None, None] * x + m[:, None, None, None] * np.einsum(
      'bk,kbhwc->bhwc', w, chains)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  parts = np.concatenate([x[None], chains])  # A convex mix lies between its parts.
  assert (out >= parts.min(0) - 1e-6).all() and (out <= parts.max(0) + 1e-6).all()
  assert not np.allclose(out, x) and out.min() >= 0 and out.max() <= 1


def test_trivial_augment_applies_exactly_one_op_per_sample():
  n, key = 6, jax.random.PRNGKey(5)
  x = _random_images(4, n)
  p = augment.sample_trivial_augment(key, n)
  assert p.op_index.shape == (1, n)  # One round: one op per sample.
  out, labels = augment.augment_real(augment.RealAugment('trivialaugment'), key, x,
                                     jnp.arange(n))
  np.testing.assert_array_equal(labels, np.arange(n))
  names = [ra.OPS[int(i)] for i in p.op_index[0]]
  singles = jax.jit(lambda x, m, s: jnp.concatenate(  # one compile for all samples
      [ra.apply_op(x[b:b + 1], names[b], m[b], s[b]) for b in range(n)]))(
          x, p.magnitude[0], p.sign[0])
  np.testing.assert_allclose(out, singles, atol=1e-6)


def test_unknown_augment_lists_the_valid_ones(tiny_config):
  tiny_config.data.augment = 'cutmixx'
  with pytest.raises(UserError, match='none, mixup, cutmix, augmix, randaugment'):
    validate(tiny_config)


def _base_run(tiny_config, name):
  from mgr_jax.data import load_splits
  from mgr_jax.train.setup import build_run
  tiny_config.data.augment, tiny_config.data.image_size = name, 8  # 8 px: fast compiles
  splits = load_splits(tiny_config.data)
  run = build_run(tiny_config, splits.num_classes, len(splits.train), devices=jax.devices()[:1])
  batch = {'image': splits.train.images[:32], 'label': splits.train.labels[:32]}
  return run, batch


def _base_step_before_augment(state, batch, rng, gen_vars=None, *, ctx):
  """methods/base.py:base_step as it was before data.augment, verbatim."""
  del gen_vars
  x = ctx.real_inputs(batch['image'], jax.random.fold_in(rng, state.step))

  def loss_fn(params):
    logits, batch_stats = classifier_forward(ctx.classifier.model, params, state.batch_stats, x)
    return cross_entropy(logits, batch['label']), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = apply_classifier_update(state, grads, ctx)
  new_state = new_state.replace(step=state.step + 1, batch_stats=batch_stats)
  return new_state, {'loss': loss, 'accuracy': accuracy(logits, batch['label'])}


def test_augment_none_is_todays_step(tiny_config):
  """augment=none: the base step equals the one written before data.augment, bit for bit."""
  run, batch = _base_run(tiny_config, 'none')
  rng = jax.random.PRNGKey(7)
  old = jax.jit(functools.partial(_base_step_before_augment, ctx=run.ctx))(run.state, batch, rng)
  new = jax.jit(functools.partial(run.method.step, ctx=run.ctx))(run.state, batch, rng)
  for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cutmix_real_cr_step_runs(tiny_config):
  """A regularised method (real_cr: no generator needed) trains on the augmented batch."""
  tiny_config.method = 'real_cr'
  tiny_config.synth.batch_size = 8
  run, batch = _base_run(tiny_config, 'cutmix')
  step = run.jit_step()
  _, metrics = step(run.state, batch, jax.random.PRNGKey(0), run.gen_vars)
  assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics))
