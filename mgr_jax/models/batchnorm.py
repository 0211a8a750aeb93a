"""BatchNorm over NHWC with flax.linen.BatchNorm's variables and statistics, normalising as
x·a + (bias − mean·a), a = scale / sqrt(var + eps), in training.

flax's BatchNorm normalises as (x − mean)·a + bias. Its derivative needs x − mean, which XLA on
CPU writes out per layer in the forward and reads back in the backward; in this form the
derivative needs only x (the convolution's output, already in memory) and the per-channel
sums Σ dy and Σ dy·x. The digits classifier's forward + backward took 30.2 ms against 41.3
(this form, flax's) on a 2-core AMD EPYC (docs/performance.md, session 19). The statistics are
flax's (float32, E[x²] − E[x]², clipped at 0), so are the running averages. With running
averages (evaluation, converted weights) it normalises as flax does: no derivative to save, and
(x − mean) keeps converted models' outputs as close to torch's as before.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class BatchNorm(nn.Module):
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None  # Output dtype; None: x's promoted with float32, as flax's.

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    out_dtype = x32.dtype if self.dtype is None else self.dtype
    if self.use_running_average:
      a = scale * lax.rsqrt(ra_var.value + self.epsilon)
      return ((x32 - ra_mean.value) * a + bias).astype(out_dtype)
    axes = tuple(range(x.ndim - 1))
    mean = x32.mean(axes)
    var = jnp.maximum(0.0, (x32 * x32).mean(axes) - mean * mean)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    a = scale * lax.rsqrt(var + self.epsilon)
    return (x32 * a + (bias - mean * a)).astype(out_dtype)
