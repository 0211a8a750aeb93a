"""The GAN training loop: a conditional StyleGAN2-ADA G(z, y) trained on D (the training split
only), from config to a generator directory. `python -m mgr_jax.train_generator` runs it.

Uses `config.data` (so `data.fraction` selects the same subset of D as the classifier runs)
and `config.generator` (mgr_jax/config.py). The images of D are resized once to
`generator.resolution`. The workdir gets:

  gan_config.json     the data + generator settings of this run (resume refuses others)
  checkpoints/        Orbax, every generator.checkpoint_every steps (kill -9 safe)
  metrics.jsonl       one row per generator.log_every steps: G/D loss, R1, ADA p, images/s
  samples_NNNNNN.png  G_ema samples, one row per class, fixed z, cells parted by grey lines
                      (every sample_every steps)
  samples_final.png
  generator/          the final G_ema: `mgr_jax.generators.load(<workdir>)` (or .../generator)

Running the same command again resumes; a finished run says so and does nothing. A classifier
run without a generator.checkpoint calls `train_generator` through
`mgr_jax.train.setup.obtain_generator`.
"""
import functools
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image
from tqdm.auto import tqdm

from mgr_jax import checkpoints, generators
from mgr_jax import data as data_lib
from mgr_jax.data.transforms import resize_image, to_uint8
from mgr_jax.errors import UserError
from mgr_jax.gan import ada, steps
from mgr_jax.gan.discriminator import Discriminator
from mgr_jax.generators import stylegan2
from mgr_jax.generators.io import CONFIG_FILE, VARIABLES_FILE
from mgr_jax.models import conv
from mgr_jax.workdir import (append_jsonl, atomic_write_json, check_config, check_finite,
                             workdir_lock, write_jsonl)

GENERATOR_SUBDIR = 'generator'
TRAINING_SUBDIR = 'generator_training'  # Checkpoints and logs of a generator a run trains.
GAN_CONFIG_FILE = 'gan_config.json'
# The data keys that change what G is trained on (not how the classifier reads it).
GAN_DATA_KEYS = ('source', 'image_size', 'fraction', 'seed', 'val_ratio', 'test_ratio',
                 'data_dir', 'train_split')
_IGNORED_GENERATOR_KEYS = ('checkpoint', 'log_every', 'sample_every', 'checkpoint_every')
CHECKPOINT_ITEMS = ('state', 'progress')


# ----------------------------------------------------------------------------------------
# Config → networks.


def validate(gcfg) -> None:
  """Checks config.generator; raises UserError naming the key to fix."""
  res = gcfg.resolution
  if not (res >= 8 and res & (res - 1) == 0):
    raise UserError(f'generator.resolution={res} must be a power of 2 >= 8 (e.g. 16, 32, 256).')
  for key in ('z_dim', 'w_dim', 'mapping_layers', 'channel_base', 'channel_max', 'num_steps',
              'batch_size', 'r1_interval', 'ada_interval', 'log_every', 'checkpoint_every'):
    if gcfg[key] <= 0:
      raise UserError(f'generator.{key}={gcfg[key]} must be positive '
                      f'(--config.generator.{key}=...).')
  for key in ('g_lr', 'd_lr', 'ada_kimg'):
    if not gcfg[key] > 0:
      raise UserError(f'generator.{key}={gcfg[key]} must be positive.')
  if gcfg.r1_gamma < 0 or gcfg.ema_kimg < 0 or gcfg.sample_every < 0:
    raise UserError('generator.r1_gamma, ema_kimg and sample_every must be >= 0.')
  group = min(gcfg.mbstd_group_size, gcfg.batch_size)
  if gcfg.mbstd_group_size > 0 and gcfg.batch_size % group:
    raise UserError(f'generator.batch_size={gcfg.batch_size} must be a multiple of '
                    f'generator.mbstd_group_size={gcfg.mbstd_group_size} '
                    '(--config.generator.batch_size=...).')
  if gcfg.augment and gcfg.augment not in ada.PIPES:
    raise UserError(f'generator.augment={gcfg.augment!r}: use one of {sorted(ada.PIPES)} or \'\' '
                    '(no augmentation).')
  if not 0.0 <= gcfg.ada_p_init <= 1.0 or not 0.0 <= gcfg.style_mixing_prob <= 1.0:
    raise UserError('generator.ada_p_init and generator.style_mixing_prob must be in [0, 1].')


