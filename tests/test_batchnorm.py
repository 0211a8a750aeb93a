"""mgr_jax.models.batchnorm: flax's BatchNorm variables, statistics, values and derivatives
(first order and forward-over-reverse), as accurate against float64 as flax's."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax.models import conv
from mgr_jax.models.batchnorm import BatchNorm


def _close(a, b, rtol):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b), (np.abs(a - b).max(), np.abs(b).max())


def _train(module, stats):
  def f(params, x):
    return module.apply({'params': params, 'batch_stats': stats}, x, mutable=['batch_stats'])
  return f


def test_variables_values_statistics_and_derivatives_equal_flax_batchnorm():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2.0, 3.0, (8, 6, 5, 4)), jnp.float32)
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  ours = BatchNorm(use_running_average=False, momentum=0.9)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
  init, init_ref = ours.init(jax.random.PRNGKey(0), x), flax_bn.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), init) == jax.tree.map(
      lambda a: (a.shape, a.dtype), init_ref)
  for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(init_ref)):
    np.testing.assert_array_equal(a, b)
  params = {'scale': jnp.linspace(0.5, 1.5, 4), 'bias': jnp.linspace(-1.0, 1.0, 4)}
  stats = {'mean': jnp.linspace(0.0, 1.0, 4), 'var': jnp.linspace(1.0, 2.0, 4)}

  (y, new), (y_ref, new_ref) = _train(ours, stats)(params, x), _train(flax_bn, stats)(params, x)
  _close(y, y_ref, 1e-6)
  assert jax.tree.structure(new) == jax.tree.structure(new_ref)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(new_ref)):  # Running statistics.
    _close(a, b, 1e-6)
  evaluate = lambda m: m.apply({'params': params, 'batch_stats': stats}, x)
  np.testing.assert_array_equal(evaluate(BatchNorm(use_running_average=True)),
                                evaluate(nn.BatchNorm(use_running_average=True)))

  def loss(module):
    return lambda p, x: jnp.sum(_train(module, stats)(p, x)[0] * g)

  grads = jax.grad(loss(ours), (0, 1))(params, x)
  grads_ref = jax.grad(loss(flax_bn), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    _close(a, b, 1e-6)
  # Forward over reverse, as meta.py's `exact` hypergradient takes it.
  tangents = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                          (params, x))
  hvp = jax.jvp(jax.grad(loss(ours), (0, 1)), (params, x), tangents)[1]
  hvp_ref = jax.jvp(jax.grad(loss(flax_bn), (0, 1)), (params, x), tangents)[1]
  for a, b in zip(jax.tree.leaves(hvp), jax.tree.leaves(hvp_ref)):
    _close(a, b, 1e-5)


def _float64_closed_form(x, g, scale):
  x64, g64 = x.astype(np.float64), g.astype(np.float64)
  axes = (0, 1, 2)
  var = x64.var(axes)
  x_hat = (x64 - x64.mean(axes)) / np.sqrt(var + 1e-5)
  n = x64.size / x.shape[-1]
  return {'scale': (g64 * x_hat).sum(axes), 'bias': g64.sum(axes),
          'x': scale / np.sqrt(var + 1e-5) * (g64 - g64.sum(axes) / n
                                              - x_hat * (g64 * x_hat).sum(axes) / n)}


def test_gradients_as_accurate_against_float64_as_flaxs():
  """Ours needs Σ dy·x − mean·Σ dy where flax's takes Σ dy·(x − mean): with a mean three
  times the deviation, compiled as the classifier's programs are, its scale, bias and input
  gradients stay within twice flax's error of the float64 closed form (and small)."""
  rng = np.random.default_rng(0)
  shape = (64, 16, 16, 4)
  x = rng.normal(3.0, 1.0, shape).astype(np.float32)
  g = rng.normal(0.5, 1.0, shape).astype(np.float32)
  scale = np.linspace(0.5, 1.5, 4).astype(np.float32)
  expected = _float64_closed_form(x, g, scale)
  stats = {'mean': jnp.zeros(4), 'var': jnp.ones(4)}
  params = {'scale': jnp.asarray(scale), 'bias': jnp.zeros(4)}
  errors = {}
  for name, module in (('ours', BatchNorm(use_running_average=False)),
                       ('flax', nn.BatchNorm(use_running_average=False))):
    loss = lambda p, x: jnp.sum(_train(module, stats)(p, x)[0] * g)
    grads, grad_x = jax.jit(jax.grad(loss, (0, 1)), compiler_options=conv.compiler_options())(
        params, x)
    got = {'scale': grads['scale'], 'bias': grads['bias'], 'x': grad_x}
    errors[name] = {k: np.linalg.norm(np.asarray(got[k], np.float64) - expected[k])
                    / np.linalg.norm(expected[k]) for k in expected}
  for k in expected:
    assert errors['ours'][k] <= max(2 * errors['flax'][k], 1e-6), (k, errors)
    assert errors['ours'][k] < 1e-4, (k, errors)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.dtype('bfloat16'), jnp.float32, None])
def test_output_dtype_follows_flax(dtype):
  for x in (jnp.ones((2, 3, 3, 4), jnp.bfloat16), jnp.ones((2, 3, 3, 4), jnp.float32)):
    for train in (True, False):
      module = BatchNorm(use_running_average=not train, dtype=dtype)
      ref = nn.BatchNorm(use_running_average=not train, dtype=dtype)
      variables = module.init(jax.random.PRNGKey(0), x)
      run = lambda m: m.apply(variables, x, mutable=['batch_stats'])[0]
      assert run(module).dtype == run(ref).dtype
