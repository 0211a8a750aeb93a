"""The finder F_φ: Z → Z of meta pseudo sampling (paper Eq. 10-11, appendix B.2).

Variants (``make_finder(name, z_dim)``):

- ``residual`` (the paper's, Eq. 10): F(z) = z + tanh(MLP(z)).
- ``linear``: F(z) = W z + b.
- ``mlp``: F(z) = MLP(z).
- ``residual_shallow``: F(z) = z + tanh(W z + b).

MLP = Dense(hidden) → leaky-ReLU → Dense(hidden) → leaky-ReLU → Dense(z_dim); hidden defaults
to z_dim. The paper gives neither the slope of the leaky-ReLU nor the initialisation: we use
PyTorch's default slope 0.01 and Flax's default initialisers (lecun-normal kernels, zero
biases). ``zero_init_last=True`` (residual variants only) zero-initialises the last layer so
that F starts as the identity, i.e. MPS starts from uniform sampling.

Inputs are [..., z_dim]; the finder acts on the last axis only.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mgr_jax.errors import UserError

NEGATIVE_SLOPE = 0.01  # torch.nn.LeakyReLU's default; the paper does not give it.


class MLP(nn.Module):
  """Three Dense layers with leaky-ReLU between them (none after the last)."""
  hidden: int
  out: int
  negative_slope: float = NEGATIVE_SLOPE
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, z):
    h = nn.leaky_relu(nn.Dense(self.hidden, name='dense0')(z), self.negative_slope)
    h = nn.leaky_relu(nn.Dense(self.hidden, name='dense1')(h), self.negative_slope)
    last_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.lecun_normal()
    return nn.Dense(self.out, kernel_init=last_init, name='dense2')(h)


def _check(z, z_dim):
  if z.shape[-1] != z_dim:
    raise UserError(f'Finder built for z_dim={z_dim} got latents of shape {z.shape}.')


class ResidualFinder(nn.Module):
  """Eq. 10: F(z) = z + tanh(MLP(z))."""
  z_dim: int
  hidden: Optional[int] = None
  negative_slope: float = NEGATIVE_SLOPE
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, z):
    _check(z, self.z_dim)
    mlp = MLP(self.hidden or self.z_dim, self.z_dim, self.negative_slope, self.zero_init_last,
              name='mlp')
    return z + jnp.tanh(mlp(z))


class MLPFinder(nn.Module):
  """Appendix B.2 'MLP': F(z) = MLP(z)."""
  z_dim: int
  hidden: Optional[int] = None
  negative_slope: float = NEGATIVE_SLOPE

  @nn.compact
  def __call__(self, z):
    _check(z, self.z_dim)
    return MLP(self.hidden or self.z_dim, self.z_dim, self.negative_slope, name='mlp')(z)


class LinearFinder(nn.Module):
  """Appendix B.2 'Linear': F(z) = W z + b."""
  z_dim: int

  @nn.compact
  def __call__(self, z):
    _check(z, self.z_dim)
    return nn.Dense(self.z_dim, name='dense')(z)


class ResidualShallowFinder(nn.Module):
  """Appendix B.2 'Residual+Shallow': F(z) = z + tanh(W z + b)."""
  z_dim: int
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, z):
    _check(z, self.z_dim)
    init = nn.initializers.zeros if self.zero_init_last else nn.initializers.lecun_normal()
    return z + jnp.tanh(nn.Dense(self.z_dim, kernel_init=init, name='dense')(z))


FINDERS = ('residual', 'linear', 'mlp', 'residual_shallow')


def make_finder(name: str, z_dim: int, hidden: Optional[int] = None, *,
                zero_init_last: bool = False) -> nn.Module:
  """The finder called ``name`` (one of `FINDERS`) for latents of size ``z_dim``.

  ``hidden`` is the MLP width (residual, mlp; default z_dim). ``zero_init_last`` makes the
  residual variants start as the identity.
  """
  if name == 'residual':
    return ResidualFinder(z_dim, hidden, zero_init_last=zero_init_last)
  if name == 'mlp':
    return MLPFinder(z_dim, hidden)
  if name == 'linear':
    return LinearFinder(z_dim)
  if name == 'residual_shallow':
    return ResidualShallowFinder(z_dim, zero_init_last=zero_init_last)
  raise UserError(f'Unknown finder {name!r}; choose one of {FINDERS}.')


def kl_penalty(fz: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Eq. 11: KL(N(μ, σ²) || N(0, 1)) per latent dimension, averaged over dimensions.

  μ and σ² are the mean and the population variance (ddof=0) of ``fz`` [batch, z_dim] over the
  batch axis; per dimension the term is −½ (1 + log(σ² + eps) − μ² − σ²). ``eps`` (default 1e-8)
  only keeps the log finite for a constant dimension (e.g. batch size 1); it vanishes in
  float32 next to σ² ≈ 1, so a batch with μ = 0, σ² = 1 gives exactly 0. A scalar.
  """
  fz = fz.reshape(-1, fz.shape[-1])
  mu = jnp.mean(fz, axis=0)
  var = jnp.mean(jnp.square(fz - mu), axis=0)
  return jnp.mean(-0.5 * (1.0 + jnp.log(var + eps) - jnp.square(mu) - var))


def finder_optimizer(lr=1e-4) -> optax.GradientTransformation:
  """Adam with the paper's learning rate 1e-4 (``lr`` may be an optax schedule)."""
  return optax.adam(lr)
