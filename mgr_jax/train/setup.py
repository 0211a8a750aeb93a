"""Everything a run needs before its first step: model, optimisers, generator, finder, state,
the static step context, and the device mesh (data parallel over all devices)."""
import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mgr_jax import finder as finder_lib
from mgr_jax import generators
from mgr_jax.data import pipeline
from mgr_jax.data.augment import RealAugment
from mgr_jax.errors import UserError
from mgr_jax.generators import multimodal
from mgr_jax.gan.loop import GENERATOR_SUBDIR, TRAINING_SUBDIR, train_generator
from mgr_jax.methods import (METHODS, ClassifierContext, MetaContext, Method, StepContext,
                             SyntheticContext)
from mgr_jax.models import conv
from mgr_jax.models.classifier import build_model
from mgr_jax.models.resnet import ResNet18, feature_dim
from mgr_jax.train.state import (TrainState, create_train_state, lam_schedule, lr_schedule,
                                 make_optimizer)


@dataclasses.dataclass
class Run:
  method: Method
  ctx: StepContext
  state: TrainState
  gen_vars: Any  # Frozen generator variables ({} without a generator), a jit argument.
  steps_per_epoch: int
  mesh: Mesh

  @property
  def batch_sharding(self):
    return NamedSharding(self.mesh, P('data'))

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  def shard_batch(self, batch):
    """Global batch (the same on every process) -> arrays split over the data axis."""
    n_proc, index = jax.process_count(), jax.process_index()

    def put(x):
      local = np.split(x, n_proc)[index] if n_proc > 1 else x
      return jax.make_array_from_process_local_data(self.batch_sharding, local)
    return jax.tree.map(put, batch)

  def jit_step(self):
    return jax.jit(functools.partial(self.method.step, ctx=self.ctx), donate_argnums=0,
                   compiler_options=conv.compiler_options())


def generator_dir(config, workdir: str) -> str:
  """`config.generator.checkpoint` if set, else <workdir>/generator: trained on D the first
  time (checkpoints and logs in <workdir>/generator_training) and reused afterwards."""
  if config.generator.checkpoint:
    return config.generator.checkpoint
  workdir = os.path.abspath(workdir)
  return train_generator(config, os.path.join(workdir, TRAINING_SUBDIR),
                         out_dir=os.path.join(workdir, GENERATOR_SUBDIR))


def obtain_generator(config, workdir: str, num_classes: int):
  """The frozen generator of `config.method` (None for a method that uses none), loaded from
  `generator_dir` and checked against the method and the data's `num_classes`."""
  if not METHODS[config.method].uses_generator:
    return None
  generator = generators.load(generator_dir(config, workdir))
  check_generator(config.method, generator, num_classes)
  labels = (f'{generator.num_classes} classes' if generator.num_classes
            else 'unconditional')
  size = config.data.image_size
  resize = f', x_p resized to {size} px' if generator.resolution != size else ''
  print(f'Generator {generator.path}: {generator.kind}, {labels}, '
        f'{generator.resolution} px{resize}.')
  return generator


def check_generator(method_name, generator, num_classes):
  """Methods that train on y_p need a conditional generator over the data's classes; the
  others take any generator (y_p only selects its class)."""
  if generator is None:
    raise UserError(f'Method {method_name!r} needs a generator: pass '
                    '--config.generator.checkpoint=DIR (a directory written by '
                    '`python -m mgr_jax.train_generator` or a converter).')
  if METHODS[method_name].needs_labels and generator.num_classes != num_classes:
    raise UserError(
        f'Method {method_name!r} trains on (x_p, y_p) and needs a conditional generator over '
        f'the dataset\'s {num_classes} classes, but the generator has '
        f'{generator.num_classes or "no"} classes. Use a generator trained on this dataset, '
        'or a method that uses no synthetic labels (pcr, mgr, gda_ssl, latent_augment).')


def make_mesh(config, devices=None) -> Mesh:
  devices = np.array(jax.devices() if devices is None else devices)
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % len(devices):
      raise UserError(f'{key}={config[key]} must be divisible by the {len(devices)} devices '
                      'of the data-parallel mesh.')
  return Mesh(devices, ('data',))


