"""The config every config file starts from, and its validation.

Config files in `configs/` call `base_config()` and change what their dataset needs, so
every key exists everywhere and a typo in `--config.key=value` is caught by ml_collections.
"""
import ml_collections

from mgr_jax.data.augment import check_augment
from mgr_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mgr_jax.errors import UserError
from mgr_jax.methods import METHODS

CONSISTENCIES = ('randaugment', 'latent', 'both')

# Keys that moved into config.meta (old dotted key or prefix -> new one): an old key on the
# command line or in a config file is an error that names its new place.
MOVED_KEYS = {'hypergrad': 'meta.hypergrad', 'synth.inner_lr': 'meta.inner_lr',
              'synth.lam_kl': 'meta.lam_kl', 'synth.val_batch_size': 'meta.val_batch_size',
              'finder': 'meta.finder'}


def moved_key(key: str):
  """The new dotted key of a key that moved (or of a key under a moved prefix), else None."""
  for old, new in MOVED_KEYS.items():
    if key == old or key.startswith(old + '.'):
      return new + key[len(old):]
  return None


def _dotted_keys(tree: dict, prefix: str = ''):
  for key, value in tree.items():
    yield prefix + key
    if isinstance(value, dict):
      yield from _dotted_keys(value, f'{prefix}{key}.')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'base'
  c.seed = 0  # Training seed: init, batch order, augmentation draws.
  c.num_epochs = 200
  # Small datasets give short epochs: train at least this many steps (more epochs if needed).
  # 12 epochs of 541 images are 96 steps, and every method then ends underfitted, PCR most
  # (docs/small_data.md); 300 steps took digits at 25 % from 94.4 to 97.2 (base, D_val).
  c.min_train_steps = 300
  c.batch_size = 64
  c.eval_batch_size = 256
  # Nesterov SGD, lr x lr_decay_factor at each fraction of training in lr_decay_at (§4.1).
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-4
  c.lr_decay_at = (0.3, 0.6, 0.8)
  c.lr_decay_factor = 0.1
  c.progress_bar = True
  c.checkpoints_to_keep = 2
  # Save at the end of an epoch once this many seconds passed since the last save (and after
  # the last epoch). Small datasets give sub-second epochs, and saving each took longer than
  # training it (digits at 10 %: 2 min instead of 50 s); a crash loses at most this long.
  c.checkpoint_every_seconds = 30.0

  c.data = ml_collections.ConfigDict()
  c.data.source = 'digits'  # digits | tfds:<name> | folder:<path>
  c.data.image_size = 224
  c.data.fraction = 1.0  # Share of D kept (the paper's 0.1 / 0.25 / 0.5 / 0.75 / 1.0).
  c.data.seed = 0  # Data seed: D / D_val split and the fraction subset.
  c.data.val_ratio = 0.1  # D : D_val = 9 : 1.
  c.data.test_ratio = 0.2  # Held-out test share for sources without a test split.
  c.data.data_dir = ''  # TFDS data_dir ('' = TFDS default).
  c.data.manual_dir = ''  # TFDS manual_dir (only used when preparing).
  c.data.train_split = 'train'
  c.data.test_split = 'test'
  c.data.crop_pad = 4  # Train-time random crop after reflect-padding this many pixels.
  c.data.flip = True  # Train-time random horizontal flip.
  # Real-batch augmentation after crop/flip (Table 3; mgr_jax/data/augment.py): none | mixup |
  # cutmix | snapmix | augmix | randaugment | trivialaugment. Combines with every method.
  c.data.augment = 'none'
  c.data.mix_alpha = 1.0  # MixUp / CutMix / SnapMix λ ~ Beta(α, α).
  c.data.ra_num_ops = 2  # RandAugment N and M (0-30) of data.augment=randaugment.
  c.data.ra_magnitude = 9.0
  c.data.augmix_severity = 3.0  # AugMix severity (1-10).
  # memory: every split decoded into host memory once (small datasets, the fastest); grain:
  # read and decoded per batch in `data.workers` processes, each process reading only its
  # share (mgr_jax/data/stream.py; ImageNet-sized data, multi-process runs).
  c.data.loader = 'memory'
  c.data.workers = 2  # grain worker processes per training process (0 = in the process).
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet18'
  c.model.width = 1.0  # Channel multiplier (1.0 = torchvision's ResNet-18).
  c.model.small_stem = False  # 3x3/1 stem without max-pool, for small images.
  c.model.pretrained = ''  # Directory written by `python -m converters.resnet18`.

  # Synthetic data (every method but base): λ, the synthetic batch, T.
  c.synth = ml_collections.ConfigDict()
  c.synth.lam = 1.0  # λ: weight of the synthetic term (PCR, GDA, ...); the paper grid-searches it.
  # Share of training over which λ ramps up linearly from 0: at step 0 the PCR gradient of an
  # untrained net is ~35x the cross-entropy's even at λ = 0.1 (docs/small_data.md).
  c.synth.lam_warmup = 0.1
  c.synth.pcr_stop_grad = False  # PCR: no gradient through the clean view g(x_p) (a target).
  c.synth.batch_size = 64  # Synthetic samples per step (the paper: 64).
  c.synth.ra_num_ops = 2  # RandAugment N.
  c.synth.ra_magnitude = 10.0  # RandAugment M on the 0-30 scale (Kornia/torchvision).
  c.synth.latent_noise_var = 1e-3  # LatentAugment: s ~ N(0, var).
  c.synth.truncation_psi = 1.0  # ψ (1: none), towards w_avg or, multimodal, the nearest centre.
  # 'global' (StyleGAN's w_avg) or 'multimodal' (B.7: k-means of W, the nearest centre).
  c.synth.truncation = 'global'
  c.synth.truncation_clusters = 16  # k of multimodal truncation...
  c.synth.truncation_samples = 10_000  # ...over the W of this many z (y uniform).
  # PCR's pair (pcr, mgr, finder_max_*; Table 9): randaugment (x_p, T(x_p)), latent
  # (G(z), G(z + s)), both (G(z + s), T(G(z))).
  c.synth.consistency = 'randaugment'

  # Meta pseudo sampling (gda_mps, mgr): the inner step, the hypergradient, the finder F_φ.
  c.meta = ml_collections.ConfigDict()
  c.meta.hypergrad = 'fd'  # 'fd' (Eq. 9, first order) or 'exact' (second order).
  c.meta.inner_lr = 0.0  # η of the inner step (Eq. 8); 0 = the current learning rate.
  c.meta.lam_kl = 0.01  # λ_KL of the finder's KL penalty (Eq. 11).
  c.meta.val_batch_size = 64  # D_val samples per meta step.
  c.meta.fd_radius = 0.01  # r of ε = r / ||v||₂ in 'fd' (Eq. 9; DARTS' 0.01).
  # What MPS meta-learns: 'finder' (F_φ, the paper's) or 'generator' (G's own parameters,
  # the appendix's ablation; Adam with meta.finder.lr, no KL).
  c.meta.target = 'finder'
  c.meta.finder = ml_collections.ConfigDict()
  c.meta.finder.arch = 'residual'  # residual (Eq. 10) | linear | mlp | residual_shallow.
  c.meta.finder.hidden = 0  # MLP width; 0 = the generator's z_dim.
  c.meta.finder.lr = 1e-4  # Adam (§4.1).
  c.meta.finder.identity_init = True  # Residual finders start as F(z) = z: MGR starts as PCR.

  # The frozen generator G(z, y) of every synthetic-data method. `checkpoint` = a generator
  # directory (converter output or `python -m mgr_jax.train_generator`); '' = train a
  # StyleGAN2-ADA on D once, into <workdir>/generator (mgr_jax/gan/loop.py).
  c.generator = ml_collections.ConfigDict()
  c.generator.checkpoint = ''
  c.generator.seed = 0  # Own seed: runs with other config.seed values share one generator.
  c.generator.resolution = 256
  c.generator.z_dim = 512
  c.generator.w_dim = 512
  c.generator.mapping_layers = 2  # G mapping depth (the official 'auto' config: 2).
  c.generator.d_mapping_layers = 8  # D's label-mapping depth (official default: 8).
  c.generator.channel_base = 16384  # Channels at resolution r: min(channel_base / r, channel_max).
  c.generator.channel_max = 512
  c.generator.conv_clamp = 256.0  # 0 = no clamping.
  c.generator.mbstd_group_size = 4
  c.generator.num_steps = 200_000  # Iterations (batch_size real + batch_size fake images each).
  c.generator.batch_size = 32
  c.generator.g_lr = 0.0025  # Adam(0, 0.99) as the official.
  c.generator.d_lr = 0.0025
  c.generator.r1_gamma = 0.4  # Official 'auto' heuristic 0.0002 * resolution^2 / batch_size.
  c.generator.r1_interval = 16  # Lazy R1 every this many steps.
  c.generator.style_mixing_prob = 0.9
  c.generator.ema_kimg = 10.0  # G_ema half-life in thousands of images.
  c.generator.ema_rampup = 0.05  # Half-life <= images seen x this (0 = no ramp-up).
  c.generator.augment = 'bgc'  # ADA pipeline: bgc | bg | blit | geom | color | '' (none).
  c.generator.ada_target = 0.6  # Target E[sign D(real)]; 0 = fixed p (= ada_p_init).
  c.generator.ada_p_init = 0.0
  c.generator.ada_interval = 4  # Adjust p every this many steps...
  c.generator.ada_kimg = 500.0  # ...by batch * interval / (ada_kimg * 1000) per adjustment.
  c.generator.log_every = 50  # Steps between metrics.jsonl rows.
  c.generator.sample_every = 1000  # Steps between sample grids (0 = only the final one).
  c.generator.checkpoint_every = 1000  # Steps between checkpoints.

  # Activations of the classifier: float32 | bfloat16 (parameters, optimiser state, losses
  # and the generator stay float32, as big_vision does).
  c.dtype = 'float32'
  c.distributed = False  # Call jax.distributed.initialize() (multi-process GPU/TPU runs).
  return c


