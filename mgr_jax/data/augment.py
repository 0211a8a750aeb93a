"""Data augmentation of the real batch, `config.data.augment` (the paper's Table 3).

Runs inside the jitted step after the weak crop/flip, on float NHWC images in [0, 1], so it
combines with every method (base + CutMix, MGR + CutMix, ...). Each function is pure in
(rng, images, labels) and returns (images, targets): the integer labels unchanged for the
label-preserving augmentations, soft targets [B, K] for the label-mixing ones (MixUp, CutMix,
SnapMix),
which `methods.common.cross_entropy` turns into the soft-target cross-entropy.

  none            crop/flip only (the default; the step is bit-identical to one without this)
  mixup           x = λx_i + (1−λ)x_j, t = λy_i + (1−λ)y_j, λ ~ Beta(α, α) (Zhang et al. 2018)
  cutmix          a box of x_j pasted into x_i, t weighted by the pasted area (Yun et al. 2019)
  snapmix         a box of x_j resized into another box of x_i, t weighted by the class
                  activation map mass of each part (Huang et al. 2021)
  augmix          (1−m)x + m Σ_k w_k chain_k(x), w ~ Dir(1), m ~ Beta(1, 1) (Hendrycks et al.)
  randaugment     N ops of `mgr_jax.randaugment`, magnitude M, per sample
  trivialaugment  one op per sample, op and magnitude (0..30) uniform (Müller & Hutter 2021)

As in the reference implementations, MixUp and CutMix draw one λ (and one box) per batch and
mix each sample with a random permutation of the batch. AugMix omits its Jensen-Shannon
consistency loss (torchvision's AugMix does too): that would be a second loss, not an
augmentation. AugMix, RandAugment and TrivialAugment share the ops of `mgr_jax.randaugment`
(torchvision's standard ranges; TrivialAugment thus uses the RA space, not the "wide" one).

SnapMix needs the class activation maps (CAMs) of the current model: the caller passes
`cam_fn(images, labels) -> [B, h, w]` (`mgr_jax.models.cam`: the head applied at every location
of g's last feature map, current θ, batch statistics, no gradient). Its targets are
ρ_a·e(y_i) + ρ_b·e(y_j) with ρ_a the CAM mass of x_i outside its box and ρ_b the CAM mass of
x_j inside the box taken from it, each CAM shifted to a minimum of 0 and normalised to mass 1.
The two boxes have independent sizes, so ρ_a + ρ_b is not 1 in general: that is SnapMix's
design (its loss is ρ_a·CE(y_i) + ρ_b·CE(y_j), which the soft-target cross-entropy computes).
"""
import dataclasses

import jax
import jax.numpy as jnp

from mgr_jax import randaugment as ra
from mgr_jax.errors import UserError

AUGMENTS = ('none', 'mixup', 'cutmix', 'snapmix', 'augmix', 'randaugment', 'trivialaugment')
LABEL_MIXING = ('mixup', 'cutmix', 'snapmix')
# AugMix's op set: no colour/contrast/brightness/sharpness, which overlap the test-time
# corruptions it is evaluated on. 'identity' pads chains shorter than the maximum depth.
AUGMIX_OPS = ('identity', 'auto_contrast', 'equalize', 'rotate', 'solarize', 'posterize',
              'shear_x', 'shear_y', 'translate_x', 'translate_y')


def check_augment(name: str) -> str:
  if name not in AUGMENTS:
    raise UserError(f'Unknown data.augment {name!r}. Choose one of: {", ".join(AUGMENTS)} '
                    '(e.g. --config.data.augment=cutmix).')
  return name


@dataclasses.dataclass(frozen=True)
class RealAugment:
  """Static settings of the real-batch augmentation (part of the step's context)."""
  name: str = 'none'
  num_classes: int = 0  # K of the soft targets (label-mixing augmentations).
  mix_alpha: float = 1.0  # λ ~ Beta(α, α) of MixUp / CutMix / SnapMix.
  ra_num_ops: int = 2
  ra_magnitude: float = 9.0
  augmix_severity: float = 3.0  # AugMix's 1..10 scale: M ~ U(0.1, severity) · 3 on ours.
  augmix_width: int = 3
  augmix_depth: int = 3  # Each chain has 1..depth ops.

  def __post_init__(self):
    check_augment(self.name)
    if self.name in LABEL_MIXING and self.num_classes < 1:
      raise UserError(f'data.augment={self.name} needs the number of classes.')


def _one_hot(labels, num_classes, dtype):
  return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def mixup(rng, images, labels, num_classes: int, alpha: float = 1.0):
  k_lam, k_perm = jax.random.split(rng)
  lam = jax.random.beta(k_lam, alpha, alpha).astype(images.dtype)
  perm = jax.random.permutation(k_perm, images.shape[0])
  y = _one_hot(labels, num_classes, images.dtype)
  return lam * images + (1 - lam) * images[perm], lam * y + (1 - lam) * y[perm]


