"""StyleGAN2-ADA generator (NVlabs/stylegan2-ada-pytorch `training/networks.py`) in Flax.

The module tree and the variable names mirror the official `state_dict`, so a converted
checkpoint is a renaming of tensors, nothing more:

  official key                        Flax variable (collection / path)
  mapping.fc0.weight                  params   mapping/fc0/weight
  mapping.embed.bias                  params   mapping/embed/bias
  mapping.w_avg                       buffers  mapping/w_avg
  synthesis.b4.const                  params   synthesis/b4/const
  synthesis.b8.conv0.affine.weight    params   synthesis/b8/conv0/affine/weight
  synthesis.b8.conv0.noise_const      buffers  synthesis/b8/conv0/noise_const
  synthesis.b8.torgb.weight           params   synthesis/b8/torgb/weight
  *.resample_filter                   (not stored: derived from `resample_filter` in the kwargs)

Layout: every tensor keeps its torch layout (dense [out, in], conv [O, I, k, k], const
[C, 4, 4], noise_const [res, res], noise_strength []), stored *unscaled* (equalised
learning rate: the run-time gain lr_multiplier / sqrt(fan_in) is applied in the forward
pass). Activations run in NHWC; images come out NHWC float32 in about [-1, 1].

The official fp16 layers (`num_fp16_res`) run in float32 here (the kwarg is accepted and
ignored). `w_avg` and `noise_const` live in the non-trainable collection 'buffers'.

On GPUs with TF32 (A100/H100) JAX's default float32 matmul/conv precision may use TF32; for
bit-faithful comparisons with the official code use `jax.default_matmul_precision('highest')`.

Pure functions for training code: `mapping(G, variables, z, labels, ...)`,
`synthesis(G, variables, ws, noise_mode, rng)` and `generate(...)`; shapes with
`abstract_variables(G)` (jax.eval_shape, nothing allocated); official init with `init(G, rng)`.
GAN training updates w_avg with `G.apply(variables, z, labels, update_w_avg=True,
mutable=['buffers'], method=Generator.map_latents)`.
"""
import math
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgr_jax.errors import UserError
from mgr_jax.generators.io import GeneratorDef

_SQRT2 = math.sqrt(2.0)

# name -> (function, default gain), as `bias_act.activation_funcs` (lrelu alpha 0.2).
ACTIVATIONS = {
    'linear': (lambda x: x, 1.0),
    'relu': (jax.nn.relu, _SQRT2),
    'lrelu': (lambda x: jax.nn.leaky_relu(x, 0.2), _SQRT2),
    'tanh': (jnp.tanh, 1.0),
    'sigmoid': (jax.nn.sigmoid, 1.0),
    'elu': (jax.nn.elu, 1.0),
    'selu': (jax.nn.selu, 1.0),
    'softplus': (jax.nn.softplus, 1.0),
    'swish': (lambda x: jax.nn.sigmoid(x) * x, _SQRT2),
}

NOISE_MODES = ('const', 'random', 'none')
_CONV_DN = ('NHWC', 'OIHW', 'NHWC')

# ----------------------------------------------------------------------------------------
# Functional ops (NHWC).


def normalize_2nd_moment(x, eps=1e-8):
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def bias_act(x, b=None, act='linear', gain=None, clamp=None):
  """x + b (on the last axis), activation, × gain (default: the activation's), clamp ±clamp."""
  fn, def_gain = ACTIVATIONS[act]
  gain = def_gain if gain is None else gain
  if b is not None:
    x = x + b.astype(x.dtype)
  x = fn(x)
  if gain != 1:
    x = x * gain
  if clamp is not None and clamp >= 0:
    x = jnp.clip(x, -clamp, clamp)
  return x


