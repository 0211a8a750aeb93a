"""meta.compare_fd_with_exact where the answer is known (x64 only inside these tests).

- L_train quadratic in θ: ∇_φ L_train is quadratic in θ, so the central difference of 'fd'
  is exact up to rounding, at every radius.
- L_train = Σ_j φ_j (u_j·θ)³ / 6 and L_val = w·θ (so v = w): per component the exact
  hypergradient is −η a_j² b_j / 2 and 'fd' adds −η ε² b_j³ / 6 (a = Uθ, b = Uw,
  ε = r / ||w||): an error of known size, O(r²).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import meta

RADII = np.array([1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
LR = 0.3


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _quadratic(dtype):
  rs = np.random.RandomState(0)
  n, m = 6, 4
  a = rs.standard_normal((n, n))
  A, B, C = a @ a.T, rs.standard_normal((n, m)), rs.standard_normal((n, n))
  d, xv = rs.standard_normal(m), rs.standard_normal(n)
  A, B, C, d, xv = (jnp.asarray(x, dtype) for x in (A, B, C, d, xv))
  theta = {'w': jnp.asarray(rs.standard_normal(n), dtype)}
  phi = {'p': jnp.asarray(rs.standard_normal(m), dtype)}

  def train_loss(t, p):
    t = t['w']
    return 0.5 * t @ A @ t + t @ B @ p['p'] + 0.5 * (t @ C @ t) * (d @ p['p'])

  val_loss = lambda t: jax.nn.logsumexp(t['w'] * xv)  # Nonlinear: v depends on θ'.
  return train_loss, val_loss, theta, phi


def _jitted(train_loss, val_loss, theta, phi, dtype=np.float64):
  """hypergrad_at(mode, r) as the experiment builds it: jitted per mode, r traced."""
  fn = jax.jit(lambda r, mode: meta.hypergradient_with_aux(
      train_loss, val_loss, theta, phi, LR, mode, fd_radius=r).hypergrad,
      static_argnames='mode')

  def hypergrad_at(mode, r):
    out = fn(np.asarray(r, dtype), mode=mode)
    assert jax.tree.leaves(out)[0].dtype == dtype
    return out
  return hypergrad_at


@pytest.mark.parametrize('dtype', [np.float64, np.float32])
def test_quadratic_inner_problem_is_exact_up_to_rounding(dtype):
  train_loss, val_loss, theta, phi = _quadratic(dtype)
  with jax.enable_x64(dtype == np.float64):
    out = meta.compare_fd_with_exact(_jitted(train_loss, val_loss, theta, phi, dtype), RADII)
  rel, cos = np.asarray(out['rel_error']), np.asarray(out['cosine'])
  assert out['exact_norm'] > 1e-2
  # No truncation error: what is left is rounding, below a few units of roundoff / r.
  tol = 50 * np.finfo(dtype).eps / RADII
  assert np.all(rel < tol), rel
  assert np.all(np.abs(1.0 - cos) < tol), cos
  if dtype == np.float32:  # Rounding, not truncation: it grows as r shrinks, about as 1/r.
    assert rel[-1] > 10 * rel[0]


def test_cubic_inner_problem_has_the_known_r_squared_error():
  rs = np.random.RandomState(1)
  n, m = 5, 3
  U, w = rs.standard_normal((m, n)), rs.standard_normal(n)
  theta, phi = rs.standard_normal(n), rs.standard_normal(m)
  train_loss = lambda t, p: jnp.sum(p * (jnp.asarray(U) @ t) ** 3) / 6.0
  val_loss = lambda t: jnp.asarray(w) @ t
  out = meta.compare_fd_with_exact(
      _jitted(train_loss, val_loss, jnp.asarray(theta), jnp.asarray(phi)), RADII)
  a, b = U @ theta, U @ w
  exact = -LR * a**2 * b / 2
  eps = RADII[:, None] / np.linalg.norm(w)
  error = -LR * eps**2 * b**3 / 6
  want_rel = np.linalg.norm(error, axis=1) / np.linalg.norm(exact)
  fd = exact + error
  want_cos = fd @ exact / (np.linalg.norm(fd, axis=1) * np.linalg.norm(exact))
  np.testing.assert_allclose(float(out['exact_norm']), np.linalg.norm(exact), rtol=1e-12)
  # Down to r = 1e-4 the truncation error (≈ 1e-9 here) dwarfs float64 rounding (≈ 1e-12).
  np.testing.assert_allclose(np.asarray(out['rel_error'])[:4], want_rel[:4], rtol=1e-3)
  np.testing.assert_allclose(np.asarray(out['rel_error'])[:3], want_rel[:3], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out['cosine']), want_cos, rtol=1e-12)
  rel = np.asarray(out['rel_error'])
  np.testing.assert_allclose(rel[:3] / rel[1:4], 100.0, rtol=1e-3)  # O(r²): r x10, error x100.


def test_agreement_of_zero_and_equal_vectors_is_finite():
  x = jnp.array([3.0, -4.0])
  cos, rel = meta.agreement(x, x)
  assert cos == pytest.approx(1.0) and rel == 0.0
  assert meta.agreement(x, -x) == (pytest.approx(-1.0), pytest.approx(2.0))
  assert meta.agreement(jnp.zeros(2), jnp.zeros(2)) == (0.0, 0.0)
