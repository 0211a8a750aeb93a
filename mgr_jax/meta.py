"""The MPS hypergradient ∇_φ L_val(θ'(φ)), model-agnostic (docs/method.md, paper Eq. 7-9).

    θ'(φ) = θ − η ∇_θ L_train(θ, φ)                       (Eq. 8, one plain SGD step)
    hypergradient = ∇_φ L_val(θ'(φ)) = −η ∇²_φθ L_train(θ, φ) · ∇_θ' L_val(θ')

Two modes (static):

- ``'exact'``: the exact derivative −η (∂²L_train/∂θ∂φ)ᵀ v with v = ∇_θ' L_val(θ'), as the
  forward-over-reverse JVP of ∇_φ L_train along v (the derivative 'fd' approximates), from
  one linearisation at θ that also yields the inner step's gradient. Same value as jax.grad
  through the inner step, at the cost of 'fd' (docs/method.md), and no second reverse pass
  over the inner backward pass.
- ``'fd'`` (DARTS, Eq. 9 with the perturbation at θ' as derived in DARTS):
  v = ∇_θ' L_val(θ');  ε = r / ||v||₂ (r = 0.01, global norm over the pytree);
  θ± = θ ± ε v;  hypergradient ≈ −η (∇_φ L_train(θ⁺, φ) − ∇_φ L_train(θ⁻, φ)) / (2ε).
  Only first derivatives; the two φ-gradients are taken as one gradient of the difference.

Everything here is pure and jit-able; ``mode``, ``train_has_aux`` and ``val_has_aux`` must be
static, ``lr`` may be a traced scalar (the current learning rate of a schedule).

Randomness. ``train_loss`` is evaluated at θ (inner step) and, in ``'fd'`` mode, at θ⁺ and θ⁻.
All random draws inside it (RandAugment ops, latent z, y_p, dropout) must be identical in those
evaluations, otherwise the finite difference measures the change of the draws, not of θ. The
caller therefore closes over *fixed* rng keys / pre-sampled draws; never split a key inside
``train_loss`` based on a counter or call order.

The meta objective of the paper also has λ_KL · KL(F_φ(z)) (Eq. 11), a direct function of φ that
does not go through θ'. It is not part of this function: add its gradient to ``hypergrad``.

Sharing work with the real step. ``L_train(θ, φ) = CE(f_θ(x), y) + λ·PCR(θ, φ)``: the real-batch
CE part does not depend on φ and its gradient at θ is the same in the inner step and in the real
update. Compute it once and pass it as ``theta_grad_fixed``; ``train_loss`` is then only the
φ-dependent part (λ·PCR). This also saves, in ``'fd'`` mode, two real-batch forward/backward
passes at θ± (a φ-independent term has zero φ-gradient). The result is identical to passing the
full loss.

BatchNorm. Evaluate the classifier in train mode (batch statistics) inside both losses and return
the updated batch statistics, if you want them, as aux; do not write them anywhere: only the real
update writes running statistics (docs/method.md, "BatchNorm").
"""
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from mgr_jax.errors import UserError

PyTree = Any
MODES = ('exact', 'fd')


@flax.struct.dataclass
class MetaResult:
  """What one hypergradient computation produces; everything is a primal value (no tracers).

  Attributes:
    hypergrad: ∇_φ L_val(θ'), same structure as φ (excludes any direct φ term such as KL).
    val_loss: L_val(θ').
    val_aux: auxiliary output of ``val_loss`` at θ' (None unless ``val_has_aux``).
    train_loss: value of ``train_loss(θ, φ)`` (only the φ-dependent part when
      ``theta_grad_fixed`` is given).
    train_aux: auxiliary output of ``train_loss`` at (θ, φ) (None unless ``train_has_aux``).
    theta_grad: ∇_θ L_train(θ, φ), the full inner gradient (theta_grad_fixed included).
    theta_prime: θ' = θ − η·theta_grad.
    val_grad: ∇_θ' L_val(θ') = v.
  """
  hypergrad: PyTree
  val_loss: jax.Array
  val_aux: Any
  train_loss: jax.Array
  train_aux: Any
  theta_grad: PyTree
  theta_prime: PyTree
  val_grad: Optional[PyTree] = None


