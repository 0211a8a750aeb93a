"""Data augmentation of the real batch, `config.data.augment` (the paper's Table 3).

Runs inside the jitted step after the weak crop/flip, on float NHWC images in [0, 1], so it
combines with every method (base + CutMix, MGR + CutMix, ...). Each function is pure in
(rng, images, labels) and returns (images, targets): the integer labels unchanged for the
label-preserving augmentations, soft targets [B, K] for the label-mixing ones (MixUp, CutMix),
which `methods.common.cross_entropy` turns into the soft-target cross-entropy.

  none            crop/flip only (the default; the step is bit-identical to one without this)
  mixup           x = λx_i + (1−λ)x_j, t = λy_i + (1−λ)y_j, λ ~ Beta(α, α) (Zhang et al. 2018)
  cutmix          a box of x_j pasted into x_i, t weighted by the pasted area (Yun et al. 2019)
  augmix          (1−m)x + m Σ_k w_k chain_k(x), w ~ Dir(1), m ~ Beta(1, 1) (Hendrycks et al.)
  randaugment     N ops of `mgr_jax.randaugment`, magnitude M, per sample
  trivialaugment  one op per sample, op and magnitude (0..30) uniform (Müller & Hutter 2021)

As in the reference implementations, MixUp and CutMix draw one λ (and one box) per batch and
mix each sample with a random permutation of the batch. AugMix omits its Jensen-Shannon
consistency loss (torchvision's AugMix does too): that would be a second loss, not an
augmentation. AugMix, RandAugment and TrivialAugment share the ops of `mgr_jax.randaugment`
(torchvision's standard ranges; TrivialAugment thus uses the RA space, not the "wide" one).
"""
import dataclasses

import jax
import jax.numpy as jnp

from mgr_jax import randaugment as ra
from mgr_jax.errors import UserError

AUGMENTS = ('none', 'mixup', 'cutmix', 'augmix', 'randaugment', 'trivialaugment')
LABEL_MIXING = ('mixup', 'cutmix')
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
  mix_alpha: float = 1.0  # λ ~ Beta(α, α) of MixUp / CutMix.
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


def cutmix(rng, images, labels, num_classes: int, alpha: float = 1.0):
  """A box of area ≈ (1−λ)·HW (clipped at the border) from x_perm; λ re-set to the exact kept
  share, so the label mass of each source equals its share of the pixels."""
  k_lam, k_perm, k_cy, k_cx = jax.random.split(rng, 4)
  _, h, w, _ = images.shape
  lam = jax.random.beta(k_lam, alpha, alpha)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
  cy, cx = jax.random.randint(k_cy, (), 0, h), jax.random.randint(k_cx, (), 0, w)
  y1, y2 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x1, x2 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (yy >= y1) & (yy < y2) & (xx >= x1) & (xx < x2)  # [H, W]
  perm = jax.random.permutation(k_perm, images.shape[0])
  mixed = jnp.where(box[None, :, :, None], images[perm], images)
  kept = (1.0 - jnp.mean(box.astype(images.dtype))).astype(images.dtype)
  y = _one_hot(labels, num_classes, images.dtype)
  return mixed, kept * y + (1 - kept) * y[perm]


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


def augment_real(spec: RealAugment, rng, images, labels):
  """(images, targets) of the real batch under `spec`; `images` float NHWC in [0, 1]."""
  name = spec.name
  if name == 'none':
    return images, labels
  if name == 'mixup':
    return mixup(rng, images, labels, spec.num_classes, spec.mix_alpha)
  if name == 'cutmix':
    return cutmix(rng, images, labels, spec.num_classes, spec.mix_alpha)
  if name == 'augmix':
    return augmix(rng, images, spec.augmix_severity, spec.augmix_width,
                  spec.augmix_depth), labels
  if name == 'randaugment':
    return ra.rand_augment(rng, images, spec.ra_num_ops, spec.ra_magnitude), labels
  if name == 'trivialaugment':
    params = sample_trivial_augment(rng, images.shape[0])
    return ra.apply_rand_augment(images, params), labels
  raise AssertionError(name)