def generator_kwargs(gcfg, num_classes: int, channels: int = 3) -> dict:
  """The official Generator constructor kwargs (what generator.json stores)."""
  synthesis = {'channel_base': int(gcfg.channel_base), 'channel_max': int(gcfg.channel_max),
               'architecture': 'skip'}
  if gcfg.conv_clamp:
    synthesis['conv_clamp'] = float(gcfg.conv_clamp)
  return {'z_dim': int(gcfg.z_dim), 'c_dim': int(num_classes), 'w_dim': int(gcfg.w_dim),
          'img_resolution': int(gcfg.resolution), 'img_channels': int(channels),
          'mapping_kwargs': {'num_layers': int(gcfg.mapping_layers)},
          'synthesis_kwargs': synthesis}


def discriminator_kwargs(gcfg, num_classes: int, channels: int = 3) -> dict:
  """The official Discriminator constructor kwargs ('resnet' architecture)."""
  kwargs = {'c_dim': int(num_classes), 'img_resolution': int(gcfg.resolution),
            'img_channels': int(channels), 'architecture': 'resnet',
            'channel_base': int(gcfg.channel_base), 'channel_max': int(gcfg.channel_max),
            'mapping_kwargs': {'num_layers': int(gcfg.d_mapping_layers)},
            'epilogue_kwargs': {'mbstd_group_size': int(gcfg.mbstd_group_size),
                                'mbstd_num_channels': 1 if gcfg.mbstd_group_size > 0 else 0}}
  if gcfg.conv_clamp:
    kwargs['conv_clamp'] = float(gcfg.conv_clamp)
  return kwargs


def make_setup(gcfg, num_classes: int, channels: int = 3):
  G = stylegan2.Generator.from_kwargs(generator_kwargs(gcfg, num_classes, channels))
  D = Discriminator.from_kwargs(discriminator_kwargs(gcfg, num_classes, channels))
  return steps.GanSetup(
      G=G, D=D, g_tx=steps.adam(gcfg.g_lr),
      d_tx=steps.adam(gcfg.d_lr, gcfg.r1_interval if gcfg.r1_gamma > 0 else None),
      batch_size=int(gcfg.batch_size), r1_gamma=float(gcfg.r1_gamma),
      r1_interval=int(gcfg.r1_interval), style_mixing_prob=float(gcfg.style_mixing_prob),
      ema_kimg=float(gcfg.ema_kimg), ema_rampup=float(gcfg.ema_rampup) or None,
      augment=ada.PIPES[gcfg.augment] if gcfg.augment else None,
      ada_target=float(gcfg.ada_target) or None, ada_interval=int(gcfg.ada_interval),
      ada_kimg=float(gcfg.ada_kimg))


# ----------------------------------------------------------------------------------------
# Data, samples, checkpoints.


def training_images(split, resolution: int) -> np.ndarray:
  """D's uint8 images resized (PIL bilinear, as the data sources) to the G resolution."""
  images = split.images
  if images.shape[1] == resolution and images.shape[2] == resolution:
    return images
  return np.stack([to_uint8(resize_image(im.astype(np.float32) / 255.0, resolution))
                   for im in images])


