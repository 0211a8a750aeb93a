"""A tiny random Flax generator `(z, labels) -> images in [-1, 1]` for method tests.

It has the interface of `mgr_jax.generators.LoadedGenerator` (z_dim, num_classes,
resolution, variables, pure `apply`) and counts its calls at trace time, so a test can see
whether a step uses it at all.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class _Net(nn.Module):
  num_classes: int
  resolution: int

  @nn.compact
  def __call__(self, z, labels):
    h = z
    if self.num_classes:
      h = jnp.concatenate([h, nn.Embed(self.num_classes, z.shape[-1])(labels)], -1)
    h = nn.leaky_relu(nn.Dense(64)(h), 0.2)
    h = nn.Dense(self.resolution * self.resolution * 3)(h)
    return jnp.tanh(h.reshape(z.shape[0], self.resolution, self.resolution, 3))


class TinyGenerator:
  def __init__(self, z_dim=8, num_classes=10, resolution=8, seed=0):
    self.z_dim, self.num_classes, self.resolution, self.channels = (z_dim, num_classes,
                                                                    resolution, 3)
    self.net = _Net(num_classes, resolution)
    self.variables = self.net.init(jax.random.PRNGKey(seed), jnp.zeros((1, z_dim)),
                                   jnp.zeros((1,), jnp.int32))
    self.calls = 0

  def apply(self, variables, z, labels=None, truncation_psi=1.0, noise_mode='const', rng=None):
    self.calls += 1
    if labels is None:
      labels = jnp.zeros((z.shape[0],), jnp.int32)
    return self.net.apply(variables, z, labels)
