"""Differentiable strong augmentation T of PCR: RandAugment, per-sample ops inside jit.

Images are float NHWC in [0, 1]; every op returns an image in [0, 1] and is differentiable
w.r.t. the image (PCR back-propagates through T(x_p) into the generator and the finder).

RandAugment (Cubuk et al. 2020, as used by UDA and, through Kornia, by the paper): each sample
gets ``num_ops`` ops drawn uniformly (with replacement), *per sample*, all with magnitude
M ∈ [0, 30] — the torchvision / Kornia scale (31 bins); M/30 is the fraction of the strongest
setting below (torchvision's ranges, from the RandAugment paper). Signed ops get a random sign.

  op             at M = 30 (linear in M)                       quantises?
  identity       -
  auto_contrast  per-channel min/max stretch to [0, 1]
  equalize       per-channel histogram equalisation (PIL)     yes: straight-through
  rotate         ±30°, about the centre
  solarize       invert pixels > 1 − M/30
  color          saturation factor 1 ± 0.9 (blend with grey)
  posterize      8 − round(4·M/30) bits (8 → 4)               yes: straight-through
  contrast       factor 1 ± 0.9 (blend with the mean grey)
  brightness     factor 1 ± 0.9 (blend with black)
  sharpness      factor 1 ± 0.9 (blend with PIL's SMOOTH)
  shear_x/y      ±0.3, about the centre
  translate_x/y  ±150/331 of the width / height

Straight-through: an op that quantises returns its exact (quantised) value but passes the
incoming gradient through as the identity, so gradients are finite and non-zero.
Geometric ops fill uncovered pixels with ``fill`` (0.5 = the original RandAugment's grey 128)
and blend the fill in bilinearly at the border. M = 0 is exactly the identity for every op
except posterize (rounds to 8 bits) and equalize / auto_contrast (no magnitude).

Why compute-and-select. Inside jit the op of each sample is data: ``lax.switch`` under ``vmap``
with a batched index is lowered to "run every branch on every sample, then select", so it costs
the same as computing all ops. We make that cheap instead of pretending to avoid it: the five
geometric ops (and identity) are one per-sample affine matrix and a single bilinear warp; the
four blend ops (brightness, color, contrast, sharpness) are one blend with a per-sample
"degenerate" image; then auto_contrast, equalize, solarize and posterize are cheap elementwise
passes. One RandAugment round thus costs one warp + ~6 elementwise passes over the batch, not 14
ops, and the selection is a chain of ``where`` (no multiply by one-hot, zero gradient to the
unselected branches). Only the groups present in ``ops`` are computed.

dm-pix: we use ``rgb_to_grayscale``. Its ``affine_transform`` interpolates over the channel
axis too (8 scalar gathers per value) and has a hard border, so the warp here is a 2-D bilinear
one (4 row gathers per pixel); its brightness/contrast/saturation follow TensorFlow (additive
brightness, per-channel mean, HSV saturation), not RandAugment's PIL enhancers, which we follow.

Randomness: `sample_rand_augment` draws the per-sample ops once; `apply_rand_augment` is then a
deterministic function of (images, params). In MGR the same draws must be used in the inner
step and at θ± (docs/method.md, "Shared randomness"): sample once per step, or call
`rand_augment` with the same key.
"""
from typing import Sequence, Tuple

import dm_pix as pix
import flax.struct
import jax
import jax.numpy as jnp

from mgr_jax.errors import UserError

MAX_MAGNITUDE = 30.0
OPS = ('identity', 'auto_contrast', 'equalize', 'rotate', 'solarize', 'color', 'posterize',
       'contrast', 'brightness', 'sharpness', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
GEOMETRIC_OPS = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
BLEND_OPS = ('brightness', 'color', 'contrast', 'sharpness')
SIGNED_OPS = GEOMETRIC_OPS + BLEND_OPS
MAX_ROTATE_DEG = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 150.0 / 331.0
MAX_ENHANCE = 0.9


def _sg(x):
  return jax.lax.stop_gradient(x)


def straight_through(x, value):
  """Returns ``value`` exactly, with the gradient of the identity w.r.t. ``x``."""
  return _sg(value) + (x - _sg(x))


def _clip01(x):
  """Clip to [0, 1], straight-through: for the few-ulp overshoots of convex combinations."""
  return straight_through(x, jnp.clip(x, 0.0, 1.0))


def _bshape(v, images):
  """Per-sample [B] values, broadcastable against NHWC images (booleans stay booleans)."""
  v = jnp.reshape(v, (-1,) + (1,) * (images.ndim - 1))
  return v if v.dtype == jnp.bool_ else v.astype(images.dtype)


# --- elementwise / per-image ops ------------------------------------------------------------


def _auto_contrast(images):
  lo = jnp.min(images, axis=(1, 2), keepdims=True)
  hi = jnp.max(images, axis=(1, 2), keepdims=True)
  ok = hi > lo
  out = (images - lo) / jnp.where(ok, hi - lo, 1.0)
  return jnp.clip(jnp.where(ok, out, images), 0.0, 1.0)


def _to_uint8_levels(images):
  return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.int32)


