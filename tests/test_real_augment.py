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
  with pytest.raises(UserError, match='none, mixup, cutmix, snapmix, augmix, randaugment'):
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


def _box_np(box, h, w):
  y1, y2, x1, x2 = (int(v) for v in box)
  m = np.zeros((h, w), bool)
  m[y1:y2, x1:x2] = True
  return m


def test_snapmix_label_mass_follows_the_cam_weighted_areas():
  """ρ_a = CAM mass of x_i outside box a, ρ_b = CAM mass of x_perm(i) inside box b (numpy);
  box a of x_i shows x_perm(i); the label mass is ρ_a + ρ_b."""
  size, valid = 8, 0
  x, labels = _indexed_images(size=size), jnp.arange(B)
  values = np.arange(B) / B
  parts = jax.jit(augment.snapmix_parts, static_argnums=4)
  for seed in range(4):
    k_cam, key = jax.random.split(jax.random.PRNGKey(seed))
    cams = jax.random.normal(k_cam, (B, size, size))
    mixed, targets, perm, box_a, box_b, rho_a, rho_b = jax.tree.map(
        np.asarray, parts(key, x, labels, cams, B))
    mask_a, mask_b = _box_np(box_a, size, size), _box_np(box_b, size, size)
    if not (mask_a.any() and mask_b.any()):
      continue
    valid += 1
    spm = np.asarray(cams) - np.asarray(cams).min(axis=(1, 2), keepdims=True)
    expect_a = 1 - (spm * mask_a).sum((1, 2)) / spm.sum((1, 2))
    expect_b = (spm[perm] * mask_b).sum((1, 2)) / spm[perm].sum((1, 2))
    np.testing.assert_allclose(rho_a, expect_a, atol=1e-5)
    np.testing.assert_allclose(rho_b, expect_b, atol=1e-5)
    expected = np.zeros((B, B))
    expected[np.arange(B), np.arange(B)] += expect_a
    expected[np.arange(B), perm] += expect_b
    np.testing.assert_allclose(targets, expected, atol=1e-5)
    np.testing.assert_allclose(targets.sum(-1), expect_a + expect_b, atol=1e-5)
    for i in range(B):  # Constant images: the pasted box holds x_perm(i) exactly.
      np.testing.assert_allclose(mixed[i][mask_a], values[perm[i]], atol=1e-6)
      np.testing.assert_allclose(mixed[i][~mask_a], values[i], atol=1e-6)
  assert valid >= 2


def test_snapmix_with_flat_cams_is_cutmix_by_area():
  """A constant CAM has no mass: ρ falls back to the area shares, and the label mass is
  1 − (area_a − area_b) / HW (exactly 1 when the two boxes have the same area)."""
  size, x, labels = 8, _random_images(2, B, 8), jnp.arange(B)
  parts = jax.jit(augment.snapmix_parts, static_argnums=4)
  for seed in range(3):
    _, targets, perm, box_a, box_b, rho_a, rho_b = jax.tree.map(
        np.asarray, parts(jax.random.PRNGKey(seed), x, labels, jnp.ones((B, size, size)), B))
    area_a = _box_np(box_a, size, size).mean()
    area_b = _box_np(box_b, size, size).mean()
    if area_a == 0 or area_b == 0:  # Nothing pasted: the labels stay one-hot.
      np.testing.assert_allclose(targets, np.eye(B), atol=1e-6)
      continue
    np.testing.assert_allclose(rho_a, 1 - area_a, atol=1e-6)
    np.testing.assert_allclose(rho_b, area_b, atol=1e-6)
    np.testing.assert_allclose(targets.sum(-1), 1 - area_a + area_b, atol=1e-6)


def test_class_activation_map_averages_to_the_logit():
  """The head at every location of g's last map: its spatial mean is the class's logit."""
  from mgr_jax.models.cam import class_activation_maps
  from mgr_jax.models.resnet import ResNet18
  model = ResNet18(num_classes=5, width=0.125, small_stem=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(1), x)
  labels = jnp.array([0, 3, 4, 1])
  cams = class_activation_maps(model, variables['params'], variables['batch_stats'], x, labels,
                               train=False)
  logits = model.apply(variables, x)
  assert cams.shape == (4, 2, 2)  # g downsamples 16 px by 8
  np.testing.assert_allclose(cams.mean((1, 2)), logits[jnp.arange(4), labels], atol=1e-5)


def test_snapmix_base_step_trains_on_cam_weighted_targets(tiny_config):
  run, batch = _base_run(tiny_config, 'snapmix')
  state, metrics = run.jit_step()(run.state, batch, jax.random.PRNGKey(0), run.gen_vars)
  assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics))
  assert int(state.step) == 1