def global_norm(tree: PyTree) -> jax.Array:
  """sqrt of the sum of squares of all leaves."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def _split_aux(out, has_aux: bool):
  return out if has_aux else (out, None)


def _axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
  """y + alpha·x, leafwise, keeping y's dtypes."""
  return jax.tree_util.tree_map(lambda a, b: (b + alpha * a).astype(b.dtype), x, y)


def _take_inner_step(theta, grad, lr, theta_grad_fixed):
  """(θ', the full inner gradient): theta_grad_fixed added to grad, then one SGD step."""
  if theta_grad_fixed is not None:
    grad = jax.tree_util.tree_map(lambda g, f: g + f.astype(g.dtype), grad, theta_grad_fixed)
  return _axpy(-lr, grad, theta), grad


def _inner_step(train_loss, theta, phi, lr, theta_grad_fixed, train_has_aux):
  """θ' and the pieces around it ('fd'; 'exact' takes the gradient from its linearisation)."""
  loss_fn = lambda t: _split_aux(train_loss(t, phi), train_has_aux)
  (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(theta)
  theta_prime, grad = _take_inner_step(theta, grad, lr, theta_grad_fixed)
  return theta_prime, grad, loss, aux


def hypergradient_with_aux(
    train_loss: Callable[..., Any],
    val_loss: Callable[..., Any],
    theta: PyTree,
    phi: PyTree,
    lr,
    mode: str = 'exact',
    *,
    theta_grad_fixed: Optional[PyTree] = None,
    train_has_aux: bool = False,
    val_has_aux: bool = False,
    fd_radius: float = 0.01,
) -> MetaResult:
  """∇_φ L_val(θ − η ∇_θ L_train(θ, φ)) plus the by-products a training step reuses.

  Args:
    train_loss: ``(theta, phi) -> loss`` or ``-> (loss, aux)`` if ``train_has_aux``. With
      ``theta_grad_fixed`` given, only the φ-dependent part of L_train (e.g. λ·PCR). Must use
      fixed random draws (see the module docstring).
    val_loss: ``theta -> loss`` or ``-> (loss, aux)`` if ``val_has_aux``; L_val on a D_val batch.
    theta: classifier parameters θ (any pytree of float arrays).
    phi: finder parameters φ (any pytree of float arrays).
    lr: inner step size η (python float or traced scalar).
    mode: 'exact' or 'fd' (static).
    theta_grad_fixed: optional ∇_θ of the φ-independent part of L_train at θ (same structure
      as θ), e.g. the real-batch CE gradient that the real update reuses.
    train_has_aux, val_has_aux: whether the losses return ``(loss, aux)`` (static).
    fd_radius: r in ε = r / ||v||₂ ('fd' only); 0.01 as in DARTS and the paper.

  Returns:
    A `MetaResult`.
  """
  if mode not in MODES:
    raise UserError(f'Unknown hypergradient mode {mode!r}; use one of {MODES}.')

  val_fn = lambda t: _split_aux(val_loss(t), val_has_aux)

  if mode == 'exact':
    # d/dφ L_val(θ − η ∇_θ L_train(θ, φ)) = −η (∂²L_train/∂θ∂φ)ᵀ v, v = ∇L_val(θ'): the
    # directional derivative of ∇_φ L_train along v, taken exactly by forward-over-reverse
    # instead of reverse-over-reverse through the whole inner backward pass. Linearising
    # (∇_θ L_train, ∇_φ L_train) at θ gives the inner step's gradient as its primal, and the
    # JVP along v, evaluated once v is known, reuses that pass's activations and cotangents:
    # only the tangent passes are new (4 classifier convolutions per layer, as fd's two
    # φ-gradients, instead of 6 for a JVP that recomputes its primal).
    def both_grads(t):
      loss_fn = lambda t_, p_: _split_aux(train_loss(t_, p_), train_has_aux)
      (loss, aux), grads = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(t, phi)
      return grads, (loss, aux)

    (grad, _), grads_jvp, (tloss, taux) = jax.linearize(both_grads, theta, has_aux=True)
    theta_prime, grad = _take_inner_step(theta, grad, lr, theta_grad_fixed)
    (vloss, vaux), v = jax.value_and_grad(val_fn, has_aux=True)(theta_prime)
    _, mixed = grads_jvp(v)
    hypergrad = jax.tree_util.tree_map(lambda d: (-lr * d).astype(d.dtype), mixed)
    return MetaResult(hypergrad=hypergrad, val_loss=vloss, val_aux=vaux, train_loss=tloss,
                      train_aux=taux, theta_grad=grad, theta_prime=theta_prime, val_grad=v)

  theta_prime, grad, tloss, taux = _inner_step(
      train_loss, theta, phi, lr, theta_grad_fixed, train_has_aux)
  (vloss, vaux), v = jax.value_and_grad(val_fn, has_aux=True)(theta_prime)

  # 'fd': the same directional derivative by a central difference (first order only).
  # v = 0 means a zero hypergradient; the floor keeps ε finite so the result is exactly 0.
  eps = fd_radius / jnp.maximum(global_norm(v), jnp.finfo(jnp.float32).tiny)
  theta_plus = _axpy(eps, v, theta)
  theta_minus = _axpy(-eps, v, theta)

  def difference(p):
    lp = _split_aux(train_loss(theta_plus, p), train_has_aux)[0]
    lm = _split_aux(train_loss(theta_minus, p), train_has_aux)[0]
    return lp - lm

  g_diff = jax.grad(difference)(phi)
  scale = -lr / (2.0 * eps)
  hypergrad = jax.tree_util.tree_map(lambda d: (scale * d).astype(d.dtype), g_diff)
  return MetaResult(hypergrad=hypergrad, val_loss=vloss, val_aux=vaux, train_loss=tloss,
                    train_aux=taux, theta_grad=grad, theta_prime=theta_prime, val_grad=v)


def hypergradient(train_loss: Callable[[PyTree, PyTree], jax.Array],
                  val_loss: Callable[[PyTree], jax.Array],
                  theta: PyTree, phi: PyTree, lr, mode: str = 'exact') -> PyTree:
  """∇_φ val_loss(θ − lr·∇_θ train_loss(θ, φ)), a pytree like φ (see `hypergradient_with_aux`)."""
  return hypergradient_with_aux(train_loss, val_loss, theta, phi, lr, mode).hypergrad


def agreement(reference, approx):
  """(cosine similarity, relative error ||approx − reference|| / ||reference||) of two
  vectors, in float64 on the host (so that the metric adds no float32 rounding of its own);
  a zero vector gives 0 rather than NaN."""
  import numpy as np
  reference = np.ravel(np.asarray(reference, np.float64))
  approx = np.ravel(np.asarray(approx, np.float64))
  tiny = np.finfo(np.float64).tiny
  ref_norm, approx_norm = np.linalg.norm(reference), np.linalg.norm(approx)
  cosine = float(approx @ reference / max(ref_norm * approx_norm, tiny))
  return cosine, float(np.linalg.norm(approx - reference) / max(ref_norm, tiny))


def compare_fd_with_exact(hypergrad_at: Callable[[str, Any], PyTree], radii) -> dict:
  """How well 'fd' approximates 'exact', for each radius r in `radii`.

  `hypergrad_at(mode, r)` returns the hypergradient (any pytree) of one fixed problem in
  `mode` ('exact' ignores r), e.g. `hypergradient_with_aux(..., mode, fd_radius=r)` jitted
  with r traced (one compilation per mode). Returns {'exact_norm': ||h||, 'cosine': [...],
  'rel_error': [...]} with h the exact hypergradient and, per r, the cosine and relative
  error of 'fd' with ε = r / ||v||. The central difference has a truncation error O(r²)
  and a rounding error O(u / r) (u: the unit roundoff of the dtype): against r the error is
  a V whose bottom moves to smaller r in float64. Where ∇_φ L_train is only piecewise smooth
  in θ (ReLU networks), θ ± εv crosses kinks and 'fd' does not converge to 'exact'.
  """
  import numpy as np
  from jax.flatten_util import ravel_pytree
  flat = lambda tree: np.asarray(ravel_pytree(tree)[0])
  exact = flat(hypergrad_at('exact', radii[0]))
  pairs = [agreement(exact, flat(hypergrad_at('fd', r))) for r in radii]
  return {'exact_norm': float(np.linalg.norm(exact.astype(np.float64))),
          'cosine': [c for c, _ in pairs], 'rel_error': [e for _, e in pairs]}