def _equalize(images):
  """PIL's ImageOps.equalize per image and channel; straight-through gradient.

  Histograms are a vmapped bincount (a scatter-add per image: batch-shardable).
  """
  b, h, w, c = images.shape
  v = jnp.moveaxis(_to_uint8_levels(_sg(images)).reshape(b, h * w, c), -1, 1)  # [B, C, HW]
  hist = jax.vmap(jax.vmap(lambda x: jnp.bincount(x, length=256)))(v)  # [B, C, 256]
  # Count of the last non-empty bin.
  last = 255 - jnp.argmax(hist[..., ::-1] > 0, axis=-1)
  last_count = jnp.take_along_axis(hist, last[..., None], axis=-1)[..., 0]
  step = (h * w - last_count) // 255
  cum_before = jnp.cumsum(hist, axis=-1) - hist
  safe_step = jnp.maximum(step, 1)[..., None]
  lut = jnp.minimum((safe_step // 2 + cum_before) // safe_step, 255)
  lut = jnp.where((step > 0)[..., None], lut, jnp.arange(256))  # [B, C, 256]
  out = jnp.take_along_axis(lut, v, axis=-1)  # [B, C, HW]
  out = jnp.moveaxis(out, 1, -1).reshape(b, h, w, c)
  return straight_through(images, out.astype(images.dtype) / 255.0)


def _solarize(images, m01):
  thr = 1.0 - _bshape(m01, images)
  return jnp.where(images > thr, 1.0 - images, images)


def _posterize(images, m01):
  """Keep 8 − round(4·m) bits of the 8-bit value; straight-through gradient."""
  bits = 8 - jnp.round(4.0 * m01)
  unit = _bshape(2.0 ** (8 - bits), images)
  v = jnp.round(jnp.clip(_sg(images), 0.0, 1.0) * 255.0)
  out = jnp.floor(v / unit) * unit / 255.0
  return straight_through(images, out)


# --- blend ops (PIL ImageEnhance): out = clip(degenerate + f·(x − degenerate)) --------------


def _grayscale(images):
  if images.shape[-1] == 1:
    return images
  if images.shape[-1] != 3:
    raise UserError(f'color/contrast need 1 or 3 channels, got images of shape {images.shape}.')
  return pix.rgb_to_grayscale(images, keep_dims=True)


def _smooth(images):
  """PIL's ImageFilter.SMOOTH (3x3, centre 5, scale 13) with the border pixels unchanged.

  Nine shifted slices rather than a grouped convolution: the same on GPU, ~50x faster on CPU.
  """
  h, w = images.shape[1:3]
  if h < 3 or w < 3:
    return images
  box = sum(images[:, dy:h - 2 + dy, dx:w - 2 + dx, :] for dy in range(3) for dx in range(3))
  inner = (box + 4.0 * images[:, 1:-1, 1:-1, :]) / 13.0
  return images.at[:, 1:-1, 1:-1, :].set(inner)


def _degenerate(name, images):
  if name == 'brightness':
    return jnp.zeros_like(images)
  if name == 'color':
    return jnp.broadcast_to(_grayscale(images), images.shape)
  if name == 'contrast':
    mean = jnp.mean(_grayscale(images), axis=(1, 2, 3), keepdims=True)
    return jnp.broadcast_to(mean, images.shape)
  if name == 'sharpness':
    return _smooth(images)
  raise AssertionError(name)


def _blend(images, degenerate, factor):
  # Written as x + (f − 1)(x − d) so that f = 1 returns x exactly.
  f = _bshape(factor, images)
  return jnp.clip(images + (f - 1.0) * (images - degenerate), 0.0, 1.0)


# --- geometric ops: one per-sample affine pull-back and a bilinear warp ---------------------


def _geometry(name, m01, sign, height, width):
  """[B, 2, 2] matrices and [B, 2] offsets (pixels), (y, x) order, about the image centre.

  The matrix maps output coordinates to input coordinates (pull-back), like PIL's
  Image.transform: rotate is counter-clockwise for a positive angle; shear_x samples
  x + s·y; translate_x samples x + t (the content moves by −t).
  """
  s = sign * m01
  one, zero = jnp.ones_like(s), jnp.zeros_like(s)
  offset = jnp.zeros(s.shape + (2,), s.dtype)
  if name == 'rotate':
    a = jnp.deg2rad(MAX_ROTATE_DEG) * s
    cos, sin = jnp.cos(a), jnp.sin(a)
    mat = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)
  elif name == 'shear_x':
    mat = jnp.stack([jnp.stack([one, zero], -1), jnp.stack([MAX_SHEAR * s, one], -1)], -2)
  elif name == 'shear_y':
    mat = jnp.stack([jnp.stack([one, MAX_SHEAR * s], -1), jnp.stack([zero, one], -1)], -2)
  elif name == 'translate_x':
    mat = jnp.broadcast_to(jnp.eye(2, dtype=s.dtype), s.shape + (2, 2))
    offset = jnp.stack([zero, MAX_TRANSLATE * width * s], -1)
  elif name == 'translate_y':
    mat = jnp.broadcast_to(jnp.eye(2, dtype=s.dtype), s.shape + (2, 2))
    offset = jnp.stack([MAX_TRANSLATE * height * s, zero], -1)
  else:
    raise AssertionError(name)
  return mat, offset


def warp(images, matrix, offset, fill: float = 0.5):
  """Bilinear pull-back warp: out[p] = images[matrix·(p − c) + offset + c], c the centre.

  ``matrix`` [B, 2, 2] and ``offset`` [B, 2] in (y, x) pixel order. Samples outside the image
  take ``fill``, blended bilinearly at the border. The identity matrix with zero offset
  returns the input exactly.
  """
  b, h, w, c = images.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=images.dtype) - cy,
                        jnp.arange(w, dtype=images.dtype) - cx, indexing='ij')
  grid = jnp.stack([yy, xx], -1).reshape(h * w, 2)
  src = jnp.einsum('bij,pj->bpi', matrix.astype(images.dtype), grid)
  src = src + offset.astype(images.dtype)[:, None, :] + jnp.array([cy, cx], images.dtype)
  sy, sx = src[..., 0], src[..., 1]
  y0, x0 = jnp.floor(sy), jnp.floor(sx)
  wy, wx = sy - y0, sx - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  flat = images.reshape(b, h * w, c)
  gather = jax.vmap(lambda img, idx: img[idx])
  out = jnp.zeros_like(flat)
  covered = jnp.zeros_like(wy)
  for dy in (0, 1):
    for dx in (0, 1):
      yi, xi = y0 + dy, x0 + dx
      weight = (wy if dy else 1.0 - wy) * (wx if dx else 1.0 - wx)
      inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      weight = jnp.where(inside, weight, 0.0)
      idx = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
      out = out + weight[..., None] * gather(flat, idx)
      covered = covered + weight
  out = out + (1.0 - covered)[..., None] * fill
  return out.reshape(b, h, w, c)


