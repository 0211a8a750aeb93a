"""StyleGAN2-ADA discriminator (NVlabs/stylegan2-ada-pytorch `training/networks.py`) in Flax.

Only needed to *train* a generator (`mgr_jax.gan`); MGR itself uses G alone.
Variable names and layouts mirror the official `state_dict`, as in `stylegan2.py`:

  official key               Flax variable (variables['params'][...])
  b32.fromrgb.weight         ['b32']['fromrgb']['weight']    [O, I, 1, 1]
  b32.conv0.weight / .bias   ['b32']['conv0']['weight']      [O, I, 3, 3]
  b32.conv1.weight / .bias   ['b32']['conv1']['weight']      (3x3, down 2)
  b32.skip.weight            ['b32']['skip']['weight']       (1x1, down 2, no bias; 'resnet')
  b4.conv / b4.fc / b4.out   ['b4']['conv'|'fc'|'out'][...]  (epilogue; fc input in NCHW order)
  mapping.embed / mapping.fcN  ['mapping'][...]               (label → cmap, c_dim > 0 only)

Equalised learning rate, lrelu gain √2, `conv_clamp` and the label mapping are those of
`stylegan2.py` (imported, not copied). Images go in NHWC float32 in [-1, 1]; logits come out
[N, 1]. Conditioning is the official projection: ⟨out(x), mapping(c)⟩ / √cmap_dim.
"""
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgr_jax.generators.stylegan2 import (ACTIVATIONS, FullyConnectedLayer, MappingNetwork,
                                          bias_act, setup_filter, upfirdn2d)

_CONV_DN = ('NHWC', 'OIHW', 'NHWC')


def downsample2d(x, f, down: int = 2):
  """`upfirdn2d.downsample2d`: output is exactly 1/down of the input size."""
  fw = f.shape[-1]
  return upfirdn2d(x, f, pad=((fw - down + 1) // 2, (fw - down) // 2), down=down)


def conv2d_down(x, w, f, down: int = 1, padding: int = 0):
  """`conv2d_resample` for up=1: a plain correlation with the [O, I, k, k] weight, or for
  down=2 the official fast paths (1x1: filter-and-decimate, then conv; kxk: filter, then
  stride-2 conv)."""
  _, _, kh, kw = w.shape
  if down == 1:
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=_CONV_DN)
  fw = f.shape[-1]
  p0 = padding + (fw - down + 1) // 2
  p1 = padding + (fw - down) // 2
  if kh == 1 and kw == 1:
    x = upfirdn2d(x, f, pad=(p0, p1), down=down)
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(0, 0)] * 2, dimension_numbers=_CONV_DN)
  x = upfirdn2d(x, f, pad=(p0, p1))
  return jax.lax.conv_general_dilated(x, w, (down, down), [(0, 0)] * 2,
                                      dimension_numbers=_CONV_DN)


class DownConv2dLayer(nn.Module):
  """The official `Conv2dLayer` with `down` (stylegan2.Conv2dLayer has only `up`)."""
  in_channels: int
  out_channels: int
  kernel_size: int
  use_bias: bool = True
  activation: str = 'linear'
  down: int = 1
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, gain=1.0):
    k = self.kernel_size
    w = self.param('weight', lambda key, s: jax.random.normal(key, s, jnp.float32),
                   (self.out_channels, self.in_channels, k, k))
    w = w * (1.0 / math.sqrt(self.in_channels * k * k))
    x = conv2d_down(x, w.astype(x.dtype), setup_filter(self.resample_filter), self.down, k // 2)
    b = self.param('bias', nn.initializers.zeros, (self.out_channels,)) if self.use_bias else None
    act_gain = ACTIVATIONS[self.activation][1] * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


class DiscriminatorBlock(nn.Module):
  in_channels: int  # 0 = first block (takes the image).
  tmp_channels: int
  out_channels: int
  resolution: int
  img_channels: int
  architecture: str = 'resnet'
  activation: str = 'lrelu'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, img):
    conv = lambda i, o, k, name, **kw: DownConv2dLayer(
        i, o, k, resample_filter=self.resample_filter, name=name, **kw)
    if self.in_channels == 0 or self.architecture == 'skip':
      y = conv(self.img_channels, self.tmp_channels, 1, 'fromrgb', activation=self.activation,
               conv_clamp=self.conv_clamp)(img)
      x = x + y if x is not None else y
      img = (downsample2d(img, setup_filter(self.resample_filter))
             if self.architecture == 'skip' else None)
    conv0 = conv(self.tmp_channels, self.tmp_channels, 3, 'conv0', activation=self.activation,
                 conv_clamp=self.conv_clamp)
    conv1 = conv(self.tmp_channels, self.out_channels, 3, 'conv1', activation=self.activation,
                 down=2, conv_clamp=self.conv_clamp)
    if self.architecture == 'resnet':
      y = conv(self.tmp_channels, self.out_channels, 1, 'skip', use_bias=False, down=2)(
          x, gain=math.sqrt(0.5))
      x = y + conv1(conv0(x), gain=math.sqrt(0.5))
    else:
      x = conv1(conv0(x))
    return x, img