def random_box(k_lam, k_cy, k_cx, h: int, w: int, alpha: float):
  """CutMix's box (y1, y2, x1, x2): sides √(1−λ)·(H, W), λ ~ Beta(α, α), a uniform centre,
  clipped at the border (so it may be smaller, or empty)."""
  lam = jax.random.beta(k_lam, alpha, alpha)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
  cy, cx = jax.random.randint(k_cy, (), 0, h), jax.random.randint(k_cx, (), 0, w)
  return (jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h),
          jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w))


def box_mask(box, h: int, w: int):
  """[H, W] bool mask of box = (y1, y2, x1, x2)."""
  y1, y2, x1, x2 = box
  yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  return (yy >= y1) & (yy < y2) & (xx >= x1) & (xx < x2)


def cutmix(rng, images, labels, num_classes: int, alpha: float = 1.0):
  """A box of area ≈ (1−λ)·HW (clipped at the border) from x_perm; λ re-set to the exact kept
  share, so the label mass of each source equals its share of the pixels."""
  k_lam, k_perm, k_cy, k_cx = jax.random.split(rng, 4)
  _, h, w, _ = images.shape
  box = box_mask(random_box(k_lam, k_cy, k_cx, h, w, alpha), h, w)  # [H, W]
  perm = jax.random.permutation(k_perm, images.shape[0])
  mixed = jnp.where(box[None, :, :, None], images[perm], images)
  kept = (1.0 - jnp.mean(box.astype(images.dtype))).astype(images.dtype)
  y = _one_hot(labels, num_classes, images.dtype)
  return mixed, kept * y + (1 - kept) * y[perm]


def _paste_resized(dst, src, box_dst, box_src):
  """dst with box_dst replaced by src's box_src, resized bilinearly (corners aligned, as
  SnapMix's reference) — one static-shape gather, so the boxes may be traced values."""
  h, w = dst.shape[1:3]
  (ya1, ya2, xa1, xa2), (yb1, yb2, xb1, xb2) = box_dst, box_src
  scale = lambda src_len, dst_len: jnp.where(dst_len > 1, (src_len - 1) / jnp.maximum(
      dst_len - 1, 1), 0.0)
  sy = yb1 + (jnp.arange(h) - ya1) * scale(yb2 - yb1, ya2 - ya1)  # source row of each row
  sx = xb1 + (jnp.arange(w) - xa1) * scale(xb2 - xb1, xa2 - xa1)
  sy, sx = jnp.clip(sy, 0, h - 1), jnp.clip(sx, 0, w - 1)
  y0, x0 = jnp.floor(sy).astype(jnp.int32), jnp.floor(sx).astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  fy, fx = (sy - y0)[None, :, None, None], (sx - x0)[None, None, :, None]
  rows = lambda ys: src[:, ys]
  top = rows(y0)[:, :, x0] * (1 - fx) + rows(y0)[:, :, x1] * fx
  bottom = rows(y1)[:, :, x0] * (1 - fx) + rows(y1)[:, :, x1] * fx
  resized = (top * (1 - fy) + bottom * fy).astype(dst.dtype)
  return jnp.where(box_mask(box_dst, h, w)[None, :, :, None], resized, dst)


def snapmix_parts(rng, images, labels, cams, num_classes: int, alpha: float = 1.0):
  """SnapMix with its pieces: (mixed, targets, perm, box_a, box_b, rho_a, rho_b).

  `cams` [B, h, w]: each sample's CAM of its own label (resized bilinearly to the images).
  Box a (in x_i) receives box b of x_perm(i); both boxes drawn as CutMix's, independently.
  If either box is empty nothing is pasted (ρ_a = 1, ρ_b = 0); a CAM with no mass after the
  shift (constant) falls back to the area shares, as the reference implementation does.
  """
  k_perm, k_a, k_b = jax.random.split(rng, 3)
  b, h, w, _ = images.shape
  box_a = random_box(*jax.random.split(k_a, 3), h, w, alpha)
  box_b = random_box(*jax.random.split(k_b, 3), h, w, alpha)
  area = lambda box: (box[1] - box[0]) * (box[3] - box[2])
  valid = (area(box_a) > 0) & (area(box_b) > 0)
  perm = jax.random.permutation(k_perm, b)
  if cams.shape[1:] != (h, w):
    cams = jax.image.resize(cams, (b, h, w), method='linear', antialias=False)
  spm = cams - jnp.min(cams, axis=(1, 2), keepdims=True)  # semantic percentage map (·mass)
  mass = jnp.sum(spm, axis=(1, 2))

  def share(box, sample_spm, sample_mass):
    inside = jnp.sum(sample_spm * box_mask(box, h, w)[None], axis=(1, 2))
    return jnp.where(sample_mass > 0, inside / jnp.where(sample_mass > 0, sample_mass, 1.0),
                     area(box) / (h * w))

  rho_a = jnp.where(valid, 1.0 - share(box_a, spm, mass), 1.0).astype(images.dtype)
  rho_b = jnp.where(valid, share(box_b, spm[perm], mass[perm]), 0.0).astype(images.dtype)
  mixed = jnp.where(valid, _paste_resized(images, images[perm], box_a, box_b), images)
  y = _one_hot(labels, num_classes, images.dtype)
  targets = rho_a[:, None] * y + rho_b[:, None] * y[perm]
  return mixed, targets, perm, box_a, box_b, rho_a, rho_b


