"""Finder variants have the stated form; the KL penalty is Eq. 11."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgr_jax import finder
from mgr_jax.errors import UserError

Z_DIM = 6


def _leaky(x):
  return np.where(x >= 0, x, finder.NEGATIVE_SLOPE * x)


def _randomise(params, seed=0):
  """All leaves random (biases included), so every term of the formula is exercised."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(rs.standard_normal(x.shape), jnp.float32) for x in leaves])


def _setup(name, hidden=None, **kw):
  module = finder.make_finder(name, Z_DIM, hidden, **kw)
  z = jnp.asarray(np.random.RandomState(1).standard_normal((5, Z_DIM)), jnp.float32)
  params = module.init(jax.random.key(0), z)
  return module, z, params


def _mlp(p, z):
  h = _leaky(z @ p['dense0']['kernel'] + p['dense0']['bias'])
  h = _leaky(h @ p['dense1']['kernel'] + p['dense1']['bias'])
  return h @ p['dense2']['kernel'] + p['dense2']['bias']


@pytest.mark.parametrize('name', finder.FINDERS)
def test_variant_formula(name):
  module, z, params = _setup(name)
  params = _randomise(params)
  out = np.asarray(jax.jit(module.apply)(params, z))
  p = jax.tree_util.tree_map(np.asarray, params['params'])
  z = np.asarray(z)
  expected = {
      'residual': lambda: z + np.tanh(_mlp(p['mlp'], z)),
      'mlp': lambda: _mlp(p['mlp'], z),
      'linear': lambda: z @ p['dense']['kernel'] + p['dense']['bias'],
      'residual_shallow': lambda: z + np.tanh(z @ p['dense']['kernel'] + p['dense']['bias']),
  }[name]()
  assert out.shape == z.shape
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_residual_shallow_with_zero_weights_is_identity():
  module, z, params = _setup('residual_shallow')
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  np.testing.assert_array_equal(module.apply(zeros, z), z)


@pytest.mark.parametrize('name', ['residual', 'residual_shallow'])
def test_zero_init_last_starts_at_identity(name):
  module, z, params = _setup(name, zero_init_last=True)
  np.testing.assert_array_equal(module.apply(params, z), z)


def test_hidden_width():
  _, _, params = _setup('residual')
  shapes = [params['params']['mlp'][f'dense{i}']['kernel'].shape for i in range(3)]
  assert shapes == [(Z_DIM, Z_DIM)] * 3  # default hidden = z_dim
  _, _, params = _setup('mlp', hidden=7)
  shapes = [params['params']['mlp'][f'dense{i}']['kernel'].shape for i in range(3)]
  assert shapes == [(Z_DIM, 7), (7, 7), (7, Z_DIM)]


def test_unknown_name_and_wrong_z_dim():
  with pytest.raises(UserError, match='residual_shallow'):
    finder.make_finder('resnet', Z_DIM)
  module = finder.make_finder('linear', Z_DIM)
  with pytest.raises(UserError, match='z_dim'):
    module.init(jax.random.key(0), jnp.zeros((2, Z_DIM + 1)))


def test_kl_closed_form():
  fz = np.random.RandomState(0).standard_normal((32, 4)) * [0.5, 1.0, 2.0, 1.5] + [0, 1, -2, .3]
  mu, var = fz.mean(0), fz.var(0)  # population variance
  expected = np.mean(-0.5 * (1 + np.log(var) - mu**2 - var))
  np.testing.assert_allclose(finder.kl_penalty(jnp.asarray(fz, jnp.float32)), expected,
                             rtol=1e-5)
  # The Gaussian KL(N(μ, σ²) || N(0, 1)) is what this is, and it is >= 0.
  assert float(finder.kl_penalty(jnp.asarray(fz, jnp.float32))) > 0


def test_kl_is_zero_for_standard_statistics():
  # Every column holds +1 and -1 equally often: mean 0, population variance 1 exactly.
  fz = jnp.array([[1., -1., 1.], [-1., 1., -1.], [1., 1., -1.], [-1., -1., 1.]])
  assert float(finder.kl_penalty(fz)) == 0.0
  big = jax.random.normal(jax.random.key(0), (8192, 8))
  assert 0 <= float(finder.kl_penalty(big)) < 1e-3
  # Gradient is finite even for a constant batch (the eps inside the log).
  g = jax.grad(finder.kl_penalty)(jnp.ones((1, 3)))
  assert np.all(np.isfinite(g))


def test_finder_optimizer_is_adam():
  opt = finder.finder_optimizer()
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.3, -5.0])}
  updates, _ = opt.update(grads, opt.init(params), params)
  ref, _ = optax.adam(1e-4).update(grads, optax.adam(1e-4).init(params), params)
  np.testing.assert_allclose(updates['w'], ref['w'])
  np.testing.assert_allclose(updates['w'], [-1e-4, 1e-4], rtol=1e-4)  # first step: -lr·sign
