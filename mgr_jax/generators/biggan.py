"""BigGAN-deep generator in Flax, equal in computation to pytorch-pretrained-BigGAN.

The layout follows `pytorch_pretrained_biggan.BigGAN` (the port of the TF-Hub
BigGAN-deep modules), so `converters/biggan.py` only folds spectral norm and
renames tensors:

  cond = concat(z, one_hot(y) @ E)                            E: [num_classes, z_dim]
  h    = reshape(Dense(cond), [B, 4, 4, 16 ch])                (the TF layout is NHWC)
  h    = GenBlock / SelfAttention ... (attention before layer `attention_layer_position`)
  x    = tanh(conv3x3(relu(BN(h)))[..., :3])

GenBlock (a bottleneck residual block):
  relu(cBN) -> conv1x1 (in/4) -> relu(cBN) -> [nearest up x2] -> conv3x3 -> relu(cBN) -> conv3x3
  -> relu(cBN) -> conv1x1 (out); skip: first in/2 channels when in != out, [nearest up x2].
Class-conditional BN: (x - mean) / sqrt(var + eps) * (1 + cond @ Ws) + cond @ Wo.

BatchNorm statistics are not batch statistics: the checkpoint stores `n_stats` rows of running
means/variances, one per truncation on the grid 0, 1/(n_stats-1), ..., 1. The package reads
them with `coef, i = modf(truncation / step)` and, when coef != 0, uses
`row[i] * coef + row[i + 1] * (1 - coef)` -- note the weights: row i gets `coef`, not
`1 - coef`. We reproduce that exactly (it is what the published images were made with).

Spectral norm is folded at conversion (W / (u . W v) with the stored u, v: PyTorch's eval path
does no power iteration), so this module holds plain weights. Parameters live in `params`,
the truncation-indexed statistics in `batch_stats` (they are never updated here).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgr_jax.errors import UserError
from mgr_jax.generators.io import GeneratorDef

KIND = 'biggan'


def check_config(layers, channel_width, attention_layer_position, z_dim, num_classes, n_stats):
  """Raises UserError unless the config describes a generator the package can run."""
  problems = []
  if not isinstance(layers, (list, tuple)):
    raise UserError(f'Invalid BigGAN config: `layers` must be a list of [up_sample, in, out], '
                    f'got {layers!r}.')
  layers = [tuple(l) if isinstance(l, (list, tuple)) else (l,) for l in layers]
  if not layers:
    problems.append('`layers` is empty')
  for name, value in (('channel_width', channel_width), ('z_dim', z_dim),
                      ('num_classes', num_classes)):
    if not isinstance(value, int) or value < 1:
      problems.append(f'`{name}` must be a positive integer, got {value!r}')
  if not isinstance(n_stats, int) or n_stats < 2:
    problems.append(f'`n_stats` must be an integer >= 2, got {n_stats!r}')
  if problems:
    raise UserError('Invalid BigGAN config: ' + '; '.join(problems) + '.')
  for i, layer in enumerate(layers):
    if len(layer) != 3 or layer[0] not in (True, False) or not all(
        isinstance(c, int) for c in layer[1:]):
      problems.append(f'layers[{i}] = {list(layer)} is not [up_sample: bool, in: int, out: int]')
      continue
    _, cin, cout = layer
    if cin * channel_width // 4 < 1:
      problems.append(f'layers[{i}] has {cin * channel_width} input channels; at least 4 are needed')
    if cin != cout and cout * channel_width != (cin * channel_width) // 2:
      problems.append(f'layers[{i}] changes channels {cin}->{cout}; the skip path can only halve '
                      'them (out = in / 2)')
    expected_in = 16 if i == 0 else layers[i - 1][2]
    if cin != expected_in:
      problems.append(f'layers[{i}] takes {cin} x channel_width channels but receives '
                      f'{expected_in} x channel_width')
  if layers and len(layers[-1]) == 3 and layers[-1][2] != 1:
    problems.append(f'the last layer must output 1 x channel_width channels (the final BN and '
                    f'conv_to_rgb have channel_width channels), got {layers[-1][2]}')
  if channel_width < 3:
    problems.append('channel_width must be >= 3 (the image is the first 3 channels of conv_to_rgb)')
  if 0 <= attention_layer_position < len(layers) and not problems:
    channels = layers[attention_layer_position][1] * channel_width
    if channels % 8:
      problems.append(f'the attention layer sees {channels} channels; a multiple of 8 is needed')
  if problems:
    raise UserError('Invalid BigGAN config: ' + '; '.join(problems) + '. Use the config.json '
                    'that came with the checkpoint, or fix these fields.')


def _stats_rows(table: jax.Array, truncation, n_stats: int) -> jax.Array:
  """The package's row lookup (see module docstring), on a [n_stats, C] table."""
  step = 1.0 / (n_stats - 1)
  try:
    t = float(truncation)  # Python/NumPy/concrete value: float64, exactly like the package.
  except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    t = None
  if t is not None:
    if not 0.0 < t <= 1.0:
      raise UserError(f'BigGAN truncation must be in (0, 1], got {t}. BigGAN stores batch-norm '
                      'statistics for truncations on that interval only.')
    coef, start = math.modf(t / step)
    start = int(start)
    if coef != 0.0:
      return table[start] * coef + table[start + 1] * (1.0 - coef)
    return table[start]
  # Traced truncation: same formula in float32. Exactly at grid points float32 rounding can
  # differ from the package's float64 (e.g. pick a neighbouring row); pass a Python float to
  # be bit-faithful.
  table = jnp.asarray(table)
  t = jnp.asarray(truncation, jnp.float32) / jnp.float32(step)
  start = jnp.floor(t)
  coef = t - start
  i0 = jnp.clip(start.astype(jnp.int32), 0, n_stats - 1)
  i1 = jnp.clip(i0 + 1, 0, n_stats - 1)
  mixed = table[i0] * coef + table[i1] * (1.0 - coef)
  return jnp.where(coef != 0.0, mixed, table[i0])