def to_uint8_images(images) -> np.ndarray:
  """[-1, 1] float → uint8."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
      np.uint8)


def write_grid(path: str, images_u8: np.ndarray, rows: int, cols: int, border: int = 2,
               border_value: int = 128) -> None:
  """rows x cols grid of [rows*cols, H, W, C] uint8 images, upscaled to >= 64 px cells and
  parted by `border` px of grey (touching cells read as one stroke across rows)."""
  n, h, w, c = images_u8.shape
  scale = max(1, 64 // h)
  cells = images_u8.reshape(rows, cols, h, w, c).repeat(scale, axis=2).repeat(scale, axis=3)
  step_h, step_w = h * scale + border, w * scale + border
  grid = np.full((rows * step_h - border, cols * step_w - border, c), border_value, np.uint8)
  for i in range(rows):
    for j in range(cols):
      grid[i * step_h:i * step_h + h * scale, j * step_w:j * step_w + w * scale] = cells[i, j]
  tmp = path + '.tmp'
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(tmp, format='PNG')
  os.replace(tmp, path)


def grid_inputs(G, seed: int, max_rows: int = 20, cols: int = 10):
  """Fixed (z, labels): one row per class (the first `max_rows` classes)."""
  rows = min(G.c_dim, max_rows) if G.c_dim else max_rows // 2
  z = jax.random.normal(jax.random.PRNGKey(seed + 1_000_003), (rows * cols, G.z_dim))
  labels = jnp.repeat(jnp.arange(rows), cols) if G.c_dim else None
  return z, labels, rows, cols


def gan_config(config) -> dict:
  data = {k: config.data[k] for k in GAN_DATA_KEYS}
  gen = {k: v for k, v in config.generator.to_dict().items() if k not in _IGNORED_GENERATOR_KEYS}
  return {'data': data, 'generator': gen}


def is_complete(generator_dir: str) -> bool:
  return all(os.path.isfile(os.path.join(generator_dir, f)) for f in (CONFIG_FILE, VARIABLES_FILE))


def save_generator(out_dir: str, kwargs: dict, variables, source: dict) -> None:
  """Writes the generator directory next to out_dir, then renames it into place."""
  tmp = out_dir.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  generators.save(tmp, 'stylegan2', kwargs, variables, source=source)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)


# ----------------------------------------------------------------------------------------
# Training.


def data_mesh(batch_size: int, devices=None) -> Mesh:
  """The devices that share each GAN batch (all of them by default), axis 'data'."""
  devices = jax.devices() if devices is None else devices
  if batch_size % len(devices):
    raise UserError(f'generator.batch_size={batch_size} must be divisible by the '
                    f'{len(devices)} devices that share each batch.')
  return Mesh(np.array(devices), ('data',))


def place(state, images, labels, mesh: Mesh):
  """(state, data) replicated on every device of `mesh`, as the loop steps on them: each
  step's batch is drawn from the whole of D on device and split over the mesh. Committing
  the state (restored arrays are committed, fresh ones not) makes a fresh and a resumed run
  compile the same program (one persistent-cache entry)."""
  replicated = NamedSharding(mesh, P())
  return (jax.device_put(state, replicated),
          jax.device_put({'images': images, 'labels': labels}, replicated))


def step_rng(seed: int):
  """The key that `steps.train_step` folds each iteration's index into."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def jit_train_step(setup, mesh: Mesh):
  """The loop's compiled iteration: `steps.train_step` jitted with the setup and the data mesh
  static and the state donated; call it with `r1=steps.is_r1_step(setup, step)` (two
  programs; `experiments/bench_gan.py` times this same function). On CPU its convolutions
  run on Eigen, not YNNPACK (`conv.compiler_options`)."""
  return jax.jit(functools.partial(steps.train_step, setup=setup, mesh=mesh), donate_argnums=0,
                 static_argnames=('r1',), compiler_options=conv.compiler_options())


def _row(step, sums, count, r1_sum, r1_count, ada_p, seconds, batch_size):
  shown = {k: float(v) / count for k, v in jax.device_get(sums).items()}
  row = {'step': step, 'g_loss': shown['g_loss'], 'd_loss': shown['d_loss'],
         'd_real_sign': shown['d_real_sign'], 'ada_p': float(ada_p),
         'images_per_s': round(count * batch_size / max(seconds, 1e-9), 2)}
  r1_count = float(jax.device_get(r1_count))
  if r1_count:
    row['r1_penalty'] = float(jax.device_get(r1_sum)) / r1_count
  return row


def train_generator(config, workdir: str, out_dir: str = None) -> str:
  """Trains (or resumes) a generator; returns the generator directory (default
  <workdir>/generator)."""
  with workdir_lock(workdir):  # One run per workdir (released on any exit, kill -9 too).
    return _train_generator(config, workdir, out_dir)


