"""ADA: each augmentation keeps shapes and is differentiable, p = 0 is the identity, the
blits are exact, and the adaptive p rises when D overfits and falls when it does not."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax.gan import ada

TRANSFORMS = ('xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'xfrac',
              'brightness', 'contrast', 'lumaflip', 'hue', 'saturation')


def _images(channels=3, n=8, size=8, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, channels),
                            minval=-1.0, maxval=1.0)


_bgc = jax.jit(lambda x, p, key: ada.augment(x, p, key))  # compiled once, used twice


def test_p_zero_is_identity():
  x = _images()
  out = _bgc(x, 0.0, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  # The full pipeline with every draw forced to identity (p > 0 but all multipliers 0 but
  # one that is off) is also the identity: the resample at integer positions is exact.
  spec = ada.AugmentSpec(xflip=1e-9)
  out = ada.augment(x, 1.0, jax.random.PRNGKey(1), spec)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-6)


@pytest.mark.parametrize('channels', [3, 1])
def test_each_transform_keeps_shape_changes_images_and_is_differentiable(channels):
  x = _images(channels)
  weights = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  # Grey images: only the colour maps differ (hue and saturation are not defined for them,
  # and the official pipe skips them too).
  names = TRANSFORMS if channels == 3 else ('brightness', 'contrast', 'lumaflip')

  @jax.jit  # One compilation for all transforms (eager dispatch is slow on CPU).
  def outputs_and_grads(x):
    results = {}
    for name in names:
      spec = ada.AugmentSpec(**{name: 1.0})
      loss = lambda x: jnp.sum(ada.augment(x, 1.0, jax.random.PRNGKey(3), spec) * weights)
      results[name] = (ada.augment(x, 1.0, jax.random.PRNGKey(3), spec), jax.grad(loss)(x))
    return results

  for name, (out, grad) in jax.device_get(outputs_and_grads(x)).items():
    assert out.shape == x.shape, name
    assert np.all(np.isfinite(out)), name
    assert not np.allclose(out, x), f'{name} at p=1 left every image unchanged'
    assert np.all(np.isfinite(grad)) and np.any(grad != 0), name


def test_blits_are_exact_flips_rotations_and_shifts():
  x = _images(n=16)
  out = np.asarray(ada.augment(x, 1.0, jax.random.PRNGKey(4), ada.AugmentSpec(xflip=1)))
  xs = np.asarray(x)
  flipped = [np.allclose(o, i[:, ::-1], atol=1e-5) for o, i in zip(out, xs)]
  kept = [np.allclose(o, i, atol=1e-5) for o, i in zip(out, xs)]
  assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)

  out = np.asarray(ada.augment(x, 1.0, jax.random.PRNGKey(5), ada.AugmentSpec(rotate90=1)))
  for o, i in zip(out, xs):
    assert any(np.allclose(o, np.rot90(i, k, axes=(0, 1)), atol=1e-5) for k in range(4))

  # Integer translation with reflect padding: interior pixels are a shifted copy.
  out = np.asarray(ada.augment(x, 1.0, jax.random.PRNGKey(6),
                               ada.AugmentSpec(xint=1, xint_max=0.25)))
  for o, i in zip(out, xs):
    assert any(np.allclose(o[2:-2, 2:-2], np.roll(i, (dy, dx), axis=(0, 1))[2:-2, 2:-2],
                           atol=1e-5) for dy in range(-2, 3) for dx in range(-2, 3))


def test_brightness_and_contrast_are_the_official_colour_maps():
  x = _images()
  out = np.asarray(ada.augment(x, 1.0, jax.random.PRNGKey(7), ada.AugmentSpec(brightness=1)))
  shift = (out - np.asarray(x)).reshape(len(out), -1)
  np.testing.assert_allclose(shift, shift[:, :1] * np.ones_like(shift), atol=1e-5)
  out = np.asarray(ada.augment(x, 1.0, jax.random.PRNGKey(8), ada.AugmentSpec(contrast=1)))
  ratio = (out / np.asarray(x)).reshape(len(out), -1)
  np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-4)


def test_probability_scales_the_share_of_augmented_images():
  x = _images(n=256, size=4)
  spec = ada.AugmentSpec(brightness=1)
  for p in (0.2, 0.7):
    out = np.asarray(ada.augment(x, p, jax.random.PRNGKey(9), spec))
    changed = np.mean(np.abs(out - np.asarray(x)).reshape(256, -1).max(1) > 1e-6)
    assert abs(changed - p) < 0.1, (p, changed)


def _run_heuristic(p0, real_logits, rounds=10, batch=32, interval=4, kimg=2.0):
  state = ada.AdaState.create(p0)
  history = []
  for _ in range(rounds):
    for _ in range(interval):
      state = ada.accumulate(state, real_logits)
    state = ada.adjust(state, target=0.6, batch_size=batch, interval=interval, kimg=kimg)
    history.append(float(state.p))
  return history


def test_p_rises_when_d_overfits_and_falls_when_it_does_not():
  step = 32 * 4 / 2000.0
  overfit = jnp.full((32, 1), 3.0)  # D is sure every real is real: E[sign] = 1 > 0.6.
  rising = _run_heuristic(0.0, overfit)
  np.testing.assert_allclose(rising, step * np.arange(1, 11), rtol=1e-5)
  healthy = jnp.where(jnp.arange(32)[:, None] % 2 == 0, 1.0, -1.0)  # E[sign] = 0 < 0.6.
  falling = _run_heuristic(1.0, healthy)
  np.testing.assert_allclose(falling, 1.0 - step * np.arange(1, 11), rtol=1e-5)
  # Clipped to [0, 1].
  assert _run_heuristic(0.05, healthy)[-1] == 0.0
  assert _run_heuristic(0.9, overfit)[-1] == 1.0
  # No signal accumulated: p stays.
  assert float(ada.adjust(ada.AdaState.create(0.3), 0.6, 32, 4, 1.0).p) == pytest.approx(0.3)


def test_augment_runs_under_jit_with_traced_p_and_is_deterministic_per_key():
  x = _images()
  a, b = _bgc(x, 0.5, jax.random.PRNGKey(0)), _bgc(x, 0.5, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(a, _bgc(x, 0.5, jax.random.PRNGKey(1)))
  assert dataclasses.asdict(ada.PIPES['bgc'])['hue'] == 1.0