# --- one round: per-sample op selection ---------------------------------------------------


def _apply_round(images, op_index, m01, sign, ops: Tuple[str, ...], fill: float):
  """Applies ops[op_index[b]] with magnitude m01[b] ∈ [0, 1] and sign[b] to sample b."""
  b, h, w, _ = images.shape
  op_index = jnp.broadcast_to(op_index, (b,))
  m01 = jnp.broadcast_to(jnp.asarray(m01, images.dtype), (b,))
  sign = jnp.broadcast_to(jnp.asarray(sign, images.dtype), (b,))
  is_op = lambda name: op_index == ops.index(name)
  in_group = lambda names: jnp.isin(op_index, jnp.array([ops.index(n) for n in names]))
  present = lambda names: [n for n in names if n in ops]

  out = images  # identity, and any op below not selected
  geo = present(GEOMETRIC_OPS)
  if geo:
    mat = jnp.broadcast_to(jnp.eye(2, dtype=images.dtype), (b, 2, 2))
    off = jnp.zeros((b, 2), images.dtype)
    for name in geo:
      mat_n, off_n = _geometry(name, m01, sign, h, w)
      mat = jnp.where(is_op(name)[:, None, None], mat_n, mat)
      off = jnp.where(is_op(name)[:, None], off_n, off)
    out = jnp.where(_bshape(in_group(geo), images), warp(images, mat, off, fill), out)
  blend = present(BLEND_OPS)
  if blend:
    degenerate = _degenerate(blend[0], images)
    for name in blend[1:]:
      degenerate = jnp.where(_bshape(is_op(name), images), _degenerate(name, images),
                             degenerate)
    factor = 1.0 + MAX_ENHANCE * sign * m01
    out = jnp.where(_bshape(in_group(blend), images), _blend(images, degenerate, factor),
                    out)
  for name, fn in (('auto_contrast', lambda: _auto_contrast(images)),
                   ('equalize', lambda: _equalize(images)),
                   ('solarize', lambda: _solarize(images, m01)),
                   ('posterize', lambda: _posterize(images, m01))):
    if name in ops:
      out = jnp.where(_bshape(is_op(name), images), fn(), out)
  return _clip01(out)