def minibatch_std(x, group_size: Optional[int] = 4, num_channels: int = 1):
  """`MinibatchStdLayer` in NHWC: appends `num_channels` feature maps holding the stddev
  over groups of `group_size` samples (sample i is grouped with i ± N/G, as the official
  reshape does)."""
  n, h, w, c = x.shape
  g = min(group_size, n) if group_size is not None else n
  if n % g:
    raise ValueError(f'minibatch-std: batch {n} is not a multiple of the group size {g}')
  f = num_channels
  y = x.reshape(g, n // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=0)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n/G, H, W, F, c/F]
  y = jnp.mean(y, axis=(1, 2, 4))  # [n/G, F]
  y = jnp.tile(y, (g, 1))  # [N, F]
  y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)


class DiscriminatorEpilogue(nn.Module):
  in_channels: int
  cmap_dim: int
  resolution: int
  img_channels: int
  architecture: str = 'resnet'
  mbstd_group_size: Optional[int] = 4
  mbstd_num_channels: int = 1
  activation: str = 'lrelu'
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, img, cmap):
    if self.architecture == 'skip':
      x = x + DownConv2dLayer(self.img_channels, self.in_channels, 1, activation=self.activation,
                              name='fromrgb')(img)
    if self.mbstd_num_channels > 0:
      x = minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = DownConv2dLayer(self.in_channels + self.mbstd_num_channels, self.in_channels, 3,
                        activation=self.activation, conv_clamp=self.conv_clamp, name='conv')(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's flatten(1) order
    x = FullyConnectedLayer(self.in_channels * self.resolution ** 2, self.in_channels,
                            activation=self.activation, name='fc')(x)
    x = FullyConnectedLayer(self.in_channels, 1 if self.cmap_dim == 0 else self.cmap_dim,
                            name='out')(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / math.sqrt(self.cmap_dim))
    return x


class Discriminator(nn.Module):
  """The official `Discriminator(c_dim, img_resolution, img_channels, architecture,
  channel_base, channel_max, num_fp16_res, conv_clamp, cmap_dim, block_kwargs,
  mapping_kwargs, epilogue_kwargs)`; nested kwargs as sorted (key, value) tuples
  (`from_kwargs` accepts dicts). fp16 is not used (num_fp16_res is accepted and ignored)."""
  c_dim: int
  img_resolution: int
  img_channels: int
  architecture: str = 'resnet'
  channel_base: int = 32768
  channel_max: int = 512
  num_fp16_res: int = 0
  conv_clamp: Optional[float] = None
  cmap_dim: Optional[int] = None
  block_kwargs: Tuple[Tuple[str, Any], ...] = ()
  mapping_kwargs: Tuple[Tuple[str, Any], ...] = ()
  epilogue_kwargs: Tuple[Tuple[str, Any], ...] = ()

  @classmethod
  def from_kwargs(cls, kwargs) -> 'Discriminator':
    kwargs = dict(kwargs)
    for key in ('block_kwargs', 'mapping_kwargs', 'epilogue_kwargs'):
      kwargs[key] = tuple(sorted(dict(kwargs.get(key) or {}).items()))
    return cls(**kwargs)

  def channels(self, res):
    return min(self.channel_base // res, self.channel_max)

  @property
  def block_resolutions(self):
    log2 = int(np.log2(self.img_resolution))
    return [2 ** i for i in range(log2, 2, -1)]

  @nn.compact
  def __call__(self, img, c=None):
    if self.architecture not in ('orig', 'skip', 'resnet'):
      raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {self.architecture!r}")
    if img.shape[1:] != (self.img_resolution, self.img_resolution, self.img_channels):
      raise ValueError(f'D expects [N, {self.img_resolution}, {self.img_resolution}, '
                       f'{self.img_channels}] images, got {img.shape}')
    cmap_dim = self.channels(4) if self.cmap_dim is None else self.cmap_dim
    if self.c_dim == 0:
      cmap_dim = 0
    common = dict(img_channels=self.img_channels, architecture=self.architecture,
                  conv_clamp=self.conv_clamp)
    img = img.astype(jnp.float32)
    x = None
    for res in self.block_resolutions:
      in_ch = self.channels(res) if res < self.img_resolution else 0
      x, img = DiscriminatorBlock(in_ch, self.channels(res), self.channels(res // 2), res,
                                  **common, **dict(self.block_kwargs), name=f'b{res}')(x, img)
    cmap = None
    if self.c_dim > 0:
      if c is None:
        raise ValueError(f'this discriminator is conditional (c_dim={self.c_dim}): pass c')
      cmap = MappingNetwork(z_dim=0, c_dim=self.c_dim, w_dim=cmap_dim, num_ws=None,
                            w_avg_beta=None, **dict(self.mapping_kwargs),
                            name='mapping')(None, c.astype(jnp.float32))
    return DiscriminatorEpilogue(self.channels(4), cmap_dim, 4, **common,
                                 **dict(self.epilogue_kwargs), name='b4')(x, img, cmap)
