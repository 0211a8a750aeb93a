"""The hypergradient against finite differences, in float64 (x64 only inside these tests)."""
import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import meta
from mgr_jax.errors import UserError

D_Z, D_IN, HIDDEN, CLASSES, LAM = 3, 4, 5, 3, 0.7


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _problem(seed=0, dtype=np.float64):
  """A 2-layer tanh classifier θ and a nonlinear 'generator' x_p = tanh(z a + c) with φ = (a, c)."""
  rs = np.random.RandomState(seed)
  n = lambda shape, s=1.0: jnp.asarray(s * rs.standard_normal(shape), dtype)
  theta = {'w1': n((D_IN, HIDDEN), 0.7), 'b1': n((HIDDEN,), 0.1),
           'w2': n((HIDDEN, CLASSES), 0.7), 'b2': n((CLASSES,), 0.1)}
  phi = {'a': n((D_Z, D_IN), 0.7), 'c': n((D_IN,), 0.3)}
  data = dict(x=n((8, D_IN)), y=jnp.asarray(rs.randint(0, CLASSES, 8)),
              xv=n((8, D_IN)), yv=jnp.asarray(rs.randint(0, CLASSES, 8)),
              z=n((6, D_Z)), noise=n((6, D_IN), 0.2),  # `noise`: a fixed draw, like fixed keys
              val_scale=jnp.ones((), dtype))
  return theta, phi, data


def _features(theta, x):
  return jnp.tanh(x @ theta['w1'] + theta['b1'])


def _ce(theta, x, y):
  logits = _features(theta, x) @ theta['w2'] + theta['b2']
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _losses(data):
  def real_ce(theta):
    return _ce(theta, data['x'], data['y'])

  def phi_part(theta, phi):  # PCR-like consistency on features + a synthetic CE term
    xp = jnp.tanh(data['z'] @ phi['a'] + phi['c'])
    pcr = jnp.mean(jnp.sum((_features(theta, 0.8 * xp + data['noise']) - _features(theta, xp))**2,
                           axis=1))
    return LAM * pcr + 0.3 * _ce(theta, xp, jnp.arange(6) % CLASSES)

  train_loss = lambda theta, phi: real_ce(theta) + phi_part(theta, phi)
  val_loss = lambda theta: data['val_scale'] * _ce(theta, data['xv'], data['yv'])
  return train_loss, val_loss, real_ce, phi_part


@functools.partial(jax.jit, static_argnames='mode')
def _hypergradient(theta, phi, data, lr, mode):
  """meta.hypergradient under jit; module level so that tests share the compilation."""
  train_loss, val_loss, _, _ = _losses(data)
  return meta.hypergradient(train_loss, val_loss, theta, phi, lr, mode)


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
  a, b = _flat(a), _flat(b)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


LR = 0.5


def test_exact_matches_central_difference():
  theta, phi, data = _problem()
  train_loss, val_loss, _, _ = _losses(data)
  hg = _hypergradient(theta, phi, data, LR, 'exact')

  def outer(flat_phi):
    p = unravel(flat_phi)
    grad = jax.grad(train_loss)(theta, p)
    theta_prime = jax.tree_util.tree_map(lambda t, g: t - LR * g, theta, grad)
    return val_loss(theta_prime)

  flat_phi, unravel = jax.flatten_util.ravel_pytree(phi)
  h = 1e-6
  eye = h * jnp.eye(flat_phi.size, dtype=flat_phi.dtype)
  f = jax.jit(jax.vmap(outer))
  fd = (f(flat_phi + eye) - f(flat_phi - eye)) / (2 * h)
  assert hg['a'].dtype == jnp.float64
  assert np.linalg.norm(fd) > 1e-3  # a non-trivial problem
  assert _rel(hg, unravel(fd)) < 1e-6


def test_exact_equals_grad_through_the_inner_step():
  """The JVP form equals reverse-over-reverse differentiation of L_val(θ'(φ))."""
  theta, phi, data = _problem()
  train_loss, val_loss, _, _ = _losses(data)

  def outer(p):
    grad = jax.grad(train_loss)(theta, p)
    return val_loss(jax.tree_util.tree_map(lambda t, g: t - LR * g, theta, grad))

  reference = jax.jit(jax.grad(outer))(phi)
  assert _rel(_hypergradient(theta, phi, data, LR, 'exact'), reference) < 1e-12