def _check_ops(ops: Sequence[str]) -> Tuple[str, ...]:
  ops = tuple(ops)
  unknown = [n for n in ops if n not in OPS]
  if unknown or not ops:
    raise UserError(f'Unknown or empty RandAugment ops {unknown or ops}; choose from {OPS}.')
  return ops


def apply_op(images, name: str, magnitude=10.0, sign=1.0, *, fill: float = 0.5):
  """Applies the op ``name`` to every image.

  Args:
    images: float [B, H, W, C] in [0, 1].
    name: one of `OPS`.
    magnitude: M ∈ [0, 30], scalar or [B] (clipped to that range).
    sign: +1 or −1, scalar or [B]; only signed ops (`SIGNED_OPS`) use it.
    fill: value of pixels that geometric ops uncover.
  """
  ops = _check_ops((name,))
  images = jnp.asarray(images)
  m01 = jnp.clip(jnp.asarray(magnitude, images.dtype) / MAX_MAGNITUDE, 0.0, 1.0)
  return _apply_round(images, jnp.zeros((images.shape[0],), jnp.int32), m01, sign, ops, fill)


@flax.struct.dataclass
class RandAugmentParams:
  """Per-sample draws of RandAugment: arrays [num_ops, B]."""
  op_index: jax.Array  # int32 indices into the ``ops`` tuple used to sample
  magnitude: jax.Array  # M ∈ [0, 30]
  sign: jax.Array  # ±1


def sample_rand_augment(rng, batch_size: int, num_ops: int = 2, magnitude=10.0, *,
                        ops: Sequence[str] = OPS,
                        random_magnitude: bool = False) -> RandAugmentParams:
  """Draws ``num_ops`` ops per sample, uniformly from ``ops`` with replacement.

  ``random_magnitude``: M ~ U(0, magnitude) per sample and round (the UDA/FixMatch variant)
  instead of the fixed ``magnitude``.
  """
  ops = _check_ops(ops)
  k_op, k_sign, k_mag = jax.random.split(rng, 3)
  shape = (num_ops, batch_size)
  op_index = jax.random.randint(k_op, shape, 0, len(ops), dtype=jnp.int32)
  sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, shape), 1.0, -1.0).astype(jnp.float32)
  mag = jnp.broadcast_to(jnp.asarray(magnitude, jnp.float32), shape)
  if random_magnitude:
    mag = mag * jax.random.uniform(k_mag, shape, jnp.float32)
  return RandAugmentParams(op_index=op_index, magnitude=mag, sign=sign)


def apply_rand_augment(images, params: RandAugmentParams, *, ops: Sequence[str] = OPS,
                       fill: float = 0.5):
  """Applies the drawn rounds in order; deterministic in (images, params). ``ops`` as sampled."""
  ops = _check_ops(ops)
  images = jnp.asarray(images)
  for r in range(params.op_index.shape[0]):
    m01 = jnp.clip(params.magnitude[r].astype(images.dtype) / MAX_MAGNITUDE, 0.0, 1.0)
    images = _apply_round(images, params.op_index[r], m01, params.sign[r], ops, fill)
  return images


def rand_augment(rng, images, num_ops: int = 2, magnitude=10.0, *, ops: Sequence[str] = OPS,
                 random_magnitude: bool = False, fill: float = 0.5):
  """RandAugment(N=num_ops, M=magnitude) with per-sample ops; float NHWC in [0, 1] → same.

  Defaults N = 2, M = 10 (on the 0-30 scale) are Kornia's. ``num_ops``, ``ops`` and
  ``random_magnitude`` are static; ``magnitude`` may be traced.
  """
  params = sample_rand_augment(rng, images.shape[0], num_ops, magnitude, ops=ops,
                               random_magnitude=random_magnitude)
  return apply_rand_augment(images, params, ops=ops, fill=fill)