def setup_filter(taps) -> np.ndarray:
  """2-D FIR filter as `upfirdn2d.setup_filter` (outer product of 1-D taps, sum 1)."""
  f = np.asarray(taps, dtype=np.float32)
  if f.ndim == 0:
    f = f[None]
  if f.ndim == 1:
    f = np.outer(f, f)
  if f.ndim != 2:
    raise UserError(f'resample_filter must be 1-D or 2-D taps, got shape {f.shape}.')
  return (f / f.sum()).astype(np.float32)


def _separate(f):
  """(taps_y, taps_x) with outer(taps_y, taps_x) == f, or None if f is not separable."""
  u, sv, vt = np.linalg.svd(np.asarray(f, np.float64))
  if sv[1:].sum() > 1e-6 * sv[0]:
    return None
  return u[:, 0] * np.sqrt(sv[0]), vt[0] * np.sqrt(sv[0])


def _fir_axis(x, taps, axis, down=1):
  """Valid 1-D correlation with `taps` along `axis`, keeping every `down`-th output."""
  n_out = (x.shape[axis] - len(taps)) // down + 1
  out = None
  for i, t in enumerate(taps):
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(i, i + (n_out - 1) * down + 1, down)
    term = x[tuple(idx)] * float(t)
    out = term if out is None else out + term
  return out


def _zero_insert(x, axis, up):
  shape = list(x.shape)
  shape[axis] *= up
  return jnp.stack([x] + [jnp.zeros_like(x)] * (up - 1), axis=axis + 1).reshape(shape)


