"""ADA: adaptive discriminator augmentation (Karras et al. 2020), differentiable, in JAX.

`augment(images, p, rng)` is the official 'bgc' pipeline (stylegan2-ada-pytorch
`training/augment.py`): each transform is applied to each image independently with
probability `p` (× its multiplier in `AugmentSpec`):

  blit:   x-flip, 90° rotations, integer translation
  geom:   isotropic scaling, pre-rotation, anisotropic scaling, post-rotation,
          fractional translation
  colour: brightness, contrast, luma flip, hue rotation, saturation

The geometric transforms are composed into one inverse affine matrix per image and applied
with one bilinear resample with reflect padding (the official code additionally resamples
at 2x with a wavelet low-pass filter; at the small resolutions trained here bilinear
suffices). The colour transforms are composed into one 4x4 matrix. Everything is
differentiable w.r.t. the images (G learns through D(augment(G(z)))), and p = 0 is exactly
the identity. Images are NHWC in [-1, 1] with 1 or 3 channels.

`AdaState` + `accumulate` + `adjust`: the official heuristic. Over `interval` steps collect
sign(D(augmented reals)); then p += sign(E[sign] − target) · batch·interval / (kimg·1000),
clipped to [0, 1].
"""
import dataclasses
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Probability multipliers (0 = off) and strengths; the defaults are the official ones."""
  xflip: float = 0.0
  rotate90: float = 0.0
  xint: float = 0.0
  xint_max: float = 0.125
  scale: float = 0.0
  rotate: float = 0.0
  aniso: float = 0.0
  xfrac: float = 0.0
  scale_std: float = 0.2
  rotate_max: float = 1.0
  aniso_std: float = 0.2
  xfrac_std: float = 0.125
  brightness: float = 0.0
  contrast: float = 0.0
  lumaflip: float = 0.0
  hue: float = 0.0
  saturation: float = 0.0
  brightness_std: float = 0.2
  contrast_std: float = 0.5
  hue_max: float = 1.0
  saturation_std: float = 1.0

  @property
  def geometric(self):
    return any((self.xflip, self.rotate90, self.xint, self.scale, self.rotate, self.aniso,
                self.xfrac))

  @property
  def colour(self):
    return any((self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation))


PIPES = {
    'blit': AugmentSpec(xflip=1, rotate90=1, xint=1),
    'geom': AugmentSpec(scale=1, rotate=1, aniso=1, xfrac=1),
    'color': AugmentSpec(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    'bg': AugmentSpec(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
    'bgc': AugmentSpec(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                       brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
}

# ----------------------------------------------------------------------------------------
# Batched homogeneous matrices ([N, 3, 3] in 2-D, [N, 4, 4] in 3-D) from [N] parameters.


def _matrix(rows):
  """rows: list of lists of scalars or [N] arrays → [N, R, C]."""
  n = next(x.shape[0] for row in rows for x in row if isinstance(x, jax.Array))
  elems = [[jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,)) for x in row] for row in rows]
  return jnp.stack([jnp.stack(row, axis=-1) for row in elems], axis=-2)


def translate2d(tx, ty):
  return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale2d(sx, sy):
  return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate2d(theta):
  c, s = jnp.cos(theta), jnp.sin(theta)
  return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def translate3d(tx, ty, tz):
  return _matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]])


def scale3d(sx, sy, sz):
  return _matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]])


def rotate3d(v, theta):
  """Rotation by theta [N] about the unit axis v (3,)."""
  vx, vy, vz = (float(a) for a in v[:3])
  s, c = jnp.sin(theta), jnp.cos(theta)
  cc = 1 - c
  return _matrix([
      [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
      [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
      [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
      [0, 0, 0, 1]])


# ----------------------------------------------------------------------------------------
# The pipeline.


def _gate(key, n, prob, value, identity):
  """value where U[0,1) < prob (per sample), else identity."""
  take = jax.random.uniform(key, (n,)) < prob
  return jnp.where(take, value, identity)


def geometric_matrix(spec: AugmentSpec, p, rng, n, height, width):
  """G_inv [N, 3, 3]: output pixel (centred coordinates) → input pixel, as the official."""
  keys = iter(jax.random.split(rng, 32))
  g = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
  ones, zeros = jnp.ones((n,)), jnp.zeros((n,))
  if spec.xflip > 0:
    i = jnp.floor(jax.random.uniform(next(keys), (n,)) * 2)
    i = _gate(next(keys), n, spec.xflip * p, i, zeros)
    g = g @ scale2d(1 - 2 * i, ones)  # its own inverse
  if spec.rotate90 > 0:
    i = jnp.floor(jax.random.uniform(next(keys), (n,)) * 4)
    i = _gate(next(keys), n, spec.rotate90 * p, i, zeros)
    g = g @ rotate2d(np.pi / 2 * i)  # rotate2d_inv(-π/2 i)
  if spec.xint > 0:
    t = (jax.random.uniform(next(keys), (n, 2)) * 2 - 1) * spec.xint_max
    take = jax.random.uniform(next(keys), (n, 1)) < spec.xint * p
    t = jnp.where(take, t, 0.0)
    g = g @ translate2d(-jnp.round(t[:, 0] * width), -jnp.round(t[:, 1] * height))
  if spec.scale > 0:
    s = jnp.exp2(jax.random.normal(next(keys), (n,)) * spec.scale_std)
    s = _gate(next(keys), n, spec.scale * p, s, ones)
    g = g @ scale2d(1 / s, 1 / s)
  p_rot = 1 - jnp.sqrt(jnp.clip(1 - spec.rotate * p, 0, 1))  # P(pre or post) = p
  if spec.rotate > 0:
    theta = (jax.random.uniform(next(keys), (n,)) * 2 - 1) * np.pi * spec.rotate_max
    theta = _gate(next(keys), n, p_rot, theta, zeros)
    g = g @ rotate2d(theta)  # rotate2d_inv(-theta): before anisotropic scaling
  if spec.aniso > 0:
    s = jnp.exp2(jax.random.normal(next(keys), (n,)) * spec.aniso_std)
    s = _gate(next(keys), n, spec.aniso * p, s, ones)
    g = g @ scale2d(1 / s, s)
  if spec.rotate > 0:
    theta = (jax.random.uniform(next(keys), (n,)) * 2 - 1) * np.pi * spec.rotate_max
    theta = _gate(next(keys), n, p_rot, theta, zeros)
    g = g @ rotate2d(theta)  # after anisotropic scaling
  if spec.xfrac > 0:
    t = jax.random.normal(next(keys), (n, 2)) * spec.xfrac_std
    take = jax.random.uniform(next(keys), (n, 1)) < spec.xfrac * p
    t = jnp.where(take, t, 0.0)
    g = g @ translate2d(-t[:, 0] * width, -t[:, 1] * height)
  return g


def _reflect(u, size):
  """Continuous reflect padding about the edge pixel centres (torch 'reflect')."""
  if size == 1:
    return jnp.zeros_like(u)
  period = 2.0 * (size - 1)
  return (size - 1) - jnp.abs(jnp.mod(u, period) - (size - 1))


def resample(images, g_inv):
  """Bilinear resample, reflect padding: out[n, y, x] = in[n, G_inv[n] (x, y)] (centred)."""
  n, h, w, c = images.shape
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                        jnp.arange(w, dtype=jnp.float32) - cx, indexing='ij')
  grid = jnp.stack([xs.ravel(), ys.ravel(), jnp.ones(h * w)], axis=0)  # [3, HW]
  src = g_inv @ grid  # [N, 3, HW]
  u = _reflect(src[:, 0] + cx, w)
  v = _reflect(src[:, 1] + cy, h)
  u0 = jnp.clip(jnp.floor(u), 0, w - 1)
  v0 = jnp.clip(jnp.floor(v), 0, h - 1)
  fu, fv = (u - u0)[..., None], (v - v0)[..., None]
  u0, v0 = u0.astype(jnp.int32), v0.astype(jnp.int32)
  u1, v1 = jnp.minimum(u0 + 1, w - 1), jnp.minimum(v0 + 1, h - 1)
  flat = images.reshape(n, h * w, c)
  at = lambda yy, xx: jnp.take_along_axis(flat, (yy * w + xx)[..., None], axis=1)
  out = ((1 - fv) * ((1 - fu) * at(v0, u0) + fu * at(v0, u1))
         + fv * ((1 - fu) * at(v1, u0) + fu * at(v1, u1)))
  return out.reshape(n, h, w, c)


def colour_matrix(spec: AugmentSpec, p, rng, n, channels):
  """C [N, 4, 4]: colour_in (homogeneous RGB) → colour_out, as the official."""
  keys = iter(jax.random.split(rng, 16))
  eye = jnp.eye(4, dtype=jnp.float32)
  cm = jnp.broadcast_to(eye, (n, 4, 4))
  ones, zeros = jnp.ones((n,)), jnp.zeros((n,))
  v = np.asarray([1, 1, 1, 0], np.float32) / math.sqrt(3)  # luma axis
  vv = jnp.asarray(np.outer(v, v))
  if spec.brightness > 0:
    b = jax.random.normal(next(keys), (n,)) * spec.brightness_std
    b = _gate(next(keys), n, spec.brightness * p, b, zeros)
    cm = translate3d(b, b, b) @ cm
  if spec.contrast > 0:
    s = jnp.exp2(jax.random.normal(next(keys), (n,)) * spec.contrast_std)
    s = _gate(next(keys), n, spec.contrast * p, s, ones)
    cm = scale3d(s, s, s) @ cm
  if spec.lumaflip > 0:
    i = jnp.floor(jax.random.uniform(next(keys), (n,)) * 2)
    i = _gate(next(keys), n, spec.lumaflip * p, i, zeros)
    cm = (eye - 2 * vv * i[:, None, None]) @ cm  # Householder reflection
  if spec.hue > 0 and channels > 1:
    theta = (jax.random.uniform(next(keys), (n,)) * 2 - 1) * np.pi * spec.hue_max
    theta = _gate(next(keys), n, spec.hue * p, theta, zeros)
    cm = rotate3d(v, theta) @ cm
  if spec.saturation > 0 and channels > 1:
    s = jnp.exp2(jax.random.normal(next(keys), (n,)) * spec.saturation_std)
    s = _gate(next(keys), n, spec.saturation * p, s, ones)
    cm = (vv + (eye - vv) * s[:, None, None]) @ cm
  return cm


def apply_colour(images, cm):
  n, h, w, c = images.shape
  if c == 3:
    return jnp.einsum('nhwj,nij->nhwi', images, cm[:, :3, :3]) + cm[:, None, None, :3, 3]
  if c == 1:
    m = jnp.mean(cm[:, :3, :], axis=1)  # [N, 4]
    return images * jnp.sum(m[:, :3], axis=1)[:, None, None, None] + m[:, None, None, None, 3]
  raise ValueError(f'ADA colour transforms need 1 or 3 channels, got {c}')


def augment(images, p, rng, spec: AugmentSpec = PIPES['bgc']):
  """images NHWC float in [-1, 1]; p scalar (may be traced); returns the same shape."""
  n, h, w, c = images.shape
  k_geom, k_col = jax.random.split(rng)
  p = jnp.asarray(p, jnp.float32)

  def run(x):
    if spec.geometric:
      x = resample(x, geometric_matrix(spec, p, k_geom, n, h, w))
    if spec.colour:
      x = apply_colour(x, colour_matrix(spec, p, k_col, n, c))
    return x

  return jax.lax.cond(p > 0, run, lambda x: x, images)


# ----------------------------------------------------------------------------------------
# The adaptive heuristic.


@flax.struct.dataclass
class AdaState:
  p: jax.Array  # current augmentation probability
  sign_sum: jax.Array  # sum of sign(D(real)) since the last adjustment
  count: jax.Array  # number of logits in sign_sum

  @classmethod
  def create(cls, p=0.0):
    return cls(p=jnp.asarray(p, jnp.float32), sign_sum=jnp.zeros((), jnp.float32),
               count=jnp.zeros((), jnp.float32))


def accumulate(state: AdaState, real_logits) -> AdaState:
  """Adds sign(D(real)) of one step (the overfitting signal r_t)."""
  real_logits = jax.lax.stop_gradient(real_logits)
  return state.replace(sign_sum=state.sign_sum + jnp.sum(jnp.sign(real_logits)),
                       count=state.count + real_logits.size)


def adjust(state: AdaState, target: float, batch_size: int, interval: int,
           kimg: float) -> AdaState:
  """p += sign(E[sign(D(real))] − target) · batch·interval / (kimg·1000), clipped to
  [0, 1]; resets the accumulator. Call every `interval` steps."""
  mean_sign = state.sign_sum / jnp.maximum(state.count, 1.0)
  step = jnp.sign(mean_sign - target) * (batch_size * interval) / (kimg * 1000.0)
  p = jnp.where(state.count > 0, jnp.clip(state.p + step, 0.0, 1.0), state.p)
  return AdaState(p=p, sign_sum=jnp.zeros_like(state.sign_sum),
                  count=jnp.zeros_like(state.count))