@pytest.mark.parametrize('mode, passes', [('exact', 1), ('fd', 3)])
def test_exact_reuses_the_inner_pass(mode, passes):
  """exact's JVP runs on the inner step's own linearisation: L_train is traced once (fd: at θ,
  θ⁺ and θ⁻). A JVP taken after the inner step traced it twice and recomputed the primal
  pass, which XLA did not always merge (digits step: 1.11-1.17× fd's time, docs/performance.md)."""
  theta, phi, data = _problem()
  train_loss, val_loss, _, _ = _losses(data)
  traced = []

  def counted_train_loss(t, p):
    traced.append(1)
    return train_loss(t, p)

  jax.make_jaxpr(lambda t, p: meta.hypergradient(counted_train_loss, val_loss, t, p, LR, mode))(
      theta, phi)
  assert len(traced) == passes


def test_fd_mode_matches_exact():
  theta, phi, data = _problem(seed=1)
  exact, fd = (_hypergradient(theta, phi, data, LR, mode) for mode in ('exact', 'fd'))
  assert _rel(fd, exact) < 1e-3  # measured ~1e-5; v at θ instead of θ' would be far off


def test_fd_mode_float32_is_usable():
  """The same in float32, the precision training runs at (ε·||v|| = 0.01 is not too small)."""
  with jax.enable_x64(False):
    theta, phi, data = _problem(seed=1, dtype=np.float32)
    exact, fd = (_hypergradient(theta, phi, data, LR, mode) for mode in ('exact', 'fd'))
    assert exact['a'].dtype == jnp.float32
  assert _rel(fd, exact) < 1e-3  # measured ~1e-4


@pytest.mark.parametrize('mode', meta.MODES)
def test_theta_grad_fixed_and_aux_equal_plain_path(mode):
  theta, phi, data = _problem(seed=2)
  train_loss, val_loss, real_ce, phi_part = _losses(data)
  plain = jax.jit(functools.partial(meta.hypergradient_with_aux, train_loss, val_loss,
                                    mode=mode))(theta, phi, LR)

  def phi_part_aux(t, p):
    loss = phi_part(t, p)
    return loss, {'pcr': loss, 'doubled': 2 * loss}

  def val_aux(t):
    loss = val_loss(t)
    return loss, {'val': loss}

  @jax.jit
  def shared(theta, phi, lr):
    ce_grad = jax.grad(real_ce)(theta)  # computed once, reused by the real step
    return meta.hypergradient_with_aux(phi_part_aux, val_aux, theta, phi, lr, mode,
                                       theta_grad_fixed=ce_grad, train_has_aux=True,
                                       val_has_aux=True)

  @jax.jit
  def reference(theta, phi):
    grad = jax.grad(train_loss)(theta, phi)
    theta_prime = jax.tree_util.tree_map(lambda t, g: t - LR * g, theta, grad)
    return dict(grad=grad, theta_prime=theta_prime, val_loss=val_loss(theta_prime),
                val_grad=jax.grad(val_loss)(theta_prime), phi_part=phi_part(theta, phi),
                train_loss=train_loss(theta, phi))

  res, ref = shared(theta, phi, LR), reference(theta, phi)
  assert _rel(res.hypergrad, plain.hypergrad) < 1e-12
  assert _rel(res.theta_prime, plain.theta_prime) < 1e-12
  assert _rel(res.theta_grad, ref['grad']) < 1e-12
  assert _rel(res.theta_prime, ref['theta_prime']) < 1e-14
  np.testing.assert_allclose(res.val_loss, ref['val_loss'], rtol=1e-12)
  np.testing.assert_allclose(res.val_aux['val'], res.val_loss, rtol=1e-12)
  np.testing.assert_allclose(res.train_loss, ref['phi_part'], rtol=1e-12)
  np.testing.assert_allclose(res.train_aux['doubled'], 2 * res.train_loss, rtol=1e-12)
  np.testing.assert_allclose(plain.train_loss, ref['train_loss'], rtol=1e-12)
  assert _rel(res.val_grad, ref['val_grad']) < 1e-12


def test_zero_lr_and_zero_val_gradient_give_zero():
  theta, phi, data = _problem(seed=3)
  assert np.all(_flat(_hypergradient(theta, phi, data, 0.0, 'fd')) == 0)
  # v = 0: ε would be infinite; the result must be an exact, finite 0.
  data['val_scale'] = jnp.zeros_like(data['val_scale'])
  assert np.all(_flat(_hypergradient(theta, phi, data, LR, 'fd')) == 0)


def test_unknown_mode():
  theta, phi, data = _problem()
  train_loss, val_loss, _, _ = _losses(data)
  with pytest.raises(UserError, match='exact'):
    meta.hypergradient(train_loss, val_loss, theta, phi, LR, 'second_order')
