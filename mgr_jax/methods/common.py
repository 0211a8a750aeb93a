"""Pieces every method's step shares: the static context, forward passes, the eval step."""
import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mgr_jax import sharding
from mgr_jax.data.augment import RealAugment, augment_real
from mgr_jax.data.pipeline import weak_augment
from mgr_jax.data.transforms import normalize
from mgr_jax.generators.multimodal import truncate_to_nearest_centre
from mgr_jax.methods.views import resize_and_normalize
from mgr_jax.models.cam import cam_fn
from mgr_jax.models.resnet import ResNet18


@dataclasses.dataclass(frozen=True)
class ClassifierContext:
  """The classifier, its optimiser, and how real uint8 images become its input."""
  model: Any  # The Flax classifier (ResNet18).
  tx: optax.GradientTransformation
  lr_schedule: Callable[[Any], Any]
  crop_pad: int
  flip: bool
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  image_size: int = 32
  augment: RealAugment = RealAugment()  # config.data.augment on the real batch.


@dataclasses.dataclass(frozen=True)
class SyntheticContext:
  """The frozen generator and the synthetic term's settings (unused by `base`)."""
  generator: Any = None  # mgr_jax.generators.LoadedGenerator: pure `apply(vars, z, y)`.
  lam: float = 1.0
  batch_size: int = 64
  ra_num_ops: int = 2
  ra_magnitude: float = 10.0
  latent_noise_var: float = 1e-3
  truncation_psi: float = 1.0
  pcr_stop_grad: bool = False
  lam_schedule: Optional[Callable[[Any], Any]] = None  # λ at a step (warm-up); None: `lam`.
  # PCR's pair (synth.consistency): 'randaugment' (G(z), T(G(z))), 'latent' (G(z), G(z+s)),
  # 'both' (G(z+s), T(G(z))).
  consistency: str = 'randaugment'
  # Multi-modal truncation (synth.truncation=multimodal): k-means centres [k, w_dim] of W;
  # each w is pulled towards its nearest centre by truncation_psi. None: global truncation.
  w_centres: Any = dataclasses.field(default=None, compare=False)

  def lam_at(self, step):
    return self.lam if self.lam_schedule is None else self.lam_schedule(step)

  @property
  def generator_classes(self) -> int:
    """The generator's label count (0: unconditional or no generator): y_p's range."""
    return self.generator.num_classes if self.generator is not None else 0


@dataclasses.dataclass(frozen=True)
class MetaContext:
  """Meta pseudo sampling: the finder F_φ, its optimiser, the inner step and hypergradient
  (also the finder of the non-meta `finder_max_*` methods, which use finder, tx and lam_kl)."""
  finder: Any  # Flax finder module (None when meta.target=generator).
  finder_tx: optax.GradientTransformation
  lam_kl: float = 0.01
  inner_lr: float = 0.0  # 0: the schedule's current learning rate.
  hypergrad: str = 'fd'
  fd_radius: float = 0.01
  target: str = 'finder'  # What MPS learns: the finder's φ, or 'generator': G's parameters.


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Everything static a step needs; bound with functools.partial before jit."""
  classifier: ClassifierContext
  synthetic: SyntheticContext = SyntheticContext()
  meta: Optional[MetaContext] = None  # Only for the meta-learning methods.
  # The data-parallel mesh (axis 'data') the step runs on; None: no sharding constraints.
  mesh: Optional[Mesh] = None

  def split_over_data(self, x, batch_axis: int = 0):
    """`x` split over this step's mesh (`mgr_jax.sharding.split_over_data`)."""
    return sharding.split_over_data(self.mesh, x, batch_axis)

  def real_inputs01(self, images_uint8, rng):
    """Weakly augmented real images in [0, 1] (rng=None: no augmentation)."""
    return weak_augment(images_uint8, rng, crop_pad=self.classifier.crop_pad,
                        flip=self.classifier.flip)

  def real_train_inputs01(self, images_uint8, labels, rng, params=None, batch_stats=None):
    """The training real batch in [0, 1]: crop/flip, then `data.augment` -> (x01, targets).

    targets are `labels` unless the augmentation mixes labels (then soft, [B, K]). With
    augment 'none' this is `real_inputs01` and the step is unchanged bit for bit. SnapMix
    reads the CAMs of the classifier at (params, batch_stats), the step's current θ.
    """
    x01 = self.real_inputs01(images_uint8, rng)
    c = self.classifier
    if c.augment.name == 'none':
      return x01, labels
    cams = None if params is None else cam_fn(c.model, params, batch_stats, self.normalize)
    # Its own stream: the crop/flip draws stay those of a run without augmentation.
    return augment_real(c.augment, jax.random.fold_in(rng, 1), x01, labels, cams)

  def real_inputs(self, images_uint8, rng, train: bool = True):
    return self.normalize(self.real_inputs01(images_uint8, rng if train else None))

  def normalize(self, images01):
    return normalize(images01, self.classifier.mean, self.classifier.std)

  def generate(self, gen_vars, latents, labels):
    """x_p = G(latents, y_p) in [-1, 1]; labels are ignored by unconditional generators."""
    synth = self.synthetic
    labels = labels if synth.generator_classes > 0 else None
    if synth.w_centres is not None:  # Multi-modal truncation: towards the nearest centre.
      ws = synth.generator.mapping(gen_vars, latents, labels)
      ws = truncate_to_nearest_centre(ws, jnp.asarray(synth.w_centres), synth.truncation_psi)
      return synth.generator.synthesis(gen_vars, ws, 'const')
    return synth.generator.apply(gen_vars, latents, labels, truncation_psi=synth.truncation_psi,
                                 noise_mode='const')

  def to_classifier_input(self, images_m11):
    """Differentiable: generator output -> resized, normalised classifier input."""
    c = self.classifier
    return resize_and_normalize(images_m11, c.image_size, c.mean, c.std)


def cross_entropy(logits, labels):
  """Mean CE; `labels` are integer [B] or soft targets [B, K] (MixUp, CutMix)."""
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classifier_forward(model, params, batch_stats, x, train: bool = True):
  """Logits and the new BatchNorm statistics (batch statistics when training)."""
  if not train:
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False), batch_stats
  logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                mutable=['batch_stats'])
  return logits, updates['batch_stats']


def features_forward(model, params, batch_stats, x):
  """g(x) with batch statistics; the running statistics are not written (synthetic data)."""
  feats, _ = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                         mutable=['batch_stats'], method=ResNet18.features)
  return feats


def head_forward(model, params, feats, head: str = 'fc'):
  """h(feats) with the head `head` ('fc' = ω, 'fc_p' = gda_mh's synthetic head ω_p)."""
  return model.apply({'params': {'fc': params[head]}}, feats, method=ResNet18.head)


def eval_step(params, batch_stats, batch, *, ctx: StepContext):
  """Sums of loss and correct predictions over the real (unmasked) examples."""
  x = ctx.real_inputs(batch['image'], None, train=False)
  logits, _ = classifier_forward(ctx.classifier.model, params, batch_stats, x, train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  mask = batch['mask'].astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}


def apply_classifier_update(state, grads, ctx: StepContext):
  updates, opt_state = ctx.classifier.tx.update(grads, state.opt_state, state.params)
  return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)