def upfirdn2d(x, f, up=1, pad=(0, 0), gain=1.0, down=1):
  """Zero-insertion upsampling by `up`, padding (before, after) on H and W, FIR filter f
  (true convolution, as the official `flip_filter=False`), scaled by `gain`, then keeping
  every `down`-th sample. NHWC.

  Separable filters (all of StyleGAN's) run as two 1-D passes of shifted slices: XLA:CPU
  runs depthwise (feature_group_count=C) convolutions and their gradients 10-50x slower.
  """
  p0, p1 = pad
  if p0 < 0 or p1 < 0:
    raise ValueError('negative padding is not used by the generator')
  if up > 1:
    x = _zero_insert(_zero_insert(x, 1, up), 2, up)
  x = jnp.pad(x, ((0, 0), (p0, p1), (p0, p1), (0, 0)))
  taps = _separate(f)
  if taps is not None:
    ty, tx = taps
    x = _fir_axis(x, ty[::-1] * gain, 1, down)
    return _fir_axis(x, tx[::-1], 2, down)
  c = x.shape[-1]
  k = jnp.asarray(np.ascontiguousarray(f[::-1, ::-1]) * gain, x.dtype)
  k = jnp.tile(k[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
  return jax.lax.conv_general_dilated(
      x, k, window_strides=(down, down), padding=[(0, 0)] * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)


def _window(x, axis, start, length):
  """x[start : start + length] along `axis`, zeros outside the array."""
  lo, hi = max(0, -start), max(0, start + length - x.shape[axis])
  pads = [(0, 0)] * x.ndim
  pads[axis] = (lo, hi)
  idx = [slice(None)] * x.ndim
  idx[axis] = slice(start + lo, start + lo + length)
  return jnp.pad(x, pads)[tuple(idx)]


def _interleave(even, odd, axis, total):
  """y[2i] = even[i], y[2i + 1] = odd[i] along `axis`, cropped to `total`."""
  if odd.shape[axis] < even.shape[axis]:
    pads = [(0, 0)] * odd.ndim
    pads[axis] = (0, even.shape[axis] - odd.shape[axis])
    odd = jnp.pad(odd, pads)
  shape = list(even.shape)
  shape[axis] *= 2
  idx = [slice(None)] * len(shape)
  idx[axis] = slice(0, total)
  return jnp.stack([even, odd], axis=axis + 1).reshape(shape)[tuple(idx)]


def _conv_transpose2x(x, w, pad):
  """conv_general_dilated(x, w[:, :, ::-1, ::-1], padding=pad, lhs_dilation=2) computed
  as four small convolutions, one per output phase (no multiplications by inserted zeros;
  XLA:CPU's weight gradient of the lhs-dilated form is ~10x slower)."""
  _, h, wd, _ = x.shape
  _, _, kh, kw = w.shape
  wf = w[:, :, ::-1, ::-1]
  ho, wo = 2 * h + 2 * pad - kh, 2 * wd + 2 * pad - kw
  rows = []
  for a in range(2):  # output row parity: rows 2i + a use the taps ta, ta + 2, ...
    ta = (pad - a) % 2
    xa = _window(x, 1, (a + ta - pad) // 2, (ho - a + 1) // 2 + len(range(ta, kh, 2)) - 1)
    cols = []
    for b in range(2):
      tb = (pad - b) % 2
      xab = _window(xa, 2, (b + tb - pad) // 2, (wo - b + 1) // 2 + len(range(tb, kw, 2)) - 1)
      cols.append(jax.lax.conv_general_dilated(
          xab, wf[:, :, ta::2, tb::2], (1, 1), [(0, 0)] * 2, dimension_numbers=_CONV_DN))
    rows.append(_interleave(cols[0], cols[1], 2, wo))
  return _interleave(rows[0], rows[1], 1, ho)


def upsample2d(x, f, up=2):
  """`upfirdn2d.upsample2d`: output is exactly `up` times the input size."""
  fw = f.shape[-1]
  return upfirdn2d(x, f, up=up, pad=((fw + up - 1) // 2, (fw - up) // 2), gain=up * up)


def conv2d_resample(x, w, f=None, up=1, padding=0):
  """`conv2d_resample` for the cases the generator uses: up 1 (correlation with the
  [O, I, k, k] weight), or up 2 = transposed conv (stride 2, the weight not flipped)
  followed by the FIR filter with gain up², as the official code does. NHWC."""
  _, _, kh, kw = w.shape
  if up == 1:
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), [(padding, padding)] * 2, dimension_numbers=_CONV_DN)
  fw = f.shape[-1]
  p0 = padding + (fw + up - 1) // 2
  p1 = padding + (fw - up) // 2
  if kw == 1 and kh == 1:  # 1x1: convolve first, then upsample.
    x = jax.lax.conv_general_dilated(x, w, (1, 1), [(0, 0)] * 2, dimension_numbers=_CONV_DN)
    return upfirdn2d(x, f, up=up, pad=(p0, p1), gain=up * up)
  p0 -= kw - 1
  p1 -= kw - up
  pt = max(min(-p0, -p1), 0)
  # torch conv_transpose2d(x, w.transpose(0, 1), stride=up, padding=pt) with the weight used
  # unflipped (flip_weight=False in the layer) == correlation of the zero-dilated input with
  # the spatially flipped [O, I, k, k] weight, padded by k - 1 - pt.
  if up == 2 and kh > 1 and kw > 1:
    x = _conv_transpose2x(x, w, kh - 1 - pt)
  else:
    x = jax.lax.conv_general_dilated(
        x, w[:, :, ::-1, ::-1], (1, 1), [(kh - 1 - pt, kh - 1 - pt)] * 2,
        lhs_dilation=(up, up), dimension_numbers=_CONV_DN)
  return upfirdn2d(x, f, pad=(p0 + pt, p1 + pt), gain=up * up)


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None,
                     demodulate=True):
  """Modulated (and demodulated, eps 1e-8) convolution. x NHWC, weight [O, I, k, k],
  styles [N, I]. Computed as the official non-fused path (scale activations, shared
  weight, scale outputs), which equals the fused grouped conv mathematically."""
  x = x * styles[:, None, None, :].astype(x.dtype)
  x = conv2d_resample(x, weight.astype(x.dtype), resample_filter, up=up, padding=padding)
  if demodulate:
    wsq = jnp.sum(jnp.square(weight), axis=(2, 3))  # [O, I]
    dcoefs = jax.lax.rsqrt(jnp.einsum('ni,oi->no', jnp.square(styles), wsq) + 1e-8)
    x = x * dcoefs[:, None, None, :].astype(x.dtype)
  if noise is not None:
    x = x + noise.astype(x.dtype)
  return x


# ----------------------------------------------------------------------------------------
# Layers. Variable names follow the official state_dict.


def _normal(scale=1.0):
  return lambda key, shape: jax.random.normal(key, shape, jnp.float32) * scale


class FullyConnectedLayer(nn.Module):
  in_features: int
  out_features: int
  use_bias: bool = True
  activation: str = 'linear'
  lr_multiplier: float = 1.0
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x):
    w = self.param('weight', _normal(1.0 / self.lr_multiplier),
                   (self.out_features, self.in_features))
    x = x @ (w * (self.lr_multiplier / math.sqrt(self.in_features))).T.astype(x.dtype)
    b = None
    if self.use_bias:
      b = self.param('bias', lambda k, s: jnp.full(s, self.bias_init, jnp.float32),
                     (self.out_features,))
      if self.lr_multiplier != 1:
        b = b * self.lr_multiplier
    return bias_act(x, b, act=self.activation)


class Conv2dLayer(nn.Module):
  """Plain equalised-LR conv; the generator uses it only as the 'resnet' skip (1x1, up 2)."""
  in_channels: int
  out_channels: int
  kernel_size: int
  use_bias: bool = True
  activation: str = 'linear'
  up: int = 1
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, gain=1.0):
    k = self.kernel_size
    w = self.param('weight', _normal(), (self.out_channels, self.in_channels, k, k))
    w = w * (1.0 / math.sqrt(self.in_channels * k * k))
    x = conv2d_resample(x, w, setup_filter(self.resample_filter), up=self.up, padding=k // 2)
    b = self.param('bias', nn.initializers.zeros, (self.out_channels,)) if self.use_bias else None
    act_gain = ACTIVATIONS[self.activation][1] * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


class SynthesisLayer(nn.Module):
  in_channels: int
  out_channels: int
  w_dim: int
  resolution: int
  kernel_size: int = 3
  up: int = 1
  use_noise: bool = True
  activation: str = 'lrelu'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, w, noise_mode='const', gain=1.0):
    if noise_mode not in NOISE_MODES:
      raise ValueError(f'noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}')
    k, res = self.kernel_size, self.resolution
    styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0, name='affine')(w)
    weight = self.param('weight', _normal(), (self.out_channels, self.in_channels, k, k))
    noise = None
    if self.use_noise:
      noise_const = self.variable('buffers', 'noise_const', lambda: jax.random.normal(
          self.make_rng('params'), (res, res), jnp.float32))
      strength = self.param('noise_strength', nn.initializers.zeros, ())
      if noise_mode == 'random':
        noise = jax.random.normal(self.make_rng('noise'), (x.shape[0], res, res, 1), x.dtype)
        noise = noise * strength
      elif noise_mode == 'const':
        noise = (noise_const.value * strength)[None, :, :, None]
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    x = modulated_conv2d(x, weight, styles, noise=noise, up=self.up, padding=k // 2,
                         resample_filter=setup_filter(self.resample_filter))
    act_gain = ACTIVATIONS[self.activation][1] * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, bias, act=self.activation, gain=act_gain, clamp=clamp)


