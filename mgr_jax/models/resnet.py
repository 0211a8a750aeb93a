"""ResNet-18 with torchvision's structure, names and padding.

Parameter names follow torchvision's state_dict (`conv1`, `bn1`, `layer1_0/conv1`,
`layer2_0/downsample_conv`, `fc`) so that the converter only translates tensors.
The classifier is f = h ∘ g: `features` is g (global-average-pooled features), `head` is h.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mgr_jax.models.batchnorm import BatchNorm
from mgr_jax.models.conv import small_map_conv

# torch BatchNorm2d: eps 1e-5, momentum 0.1 (= Flax momentum 0.9).
_BN_KW = dict(momentum=0.9, epsilon=1e-5)


class Conv(nn.Conv):
  """nn.Conv (same parameters) whose small-map convolutions run as a matrix product on CPU
  (mgr_jax/models/conv.py)."""
  conv_general_dilated: Any = small_map_conv


class BasicBlock(nn.Module):
  channels: int
  stride: int = 1
  dtype: Any = jnp.float32  # Activations; parameters are always float32.

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: BatchNorm(use_running_average=not train, name=name, dtype=self.dtype,
                                **_BN_KW)
    conv = lambda *a, **k: Conv(*a, use_bias=False, dtype=self.dtype, **k)
    y = conv(self.channels, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)),
             name='conv1')(x)
    y = nn.relu(bn('bn1')(y))
    y = conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), name='conv2')(y)
    y = bn('bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = conv(self.channels, (1, 1), (self.stride, self.stride), padding='VALID',
               name='downsample_conv')(x)
      x = bn('downsample_bn')(x)
    return nn.relu(x + y)


class Backbone(nn.Module):
  """g: torchvision's resnet18 up to global average pooling."""
  width: float = 1.0
  small_stem: bool = False
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32

  def _channels(self, stage: int) -> int:
    return max(1, int(round(64 * 2**stage * self.width)))

  @nn.compact
  def __call__(self, x, train: bool = False, pool: bool = True):
    """Pooled features [N, C]; `pool=False`: the last feature map [N, h, w, C] (CAMs)."""
    c0 = self._channels(0)
    conv = lambda *a, **k: Conv(*a, use_bias=False, dtype=self.dtype, name='conv1', **k)
    if self.small_stem:
      x = conv(c0, (3, 3), padding=((1, 1), (1, 1)))(x)
    else:
      x = conv(c0, (7, 7), (2, 2), padding=((3, 3), (3, 3)))(x)
    x = nn.relu(BatchNorm(use_running_average=not train, name='bn1', dtype=self.dtype,
                          **_BN_KW)(x))
    if not self.small_stem:
      # torch pads max-pool with -inf on both sides; 'SAME' would pad asymmetrically.
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self._channels(stage), stride, self.dtype,
                       name=f'layer{stage + 1}_{block}')(x, train)
    if not pool:  # The last feature map (CAMs), float32 like the pooled features.
      return x.astype(jnp.float32)
    # Features (PCR's target) and the head stay float32 whatever the activations' dtype.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ResNet18(nn.Module):
  """f = h ∘ g. Params: {'backbone': ψ (g), 'fc': ω (h)}.

  `small_stem` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (small images);
  `width` multiplies every channel count (1.0 = torchvision's 64-128-256-512); `dtype` is
  the backbone's activation dtype (bfloat16 on accelerators), parameters stay float32.
  """
  num_classes: int
  width: float = 1.0
  small_stem: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.backbone = Backbone(self.width, self.small_stem, dtype=self.dtype)
    self.fc = nn.Dense(self.num_classes)

  def features(self, x, train: bool = False):
    """g: NHWC normalised images -> pooled features [N, feature_dim]."""
    return self.backbone(x, train)

  def feature_maps(self, x, train: bool = False):
    """g before its global average pool: [N, h, w, feature_dim]."""
    return self.backbone(x, train, pool=False)

  def head(self, feats):
    """h: pooled features -> logits (or any [..., feature_dim]: per location for CAMs)."""
    return self.fc(feats)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train))


def feature_dim(width: float) -> int:
  return max(1, int(round(512 * width)))
