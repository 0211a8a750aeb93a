"""A tiny random Flax generator `(z, labels) -> images in [-1, 1]` for method tests.

It has the interface of `mgr_jax.generators.LoadedGenerator` (z_dim, num_classes,
resolution, variables, pure `apply`, and a W space: `mapping` / `synthesis`) and counts its
calls at trace time, so a test can see whether a step uses it at all.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class _Net(nn.Module):
  num_classes: int
  resolution: int

  def setup(self):
    if self.num_classes:
      self.embed = nn.Embed(self.num_classes, 8)
    self.hidden = nn.Dense(64)
    self.out = nn.Dense(self.resolution * self.resolution * 3)

  def map(self, z, labels):
    """W: [N, 1, 64], one 'layer' as StyleGAN2's ws [N, num_ws, w_dim]."""
    h = z
    if self.num_classes:
      h = jnp.concatenate([h, self.embed(labels)], -1)
    return nn.leaky_relu(self.hidden(h), 0.2)[:, None]

  def synthesize(self, ws):
    h = self.out(ws[:, 0])
    return jnp.tanh(h.reshape(ws.shape[0], self.resolution, self.resolution, 3))

  def __call__(self, z, labels):
    return self.synthesize(self.map(z, labels))


class TinyGenerator:
  def __init__(self, z_dim=8, num_classes=10, resolution=8, seed=0):
    self.z_dim, self.num_classes, self.resolution, self.channels = (z_dim, num_classes,
                                                                    resolution, 3)
    self.net = _Net(num_classes, resolution)
    self.variables = self.net.init(jax.random.PRNGKey(seed), jnp.zeros((1, z_dim)),
                                   jnp.zeros((1,), jnp.int32))
    self.calls = 0

  def _labels(self, z, labels):
    return jnp.zeros((z.shape[0],), jnp.int32) if labels is None else labels

  def apply(self, variables, z, labels=None, truncation_psi=1.0, noise_mode='const', rng=None):
    self.calls += 1
    return self.net.apply(variables, z, self._labels(z, labels))

  def mapping(self, variables, z, labels=None):
    return self.net.apply(variables, z, self._labels(z, labels), method=_Net.map)

  def synthesis(self, variables, ws, noise_mode='const'):
    self.calls += 1
    return self.net.apply(variables, ws, method=_Net.synthesize)