def _upsample2(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class TruncatedBatchNorm(nn.Module):
  """BigGAN's BN: stored statistics picked by truncation; class-conditional affine or plain."""
  features: int
  n_stats: int
  eps: float
  conditional: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, truncation, cond=None):
    means = self.variable('batch_stats', 'running_means', jnp.zeros, (self.n_stats, self.features))
    vars_ = self.variable('batch_stats', 'running_vars', jnp.ones, (self.n_stats, self.features))
    mean = _stats_rows(means.value, truncation, self.n_stats)
    var = _stats_rows(vars_.value, truncation, self.n_stats)
    inv = jax.lax.rsqrt(var + self.eps)
    if self.conditional:
      weight = 1.0 + nn.Dense(self.features, use_bias=False, dtype=jnp.float32, name='scale')(cond)
      bias = nn.Dense(self.features, use_bias=False, dtype=jnp.float32, name='offset')(cond)
      weight, bias = weight[:, None, None, :], bias[:, None, None, :]
    else:
      weight = self.param('weight', nn.initializers.ones, (self.features,))
      bias = self.param('bias', nn.initializers.zeros, (self.features,))
    out = (x.astype(jnp.float32) - mean) * inv * weight + bias
    return out.astype(self.dtype)


def _conv(features, kernel, name, dtype, use_bias=True):
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 dtype=dtype, name=name)


