"""Differentiable RandAugment: range, jit, gradients, per-sample ops, PIL parity where exact;
the generator-to-classifier views of methods/views.py."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

from mgr_jax import randaugment
from mgr_jax.methods import views
from mgr_jax.errors import UserError

B, H, W, C = len(randaugment.OPS), 16, 16, 3
SIGN = jnp.where(jnp.arange(B) % 2 == 0, 1.0, -1.0)


def _images():
  rs = np.random.RandomState(0)
  x = rs.uniform(size=(B, H, W, C)).astype(np.float32)
  x[0, :3] = 0.0  # exact black and white pixels
  x[0, -3:] = 1.0
  x[1] = 0.25  # a constant image (auto_contrast / equalize degenerate case)
  return jnp.asarray(x)


IMAGES = _images()
COTANGENT = jnp.asarray(np.random.RandomState(1).standard_normal((B, H, W, C)), jnp.float32)


_sample = jax.jit(randaugment.sample_rand_augment, static_argnums=(1, 2),
                  static_argnames=('ops', 'random_magnitude'))


@functools.lru_cache(maxsize=None)
def _op_fn(name):
  """jit((images, magnitude, sign) -> (T(images), d<cotangent, T(images)>/d images)); cached."""
  def f(images, magnitude, sign):
    out, vjp = jax.vjp(lambda x: randaugment.apply_op(x, name, magnitude, sign), images)
    return out, vjp(COTANGENT)[0]
  return jax.jit(f)


@pytest.mark.parametrize('name', randaugment.OPS)
def test_op_range_jit_and_gradient(name):
  for magnitude in (30.0, 13.0):
    out, grad = _op_fn(name)(IMAGES, magnitude, SIGN)
    assert out.shape == IMAGES.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, name
    assert np.all(np.isfinite(grad)), name
    per_sample = np.abs(np.asarray(grad)).reshape(B, -1).max(axis=1)
    assert np.all(per_sample > 0), (name, per_sample)
  out0, _ = _op_fn(name)(IMAGES, 0.0, SIGN)
  if name == 'posterize':  # M = 0 keeps 8 bits: rounds to the 8-bit grid
    np.testing.assert_allclose(out0, IMAGES, atol=0.5 / 255 + 1e-7)
  elif name not in ('auto_contrast', 'equalize'):  # these two have no magnitude
    np.testing.assert_array_equal(out0, IMAGES)


def test_per_sample_dispatch_equals_single_ops():
  """Sample i gets op i: the shared warp/blend/select machinery gives each op's own result."""
  params = randaugment.RandAugmentParams(op_index=jnp.arange(B, dtype=jnp.int32)[None],
                                     magnitude=jnp.full((1, B), 20.0), sign=SIGN[None])
  out = jax.jit(randaugment.apply_rand_augment)(IMAGES, params)
  for i, name in enumerate(randaugment.OPS):
    single, _ = _op_fn(name)(IMAGES, 20.0, SIGN)
    np.testing.assert_allclose(out[i], single[i], atol=1e-6, err_msg=name)


def test_known_values():
  x = IMAGES
  out, _ = _op_fn('brightness')(x, 30.0, -jnp.ones(B))
  np.testing.assert_allclose(out, 0.1 * x, rtol=1e-6)
  out, _ = _op_fn('solarize')(x, 30.0, SIGN)
  np.testing.assert_allclose(out, jnp.where(x > 0, 1 - x, x), atol=1e-7)
  # translate_x by exactly +2 pixels (sign +1): out[:, :, j] = x[:, :, j + 2].
  shift = 2.0
  magnitude = randaugment.MAX_MAGNITUDE * shift / (randaugment.MAX_TRANSLATE * W)
  out, _ = _op_fn('translate_x')(x, magnitude, jnp.ones(B))
  np.testing.assert_allclose(out[:, :, :-2], x[:, :, 2:], atol=1e-5)
  np.testing.assert_allclose(out[:, :, -2:], 0.5, atol=1e-5)  # the fill