def validate(config) -> None:
  """Checks values that ml_collections' type checks cannot; raises UserError."""
  moved = [(k, moved_key(k)) for k in _dotted_keys(config.to_dict()) if moved_key(k)]
  if moved:
    raise UserError('The config sets keys that have moved: ' + ', '.join(
        f'{old} is now {new}' for old, new in moved) + ' (mgr_jax/config.py).')
  if config.method not in METHODS:
    raise UserError(f'Unknown method {config.method!r}. Choose one of: '
                    f'{", ".join(sorted(METHODS))} (e.g. --config.method=base).')
  if config.model.name != 'resnet18':
    raise UserError(f'Unknown model.name {config.model.name!r}; this version has resnet18.')
  if config.checkpoint_every_seconds < 0:
    raise UserError('checkpoint_every_seconds must be >= 0 (0 saves after every epoch).')
  if config.min_train_steps < 0 or not 0.0 <= config.synth.lam_warmup <= 1.0:
    raise UserError('min_train_steps must be >= 0 and synth.lam_warmup in [0, 1].')
  for key in ('num_epochs', 'batch_size', 'eval_batch_size'):
    if config[key] <= 0:
      raise UserError(f'{key}={config[key]} must be positive (--config.{key}=...).')
  if config.data.image_size < 8:
    raise UserError(f'data.image_size={config.data.image_size} is too small; use at least 8.')
  check_augment(config.data.augment)
  if config.data.loader not in ('memory', 'grain') or config.data.workers < 0:
    raise UserError(f'data.loader={config.data.loader!r}, data.workers={config.data.workers}: '
                    'use loader memory or grain, and workers >= 0.')
  if config.dtype not in ('float32', 'bfloat16'):
    raise UserError(f'dtype={config.dtype!r}: use float32 or bfloat16.')
  if not config.data.mix_alpha > 0:
    raise UserError(f'data.mix_alpha={config.data.mix_alpha} must be positive.')
  if config.meta.hypergrad not in ('fd', 'exact'):
    raise UserError(f'meta.hypergrad={config.meta.hypergrad!r}: use fd or exact.')
  if config.synth.consistency not in CONSISTENCIES:
    raise UserError(f'synth.consistency={config.synth.consistency!r}: use one of '
                    f'{", ".join(CONSISTENCIES)}.')
  if config.synth.truncation not in ('global', 'multimodal'):
    raise UserError(f'synth.truncation={config.synth.truncation!r}: use global or multimodal.')
  if config.synth.truncation_clusters < 1:
    raise UserError('synth.truncation_clusters must be at least 1.')
  if config.meta.target not in ('finder', 'generator'):
    raise UserError(f'meta.target={config.meta.target!r}: use finder or generator.')
  if not config.meta.fd_radius > 0:
    raise UserError(f'meta.fd_radius={config.meta.fd_radius} must be positive.')
  if not 0.0 <= config.data.val_ratio < 1.0 or not 0.0 < config.data.test_ratio < 1.0:
    raise UserError('data.val_ratio must be in [0, 1) and data.test_ratio in (0, 1).')
  if not config.synth.lam >= 0:  # A negative λ would reward inconsistent features.
    raise UserError(f'synth.lam={config.synth.lam} must be >= 0 (--config.synth.lam=0.1).')
  for key in ('mean', 'std'):
    values = config.data[key]
    if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values) or (
        key == 'std' and min(values) <= 0):
      raise UserError(f'data.{key}={values!r} must be 3 numbers (R, G, B; std > 0), e.g. '
                      f'--config.data.{key}="(0.5, 0.5, 0.5)".')


def paper_config(source: str) -> ml_collections.ConfigDict:
  """The paper's fine-grained setting (§4.1): ResNet-18 at 224 px, 200 epochs, batch 64.

  The paper starts from ImageNet weights: convert torchvision's with
  `python -m converters.resnet18` and pass --config.model.pretrained=DIR.
  """
  c = base_config()
  c.data.source = source
  c.data.image_size = 224
  c.data.crop_pad = 16
  c.data.flip = True
  c.num_epochs = 200
  c.learning_rate = 0.01
  c.batch_size = 64
  return c