class GenBlock(nn.Module):
  in_size: int
  out_size: int
  up_sample: bool
  n_stats: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, truncation):
    mid = self.in_size // 4
    bn = lambda f, i: TruncatedBatchNorm(f, self.n_stats, self.eps, dtype=self.dtype,
                                         name=f'bn_{i}')
    h = _conv(mid, 1, 'conv_0', self.dtype)(nn.relu(bn(self.in_size, 0)(x, truncation, cond)))
    h = nn.relu(bn(mid, 1)(h, truncation, cond))
    if self.up_sample:
      h = _upsample2(h)
    h = _conv(mid, 3, 'conv_1', self.dtype)(h)
    h = _conv(mid, 3, 'conv_2', self.dtype)(nn.relu(bn(mid, 2)(h, truncation, cond)))
    h = _conv(self.out_size, 1, 'conv_3', self.dtype)(nn.relu(bn(mid, 3)(h, truncation, cond)))
    skip = x
    if self.in_size != self.out_size:
      skip = skip[..., :self.in_size // 2]
    if self.up_sample:
      skip = _upsample2(skip)
    return h + skip.astype(h.dtype)


class SelfAttention(nn.Module):
  """SAGAN attention with 2x2 max-pooled keys/values; out = x + gamma * o_conv(attn @ g)."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    conv = lambda f, name: _conv(f, 1, name, self.dtype, use_bias=False)
    pool = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2), padding='VALID')
    theta = conv(c // 8, 'snconv1x1_theta')(x).reshape(b, h * w, c // 8)
    phi = pool(conv(c // 8, 'snconv1x1_phi')(x)).reshape(b, -1, c // 8)
    g = pool(conv(c // 2, 'snconv1x1_g')(x)).reshape(b, -1, c // 2)
    attn = jax.nn.softmax(jnp.einsum('bqc,bkc->bqk', theta, phi).astype(jnp.float32), axis=-1)
    o = jnp.einsum('bqk,bkc->bqc', attn.astype(self.dtype), g).reshape(b, h, w, c // 2)
    o = conv(c, 'snconv1x1_o_conv')(o)
    gamma = self.param('gamma', nn.initializers.zeros, (1,))
    return x + (gamma * o).astype(x.dtype)


class BigGAN(nn.Module):
  """BigGAN-deep generator: `gen.apply(variables, z, labels, truncation)` -> NHWC in [-1, 1].

  Fields are the package's config.json fields (`output_dim` and `class_embed_dim` are unused
  by the package's computation and left out here; the resolution follows from `layers`).
  `labels`: int class ids [B], or class vectors [B, num_classes] (e.g. for interpolation).
  `truncation`: the BN-statistics truncation in (0, 1]; a Python float reproduces the package
  exactly. z is the caller's (the package samples truncation * truncnorm(-2, 2); see
  `truncated_noise`).
  """
  layers: Sequence[Sequence[Any]] = ((False, 16, 16), (True, 16, 16), (False, 16, 16),
                                     (True, 16, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4),
                                     (True, 4, 2), (False, 2, 2), (True, 2, 1))
  z_dim: int = 128
  num_classes: int = 1000
  channel_width: int = 128
  attention_layer_position: int = 8
  eps: float = 1e-4
  n_stats: int = 51
  dtype: Any = jnp.float32

  def __post_init__(self):
    # JSON gives lists; keep the module hashable (usable as a static jit argument).
    object.__setattr__(self, 'layers', tuple(tuple(l) for l in self.layers))
    super().__post_init__()

  @property
  def resolution(self) -> int:
    return 4 * 2 ** sum(bool(l[0]) for l in self.layers)

  @classmethod
  def from_config(cls, config: dict, **overrides) -> 'BigGAN':
    """From the package's config.json dict (its defaults fill missing fields)."""
    return cls(**config_kwargs(config), **overrides)

  @nn.compact
  def __call__(self, z, labels, truncation=0.4):
    check_config(self.layers, self.channel_width, self.attention_layer_position, self.z_dim,
                 self.num_classes, self.n_stats)
    ch = self.channel_width
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2 or z.shape[-1] != self.z_dim:
      raise UserError(f'BigGAN expects z of shape [batch, {self.z_dim}], got {z.shape}.')
    labels = jnp.asarray(labels)
    if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
      class_vector = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    elif labels.ndim == 2 and labels.shape[-1] == self.num_classes:
      class_vector = labels.astype(jnp.float32)
    else:
      raise UserError(f'BigGAN expects labels as int class ids [batch] or class vectors '
                      f'[batch, {self.num_classes}], got {labels.dtype} {labels.shape}.')
    embed = nn.Dense(self.z_dim, use_bias=False, dtype=jnp.float32, name='embeddings')(
        class_vector)
    cond = jnp.concatenate([z, embed], axis=-1)

    h = nn.Dense(4 * 4 * 16 * ch, dtype=self.dtype, name='gen_z')(cond)
    h = h.reshape(-1, 4, 4, 16 * ch)
    index = 0  # The package's `layers` ModuleList index (attention takes one slot).
    for i, (up, cin, cout) in enumerate(self.layers):
      if i == self.attention_layer_position:
        h = SelfAttention(ch * cin, dtype=self.dtype, name=f'layers_{index}')(h)
        index += 1
      h = GenBlock(ch * cin, ch * cout, bool(up), self.n_stats, self.eps, dtype=self.dtype,
                   name=f'layers_{index}')(h, cond, truncation)
      index += 1
    h = TruncatedBatchNorm(ch, self.n_stats, self.eps, conditional=False, dtype=self.dtype,
                           name='bn')(h, truncation)
    # The package convolves to `ch` channels and keeps the first 3; the converter keeps only
    # those 3 output channels of the kernel (same numbers, ch/3 times cheaper).
    h = _conv(3, 3, 'conv_to_rgb', self.dtype)(nn.relu(h))
    return jnp.tanh(h.astype(jnp.float32))