def test_equalize_and_posterize_match_pil():
  rs = np.random.RandomState(2)
  u8 = (rs.uniform(size=(B, H, W, C)) ** 2 * 255).round().astype(np.uint8)
  x = jnp.asarray(u8 / 255.0, jnp.float32)
  eq, _ = _op_fn('equalize')(x, 0.0, SIGN)
  post, _ = _op_fn('posterize')(x, 15.0, SIGN)  # 8 - round(4 * 15/30) = 6 bits
  for i in range(3):
    img = Image.fromarray(u8[i])
    np.testing.assert_array_equal(np.round(np.asarray(eq[i]) * 255), ImageOps.equalize(img))
    np.testing.assert_array_equal(np.round(np.asarray(post[i]) * 255),
                                  ImageOps.posterize(img, 6))


@jax.jit
def _rand_augment_value_and_grad(rng, images):
  out, vjp = jax.vjp(lambda x: randaugment.rand_augment(rng, x, num_ops=2, magnitude=15.0), images)
  return out, vjp(COTANGENT)[0]


def test_rand_augment_whole():
  rng = jax.random.key(3)
  params = _sample(rng, B, 2, 15.0)
  assert params.op_index.shape == (2, B)
  assert len(np.unique(params.op_index)) >= 6  # many different ops are really in play
  out, grad = _rand_augment_value_and_grad(rng, IMAGES)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert np.all(np.isfinite(grad))
  assert np.all(np.abs(np.asarray(grad)).reshape(B, -1).max(axis=1) > 0)
  # Deterministic in the key, and equal to sampling then applying.
  np.testing.assert_array_equal(_rand_augment_value_and_grad(rng, IMAGES)[0], out)
  np.testing.assert_allclose(jax.jit(randaugment.apply_rand_augment)(IMAGES, params), out,
                             atol=1e-6)


def test_rand_augment_is_per_sample():
  same = jnp.broadcast_to(IMAGES[2:3], IMAGES.shape)
  rng = jax.random.key(4)
  out, _ = _rand_augment_value_and_grad(rng, same)
  params = _sample(rng, B, 2, 15.0)
  assert len({tuple(int(k) for k in params.op_index[:, b]) for b in range(B)}) > B // 2
  distinct = {np.asarray(o).tobytes() for o in out}
  assert len(distinct) > B // 2  # identical inputs, different augmentations
  other, _ = _rand_augment_value_and_grad(jax.random.key(5), same)
  assert not np.array_equal(other, out)


def test_random_magnitude():
  params = _sample(jax.random.key(0), B, 2, 12.0, random_magnitude=True)
  m = np.asarray(params.magnitude)
  assert m.min() >= 0 and m.max() <= 12.0 and m.std() > 1.0 and len(np.unique(m)) == m.size
  assert set(np.unique(params.sign)) == {-1.0, 1.0}


def test_unknown_op():
  with pytest.raises(UserError, match='translate_x'):
    randaugment.apply_op(IMAGES, 'cutout')
  with pytest.raises(UserError):
    randaugment.sample_rand_augment(jax.random.key(0), 2, ops=('rotate', 'mixup'))


def test_resize_and_normalize():
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  x = jnp.full((2, 8, 8, 3), 0.2)  # [-1, 1] → 0.6 in [0, 1]
  f = jax.jit(lambda x: views.resize_and_normalize(x, 12, mean, std))
  out = f(x)
  assert out.shape == (2, 12, 12, 3)
  np.testing.assert_allclose(out, (0.6 - np.array(mean)) / np.array(std) * np.ones_like(out),
                             rtol=1e-5)
  y = jax.random.uniform(jax.random.key(0), (2, 24, 24, 3), minval=-1, maxval=1)
  grad = jax.grad(lambda y: jnp.sum(jnp.sin(f(y))))(y)  # downsampling, antialiased
  assert np.all(np.isfinite(grad)) and np.all(np.abs(grad) > 0)
  np.testing.assert_array_equal(views.to_unit_range(jnp.array([-3., -1., 0., 1., 3.])),
                                [0., 0., 0.5, 1., 1.])


def test_pcr_views_reuse_draws():
  params = _sample(jax.random.key(6), B, 2, 10.0)
  make_views = jax.jit(lambda p, x: views.pcr_views(p, x, H, (0.5,) * 3, (0.5,) * 3))
  plain, aug = make_views(params, IMAGES * 2 - 1)
  np.testing.assert_allclose(plain, IMAGES * 2 - 1, atol=1e-6)  # same size: to [0,1] and back
  expected = jax.jit(randaugment.apply_rand_augment)(IMAGES, params) * 2 - 1
  np.testing.assert_allclose(aug, expected, atol=1e-5)