def build_run(config, num_classes: int, num_train: int, generator=None, pretrained=None,
              devices=None) -> Run:
  """`generator`: from `obtain_generator` (checked there). `devices`: the data-parallel mesh
  (default: every device of every process)."""
  method = METHODS[config.method]
  if not method.uses_generator:
    generator = None  # `base` and `real_cr` never call a generator.
  mesh = make_mesh(config, devices)
  model = build_model(config.model, num_classes, config.dtype)
  steps = pipeline.steps_per_epoch(num_train, config.batch_size)
  tx = make_optimizer(config, steps)
  rng = jax.random.PRNGKey(config.seed)
  state = create_train_state(model, tx, config.data.image_size, rng, pretrained)
  if method.synthetic_head:  # gda_mh's ω_p: a second head like ω, its own init.
    feats = jnp.zeros((1, feature_dim(config.model.width)))
    head = model.init(jax.random.fold_in(rng, 3), feats, method=ResNet18.head)['params']['fc']
    params = dict(state.params, fc_p=head)
    state = state.replace(params=params, opt_state=tx.init(params))
  meta = None
  if method.finder:
    state, meta = _meta_parameters(config, method, generator, state, rng)
  data = config.data
  ctx = StepContext(
      classifier=ClassifierContext(
          model=model, tx=tx, lr_schedule=lr_schedule(config, steps), crop_pad=data.crop_pad,
          flip=data.flip, mean=tuple(data.mean), std=tuple(data.std),
          image_size=data.image_size,
          augment=RealAugment(data.augment, num_classes, mix_alpha=data.mix_alpha,
                              ra_num_ops=data.ra_num_ops, ra_magnitude=data.ra_magnitude,
                              augmix_severity=data.augmix_severity)),
      synthetic=SyntheticContext(
          generator=generator, lam=config.synth.lam, batch_size=config.synth.batch_size,
          ra_num_ops=config.synth.ra_num_ops, ra_magnitude=config.synth.ra_magnitude,
          latent_noise_var=config.synth.latent_noise_var,
          truncation_psi=config.synth.truncation_psi,
          lam_schedule=lam_schedule(config, steps),
          pcr_stop_grad=config.synth.pcr_stop_grad,
          consistency=config.synth.consistency,
          w_centres=_w_centres(config, generator)),
      meta=meta, mesh=mesh)
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  gen_vars = jax.device_put(generator.variables, replicated) if generator is not None else {}
  return Run(method=method, ctx=ctx, state=state, gen_vars=gen_vars, steps_per_epoch=steps,
             mesh=mesh)


def _w_centres(config, generator):
  """The k-means centres of G's W space for synth.truncation=multimodal (else None); a
  property of the generator, so drawn with generator.seed, the same for every run."""
  s = config.synth
  if s.truncation != 'multimodal' or generator is None:
    return None
  centres = multimodal.w_centres(generator, jax.random.PRNGKey(config.generator.seed),
                                 s.truncation_samples, s.truncation_clusters)
  return np.asarray(centres)


def _meta_parameters(config, method, generator, state, rng):
  """φ and its optimiser (state.finder_params / finder_opt_state) and the MetaContext: a new
  finder F_φ, or (meta.target=generator, MPS only) a copy of G's own parameters."""
  fcfg, target = config.meta.finder, config.meta.target
  finder_tx = finder_lib.finder_optimizer(fcfg.lr)
  if target == 'generator' and method.meta:
    if 'params' not in generator.variables:
      raise UserError(f'meta.target=generator needs a generator with trainable parameters; '
                      f'{generator.path} has only {sorted(generator.variables)}.')
    finder, phi = None, jax.tree.map(jnp.array, generator.variables['params'])
  else:
    if target == 'generator':
      raise UserError(f'meta.target=generator is MPS on G\'s parameters: it needs a '
                      f'meta-learning method (mgr, gda_mps), not {config.method!r}.')
    finder = finder_lib.make_finder(fcfg.arch, generator.z_dim, fcfg.hidden or None,
                                    zero_init_last=fcfg.identity_init)
    phi = finder.init(jax.random.fold_in(rng, 2), jnp.zeros((1, generator.z_dim)))['params']
  state = state.replace(finder_params=phi, finder_opt_state=finder_tx.init(phi))
  meta = MetaContext(finder=finder, finder_tx=finder_tx, lam_kl=config.meta.lam_kl,
                     inner_lr=config.meta.inner_lr, hypergrad=config.meta.hypergrad,
                     fd_radius=config.meta.fd_radius, target=target)
  return state, meta


def val_batch(split, size: int, seed: int, epoch: int, step: int, process_index: int = 0,
              process_count: int = 1):
  """A D_val batch for the meta step; depends only on (seed, epoch, step). Per process: its
  share of the global batch (`pipeline.process_share`)."""
  idx = pipeline.process_share(pipeline.val_positions(len(split), size, seed, epoch, step),
                               process_index, process_count)
  return {'val_image': split.images[idx], 'val_label': split.labels[idx]}