class ToRGBLayer(nn.Module):
  in_channels: int
  out_channels: int
  w_dim: int
  kernel_size: int = 1
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, w):
    k = self.kernel_size
    styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0, name='affine')(w)
    styles = styles * (1.0 / math.sqrt(self.in_channels * k * k))
    weight = self.param('weight', _normal(), (self.out_channels, self.in_channels, k, k))
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    x = modulated_conv2d(x, weight, styles, padding=k // 2, demodulate=False)
    return bias_act(x, bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  in_channels: int  # 0 = first block (learned const input).
  out_channels: int
  w_dim: int
  resolution: int
  img_channels: int
  is_last: bool
  architecture: str = 'skip'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  kernel_size: int = 3
  use_noise: bool = True
  activation: str = 'lrelu'

  @property
  def num_conv(self):
    return 1 if self.in_channels == 0 else 2

  @property
  def num_torgb(self):
    return 1 if (self.is_last or self.architecture == 'skip') else 0

  @nn.compact
  def __call__(self, x, img, ws, noise_mode='const'):
    layer = lambda i, o, name, up=1: SynthesisLayer(
        i, o, self.w_dim, self.resolution, kernel_size=self.kernel_size, up=up,
        use_noise=self.use_noise, activation=self.activation,
        resample_filter=self.resample_filter, conv_clamp=self.conv_clamp, name=name)
    ws = [ws[:, i] for i in range(ws.shape[1])]
    if self.in_channels == 0:
      const = self.param('const', _normal(), (self.out_channels, self.resolution, self.resolution))
      x = jnp.transpose(const, (1, 2, 0))[None]  # [1, H, W, C]
      x = jnp.broadcast_to(x, (ws[0].shape[0],) + x.shape[1:])
      x = layer(self.out_channels, self.out_channels, 'conv1')(x, ws.pop(0), noise_mode)
    elif self.architecture == 'resnet':
      y = Conv2dLayer(self.in_channels, self.out_channels, 1, use_bias=False, up=2,
                      resample_filter=self.resample_filter, name='skip')(x, gain=math.sqrt(0.5))
      x = layer(self.in_channels, self.out_channels, 'conv0', up=2)(x, ws.pop(0), noise_mode)
      x = layer(self.out_channels, self.out_channels, 'conv1')(x, ws.pop(0), noise_mode,
                                                               gain=math.sqrt(0.5))
      x = y + x
    else:
      x = layer(self.in_channels, self.out_channels, 'conv0', up=2)(x, ws.pop(0), noise_mode)
      x = layer(self.out_channels, self.out_channels, 'conv1')(x, ws.pop(0), noise_mode)

    if img is not None:
      img = upsample2d(img, setup_filter(self.resample_filter))
    if self.num_torgb:
      y = ToRGBLayer(self.out_channels, self.img_channels, self.w_dim,
                     conv_clamp=self.conv_clamp, name='torgb')(x, ws.pop(0))
      img = y if img is None else img + y
    return x, img


def block_resolutions(img_resolution):
  return [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]


def num_ws(img_resolution):
  """Number of w vectors: one per conv (b4 has 1, later blocks 2) plus the last ToRGB."""
  return 2 * len(block_resolutions(img_resolution))


class SynthesisNetwork(nn.Module):
  w_dim: int
  img_resolution: int
  img_channels: int
  channel_base: int = 32768
  channel_max: int = 512
  num_fp16_res: int = 0  # Accepted for compatibility; everything runs in float32.
  architecture: str = 'skip'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  kernel_size: int = 3
  use_noise: bool = True
  activation: str = 'lrelu'
  fp16_channels_last: bool = False  # Ignored (memory format of fp16 layers).

  def channels(self, res):
    return min(self.channel_base // res, self.channel_max)

  def _blocks(self):
    out = []
    for res in block_resolutions(self.img_resolution):
      in_ch = self.channels(res // 2) if res > 4 else 0
      out.append((res, in_ch, self.channels(res), res == self.img_resolution))
    return out

  @property
  def num_ws(self):
    return num_ws(self.img_resolution)

  @nn.compact
  def __call__(self, ws, noise_mode='const'):
    if ws.shape[1:] != (self.num_ws, self.w_dim):
      raise ValueError(f'ws must be [N, {self.num_ws}, {self.w_dim}], got {ws.shape}')
    ws = ws.astype(jnp.float32)
    x = img = None
    w_idx = 0
    for res, in_ch, out_ch, is_last in self._blocks():
      block = SynthesisBlock(
          in_ch, out_ch, self.w_dim, res, self.img_channels, is_last,
          architecture=self.architecture, resample_filter=tuple(self.resample_filter),
          conv_clamp=self.conv_clamp, kernel_size=self.kernel_size, use_noise=self.use_noise,
          activation=self.activation, name=f'b{res}')
      n = block.num_conv + block.num_torgb
      x, img = block(x, img, ws[:, w_idx:w_idx + n], noise_mode)
      w_idx += block.num_conv
    return img


class MappingNetwork(nn.Module):
  z_dim: int
  c_dim: int
  w_dim: int
  num_ws: Optional[int]
  num_layers: int = 8
  embed_features: Optional[int] = None
  layer_features: Optional[int] = None
  activation: str = 'lrelu'
  lr_multiplier: float = 0.01
  w_avg_beta: Optional[float] = 0.995

  @nn.compact
  def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False):
    embed_features = self.w_dim if self.embed_features is None else self.embed_features
    if self.c_dim == 0:
      embed_features = 0
    layer_features = self.w_dim if self.layer_features is None else self.layer_features
    features = ([self.z_dim + embed_features] + [layer_features] * (self.num_layers - 1)
                + [self.w_dim])

    parts = []
    if self.z_dim > 0:
      parts.append(normalize_2nd_moment(z.astype(jnp.float32)))
    if self.c_dim > 0:
      y = FullyConnectedLayer(self.c_dim, embed_features, name='embed')(c.astype(jnp.float32))
      parts.append(normalize_2nd_moment(y))
    x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
    for idx in range(self.num_layers):
      x = FullyConnectedLayer(features[idx], features[idx + 1], activation=self.activation,
                              lr_multiplier=self.lr_multiplier, name=f'fc{idx}')(x)

    w_avg = None
    if self.num_ws is not None and self.w_avg_beta is not None:
      w_avg = self.variable('buffers', 'w_avg', lambda: jnp.zeros((self.w_dim,), jnp.float32))
      if update_w_avg:  # Training only; needs apply(..., mutable=['buffers']).
        mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
        w_avg.value = mean + self.w_avg_beta * (w_avg.value - mean)

    if self.num_ws is not None:
      x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, x.shape[1]))

    if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
      if w_avg is None:
        raise ValueError('truncation needs w_avg (w_avg_beta is None)')
      avg = w_avg.value
      if self.num_ws is None or truncation_cutoff is None:
        x = avg + truncation_psi * (x - avg)
      else:
        head = avg + truncation_psi * (x[:, :truncation_cutoff] - avg)
        x = jnp.concatenate([head, x[:, truncation_cutoff:]], axis=1)
    return x


# ----------------------------------------------------------------------------------------
# Generator.

_MAPPING_KEYS = {'num_layers', 'embed_features', 'layer_features', 'activation',
                 'lr_multiplier', 'w_avg_beta'}
_SYNTHESIS_KEYS = {'channel_base', 'channel_max', 'num_fp16_res', 'architecture',
                   'resample_filter', 'conv_clamp', 'kernel_size', 'use_noise', 'activation',
                   'fp16_channels_last'}
_TOP_KEYS = {'z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'mapping_kwargs',
             'synthesis_kwargs'}


def _freeze(v):
  if isinstance(v, list):
    return tuple(_freeze(u) for u in v)
  return v


class Generator(nn.Module):
  """The official `Generator(z_dim, c_dim, w_dim, img_resolution, img_channels,
  mapping_kwargs, synthesis_kwargs)`. Build it from a kwargs dict with `from_kwargs`."""
  z_dim: int
  c_dim: int
  w_dim: int
  img_resolution: int
  img_channels: int
  mapping_kwargs: Tuple[Tuple[str, Any], ...] = ()
  synthesis_kwargs: Tuple[Tuple[str, Any], ...] = ()

  @classmethod
  def from_kwargs(cls, kwargs: Mapping[str, Any]) -> 'Generator':
    return cls(**validate_kwargs(kwargs, as_tuples=True))

  def setup(self):
    self.synthesis = SynthesisNetwork(
        w_dim=self.w_dim, img_resolution=self.img_resolution, img_channels=self.img_channels,
        **dict(self.synthesis_kwargs))
    self.mapping = MappingNetwork(
        z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, num_ws=self.num_ws,
        **dict(self.mapping_kwargs))

  @property
  def num_ws(self):
    return num_ws(self.img_resolution)

  def labels_to_c(self, labels, batch):
    """Integer class ids [N] → one-hot [N, c_dim]; a float [N, c_dim] array passes as is."""
    if self.c_dim == 0:
      return None
    if labels is None:
      raise ValueError(f'this generator is conditional ({self.c_dim} classes): pass labels')
    labels = jnp.asarray(labels)
    if labels.ndim == 2:
      return labels.astype(jnp.float32)
    if labels.shape != (batch,):
      raise ValueError(f'labels must be int class ids [{batch}] or c [{batch}, {self.c_dim}], '
                       f'got shape {labels.shape}')
    return jax.nn.one_hot(labels, self.c_dim, dtype=jnp.float32)

  def map_latents(self, z, labels=None, truncation_psi=1.0, truncation_cutoff=None,
                  update_w_avg=False):
    c = self.labels_to_c(labels, z.shape[0])
    return self.mapping(z, c, truncation_psi, truncation_cutoff, update_w_avg)

  def synthesize(self, ws, noise_mode='const'):
    return self.synthesis(ws, noise_mode)

  def __call__(self, z, labels=None, truncation_psi=1.0, truncation_cutoff=None,
               noise_mode='const'):
    return self.synthesize(self.map_latents(z, labels, truncation_psi, truncation_cutoff),
                           noise_mode)


def validate_kwargs(kwargs: Mapping[str, Any], as_tuples=False) -> dict:
  """Checks the official Generator kwargs; returns a normalised copy (JSON-able unless
  as_tuples, where the nested kwargs become sorted tuples for a hashable Flax module)."""
  kwargs = dict(kwargs)
  problems = []
  unknown = set(kwargs) - _TOP_KEYS
  if unknown:
    problems.append(f'unknown keys {sorted(unknown)}')
  for key in ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels'):
    if not isinstance(kwargs.get(key), int) or isinstance(kwargs.get(key), bool) or kwargs[key] < 0:
      problems.append(f'{key} must be a non-negative integer (got {kwargs.get(key)!r})')
  res = kwargs.get('img_resolution')
  if isinstance(res, int) and not (res >= 4 and res & (res - 1) == 0):
    problems.append(f'img_resolution must be a power of 2 >= 4 (got {res})')
  mk = dict(kwargs.get('mapping_kwargs') or {})
  sk = dict(kwargs.get('synthesis_kwargs') or {})
  if set(mk) - _MAPPING_KEYS:
    problems.append(f'unknown mapping_kwargs {sorted(set(mk) - _MAPPING_KEYS)}')
  if set(sk) - _SYNTHESIS_KEYS:
    problems.append(f'unknown synthesis_kwargs {sorted(set(sk) - _SYNTHESIS_KEYS)}')
  for d, name in ((mk, 'mapping_kwargs'), (sk, 'synthesis_kwargs')):
    act = d.get('activation', 'lrelu')
    if act not in ACTIVATIONS:
      problems.append(f'{name}.activation {act!r} is not one of {sorted(ACTIVATIONS)}')
  if sk.get('architecture', 'skip') not in ('orig', 'skip', 'resnet'):
    problems.append("synthesis_kwargs.architecture must be 'orig', 'skip' or 'resnet'")
  if problems:
    raise UserError('Invalid StyleGAN2-ADA generator kwargs: ' + '; '.join(problems) +
                    '. Expected the official Generator constructor arguments, e.g. '
                    '{"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 256, '
                    '"img_channels": 3, "mapping_kwargs": {"num_layers": 8}, '
                    '"synthesis_kwargs": {"channel_base": 16384, "channel_max": 512, '
                    '"num_fp16_res": 4, "conv_clamp": 256}}.')
  if 'resample_filter' in sk:
    sk['resample_filter'] = list(np.asarray(sk['resample_filter']).tolist())
  kwargs['mapping_kwargs'] = mk
  kwargs['synthesis_kwargs'] = sk
  if as_tuples:
    kwargs['mapping_kwargs'] = tuple(sorted((k, _freeze(v)) for k, v in mk.items()))
    kwargs['synthesis_kwargs'] = tuple(sorted((k, _freeze(v)) for k, v in sk.items()))
  return kwargs


def _dummy_inputs(G: Generator, batch=1):
  z = jnp.zeros((batch, G.z_dim), jnp.float32)
  labels = jnp.zeros((batch,), jnp.int32) if G.c_dim > 0 else None
  return z, labels


def init(G: Generator, rng, batch=1):
  """Fresh variables {'params', 'buffers'} with the official initialisation."""
  z, labels = _dummy_inputs(G, batch)
  return jax.jit(lambda rng: G.init({'params': rng}, z, labels))(rng)


def abstract_variables(G: Generator):
  """ShapeDtypeStruct tree of the variables (jax.eval_shape: nothing is allocated)."""
  z, labels = _dummy_inputs(G)
  return jax.eval_shape(lambda: G.init({'params': jax.random.PRNGKey(0)}, z, labels))


def mapping(G: Generator, variables, z, labels=None, truncation_psi=1.0, truncation_cutoff=None):
  """z [N, z_dim], labels int [N] (or c [N, c_dim]) → ws [N, num_ws, w_dim]."""
  return G.apply(variables, z, labels, truncation_psi, truncation_cutoff,
                 method=Generator.map_latents)


def synthesis(G: Generator, variables, ws, noise_mode='const', rng=None):
  """ws [N, num_ws, w_dim] → images NHWC float32 in about [-1, 1]. rng for noise 'random'."""
  rngs = {'noise': rng} if rng is not None else {}
  if noise_mode == 'random' and rng is None:
    raise ValueError("noise_mode='random' needs rng")
  return G.apply(variables, ws, noise_mode, rngs=rngs, method=Generator.synthesize)


def generate(G: Generator, variables, z, labels=None, truncation_psi=1.0,
             truncation_cutoff=None, noise_mode='const', rng=None):
  """mapping then synthesis: z → NHWC float32 images."""
  ws = mapping(G, variables, z, labels, truncation_psi, truncation_cutoff)
  return synthesis(G, variables, ws, noise_mode, rng)


def generator_def(kwargs: Mapping[str, Any]):
  """Registry entry (mgr_jax.generators.io.KINDS['stylegan2'])."""
  G = Generator.from_kwargs(kwargs)

  def apply(variables, z, labels=None, truncation_psi=1.0, noise_mode='const', rng=None,
            truncation_cutoff=None):
    return generate(G, variables, z, labels, truncation_psi, truncation_cutoff, noise_mode, rng)

  return GeneratorDef(kwargs=validate_kwargs(kwargs), z_dim=G.z_dim, num_classes=G.c_dim,
                      resolution=G.img_resolution, channels=G.img_channels, apply=apply,
                      abstract_variables=lambda: abstract_variables(G), module=G,
                      mapping=lambda variables, z, labels=None: mapping(G, variables, z, labels),
                      synthesis=lambda variables, ws, noise_mode='const': synthesis(
                          G, variables, ws, noise_mode))