def snapmix(rng, images, labels, cams, num_classes: int, alpha: float = 1.0):
  return snapmix_parts(rng, images, labels, cams, num_classes, alpha)[:2]


def augmix_parts(rng, images, severity: float = 3.0, width: int = 3, depth: int = 3):
  """(chains [width, B, H, W, C], weights w [B, width], m [B]) of AugMix."""
  b = images.shape[0]
  k_w, k_m, k_chain = jax.random.split(rng, 3)
  weights = jax.random.dirichlet(k_w, jnp.ones(width), (b,)).astype(images.dtype)
  m = jax.random.beta(k_m, 1.0, 1.0, (b,)).astype(images.dtype)
  chains = []
  for key in jax.random.split(k_chain, width):
    k_len, k_op, k_mag, k_sign = jax.random.split(key, 4)
    length = jax.random.randint(k_len, (b,), 1, depth + 1)
    ops = jax.random.randint(k_op, (depth, b), 1, len(AUGMIX_OPS))  # never 'identity'
    ops = jnp.where(jnp.arange(depth)[:, None] < length[None], ops, 0)  # ...but past the end
    # AugMix's level ~ U(0.1, severity) of 10 is level/10 of each op's maximum: M = 3·level.
    mag = 3.0 * jax.random.uniform(k_mag, (depth, b), minval=0.1, maxval=severity)
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (depth, b)), 1.0, -1.0)
    params = ra.RandAugmentParams(op_index=ops.astype(jnp.int32), magnitude=mag, sign=sign)
    chains.append(ra.apply_rand_augment(images, params, ops=AUGMIX_OPS))
  return jnp.stack(chains), weights, m


def augmix(rng, images, severity: float = 3.0, width: int = 3, depth: int = 3):
  chains, weights, m = augmix_parts(rng, images, severity, width, depth)
  mix = jnp.einsum('bk,kbhwc->bhwc', weights, chains)
  m = m[:, None, None, None]
  return (1 - m) * images + m * mix


def sample_trivial_augment(rng, batch_size: int) -> ra.RandAugmentParams:
  """One op per sample (a single round), uniform over `randaugment.OPS`, M uniform in 0..30."""
  k_op, k_mag, k_sign = jax.random.split(rng, 3)
  shape = (1, batch_size)
  mag = jax.random.randint(k_mag, shape, 0, int(ra.MAX_MAGNITUDE) + 1).astype(jnp.float32)
  sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, shape), 1.0, -1.0)
  return ra.RandAugmentParams(
      op_index=jax.random.randint(k_op, shape, 0, len(ra.OPS), dtype=jnp.int32),
      magnitude=mag, sign=sign)


def augment_real(spec: RealAugment, rng, images, labels, cam_fn=None):
  """(images, targets) of the real batch under `spec`; `images` float NHWC in [0, 1].

  `cam_fn(images, labels) -> [B, h, w]`: the current model's CAMs (SnapMix only).
  """
  name = spec.name
  if name == 'none':
    return images, labels
  if name == 'mixup':
    return mixup(rng, images, labels, spec.num_classes, spec.mix_alpha)
  if name == 'cutmix':
    return cutmix(rng, images, labels, spec.num_classes, spec.mix_alpha)
  if name == 'snapmix':
    if cam_fn is None:
      raise ValueError('data.augment=snapmix needs the class activation maps (cam_fn).')
    return snapmix(rng, images, labels, cam_fn(images, labels), spec.num_classes,
                   spec.mix_alpha)
  if name == 'augmix':
    return augmix(rng, images, spec.augmix_severity, spec.augmix_width,
                  spec.augmix_depth), labels
  if name == 'randaugment':
    return ra.rand_augment(rng, images, spec.ra_num_ops, spec.ra_magnitude), labels
  if name == 'trivialaugment':
    params = sample_trivial_augment(rng, images.shape[0])
    return ra.apply_rand_augment(images, params), labels
  raise AssertionError(name)