def _train_generator(config, workdir: str, out_dir: str = None) -> str:
  gcfg = config.generator
  workdir = os.path.abspath(workdir)
  out_dir = os.path.abspath(out_dir or os.path.join(workdir, GENERATOR_SUBDIR))
  validate(gcfg)
  check_config(workdir, GAN_CONFIG_FILE, gan_config(config), 'a generator',
               'Use a new --workdir (or pass the existing generator with '
               '--config.generator.checkpoint=DIR), or the same settings to resume.')
  if is_complete(out_dir):
    print(f'This generator has already been trained ({out_dir}). Nothing to do; use a new '
          '--workdir to train again.')
    return out_dir

  splits = data_lib.load_splits(config.data)  # Only splits.train (D) is used below.
  images = training_images(splits.train, gcfg.resolution)
  labels = np.asarray(splits.train.labels, np.int32)
  num_classes, channels = splits.num_classes, images.shape[-1]
  print(f'Training a conditional StyleGAN2-ADA at {gcfg.resolution} px on D: {len(labels)} '
        f'images, {num_classes} classes (data.fraction={config.data.fraction}).')

  setup = make_setup(gcfg, num_classes, channels)
  progress = {'step': 0, 'history': [], 'train_seconds': 0.0}
  os.makedirs(workdir, exist_ok=True)
  atomic_write_json(os.path.join(workdir, GAN_CONFIG_FILE), gan_config(config))
  manager = checkpoints.open_manager(workdir, CHECKPOINT_ITEMS)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if manager.latest_step() is not None:
    restored = checkpoints.restore(manager, resuming=True, state=steps.abstract_state(setup),
                                   progress=None)
    state, progress = restored['state'], restored['progress']
    print(f'Resuming from step {progress["step"]} of {gcfg.num_steps}.')
  else:
    state = steps.create_state(setup, gcfg.seed, gcfg.ada_p_init)
  mesh = data_mesh(gcfg.batch_size)
  state, data = place(state, images, labels, mesh)
  write_jsonl(metrics_path, progress['history'])  # Drops rows logged after the checkpoint.
  train_step = jit_train_step(setup, mesh)
  rng = step_rng(gcfg.seed)
  grid_z, grid_labels, rows, cols = grid_inputs(setup.G, gcfg.seed)
  sample_fn = jax.jit(lambda v: stylegan2.generate(setup.G, v, grid_z, grid_labels),
                      compiler_options=conv.compiler_options())

  def write_samples(name):
    write_grid(os.path.join(workdir, name), to_uint8_images(sample_fn(state.ema_variables())),
               rows, cols)

  start_step = progress['step']
  sums, count, r1_sum, r1_count = None, 0, 0.0, 0
  segment_start = window_start = time.time()
  bar = tqdm(range(start_step, gcfg.num_steps), initial=start_step, total=gcfg.num_steps,
             desc='GAN', disable=not config.progress_bar, dynamic_ncols=True, leave=False)
  for s in bar:
    state, metrics = train_step(state, data, rng, r1=steps.is_r1_step(setup, s))
    if 'r1_penalty' in metrics:
      r1_sum = r1_sum + metrics.pop('r1_penalty')
      r1_count = r1_count + metrics.pop('r1_done')
    ada_p = metrics.pop('ada_p')
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    count += 1
    done = s + 1
    if done % gcfg.log_every == 0 or done == gcfg.num_steps:
      row = _row(done, sums, count, r1_sum, r1_count, ada_p, time.time() - window_start,
                 gcfg.batch_size)
      check_finite(row, f'GAN training at step {done}',
                   'Lower --config.generator.g_lr / d_lr or raise r1_gamma')
      progress['history'].append(row)
      append_jsonl(metrics_path, row)
      bar.set_postfix(g=f'{row["g_loss"]:.3f}', d=f'{row["d_loss"]:.3f}', p=f'{row["ada_p"]:.3f}')
      if not config.progress_bar:
        print(f'step {done}/{gcfg.num_steps}  G {row["g_loss"]:.4f}  D {row["d_loss"]:.4f}  '
              f'sign(D(real)) {row["d_real_sign"]:+.3f}  p {row["ada_p"]:.3f}  '
              f'{row["images_per_s"]:.0f} img/s', flush=True)
      sums, count, r1_sum, r1_count = None, 0, 0.0, 0
      window_start = time.time()
    if gcfg.sample_every and done % gcfg.sample_every == 0:
      write_samples(f'samples_{done:06d}.png')
    if done % gcfg.checkpoint_every == 0 or done == gcfg.num_steps:
      now = time.time()
      progress['train_seconds'] += now - segment_start
      segment_start = now
      progress['step'] = done
      checkpoints.save(manager, done, state=state, progress=progress)
  bar.close()

  write_samples('samples_final.png')
  source = {'trained_by': 'mgr_jax.train_generator', 'steps': int(state.step),
            'train_seconds': round(progress['train_seconds'], 1),
            'data': gan_config(config)['data']}
  save_generator(out_dir, generator_kwargs(gcfg, num_classes, channels),
                 jax.device_get(state.ema_variables()), source)
  print(f'Generator trained in {progress["train_seconds"]:.0f} s ({int(state.step)} steps): '
        f'{out_dir} (samples: {os.path.join(workdir, "samples_final.png")}).')
  return out_dir