def config_kwargs(config: dict) -> dict:
  """Module kwargs (JSON-able) from the package's config.json dict."""
  defaults = BigGAN.__dataclass_fields__
  known = ('layers', 'z_dim', 'num_classes', 'channel_width', 'attention_layer_position', 'eps',
           'n_stats')
  kwargs = {k: config[k] if k in config else defaults[k].default for k in known}
  kwargs['layers'] = tuple(tuple(l) if isinstance(l, (list, tuple)) else l
                           for l in kwargs['layers'])
  check_config(kwargs['layers'], kwargs['channel_width'], kwargs['attention_layer_position'],
               kwargs['z_dim'], kwargs['num_classes'], kwargs['n_stats'])
  kwargs['layers'] = [[bool(u), int(a), int(b)] for u, a, b in kwargs['layers']]
  kwargs['eps'] = float(kwargs['eps'])
  return kwargs


def abstract_variables(module: BigGAN):
  """The variables tree as jax.ShapeDtypeStruct leaves (nothing allocated)."""
  z = jnp.zeros((1, module.z_dim), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), z, labels, 1.0))


def truncated_noise(rng, batch_size: int, z_dim: int = 128, truncation: float = 0.4):
  """z as the package's `truncated_noise_sample`: truncation * truncnorm(-2, 2)."""
  return truncation * jax.random.truncated_normal(rng, -2.0, 2.0, (batch_size, z_dim))


def generator_def(kwargs):
  """Registry entry (mgr_jax.generators.io.KINDS['biggan']): kwargs as written by the converter.

  The loaded generator's `truncation_psi` is BigGAN's truncation (which BN-statistics row);
  z is used as given (sample it with `truncated_noise` for the usual truncation trick).
  """
  kwargs = config_kwargs(dict(kwargs))
  module = BigGAN(**kwargs)

  def apply(variables, z, labels=None, truncation_psi=1.0, noise_mode='const', rng=None,
            truncation=None):
    del noise_mode, rng  # BigGAN has no noise inputs.
    if labels is None:
      raise UserError('BigGAN is class-conditional: pass labels (int class ids [batch] or '
                      f'class vectors [batch, {module.num_classes}]).')
    return module.apply(variables, z, labels,
                        truncation_psi if truncation is None else truncation)

  return GeneratorDef(kwargs=kwargs, z_dim=module.z_dim, num_classes=module.num_classes,
                      resolution=module.resolution, channels=3, apply=apply,
                      abstract_variables=lambda: abstract_variables(module), module=module)
