"""One StyleGAN2-ADA training iteration: ours (mgr_jax/gan) next to the official PyTorch code.

  python -m experiments.bench_gan --config=configs/digits.py [--steps=10] [--json]
  python -m experiments.bench_gan --config=configs/digits.py \
      --official=/path/to/stylegan2-ada-pytorch      (a checkout of NVlabs/stylegan2-ada-pytorch)

Ours: the iteration `mgr_jax/gan/loop.py` runs, `loop.jit_train_step` (G step, D step, the lazy
R1 step every generator.r1_interval iterations, G_ema, ADA with generator.augment), built as the
loop builds it (`loop.make_setup`, state and data replicated over the data mesh) with the
config's generator.* sizes and batch_size, on random uint8 images of the config's shape and
random labels; timed after compilation, blocking on the result.

Theirs (with --official): the same iteration of the official code on the CPU in float32,
imported from PATH (none of it is copied into this repository): G, D and the AugmentPipe from
its training/networks.py and training/augment.py, built with the kwargs our loop uses
(`loop.generator_kwargs`, `loop.discriminator_kwargs`, the `ada.AugmentSpec` of
generator.augment, whose fields are AugmentPipe's), training/loss.py:StyleGAN2Loss (style
mixing and R1 gamma as ours, path-length regularisation off: ours has none), and the body of
training/training_loop.py's `while True` for one iteration with batch_gpu = batch (one round):
the phases Gmain, Greg (every 4 iterations, their default; with pl off only zero_grad and
Adam's step), Dmain, Dreg (every r1_interval, gain = the interval), Adam(0, 0.99) with the
lazy-regularisation ratio, nan_to_num of the gradients, the G_ema update (our half-life and
ramp-up) and the ADA heuristic every ada_interval iterations. Their DataLoader is left out:
a batch is indexed from the same random images in memory.

Timing: `--warmup` (>= 2) untimed iterations (the first two compile ours: the program with
the R1 step, then the one without), then `--steps` timed ones,
ours and theirs (at each torch thread count of --torch_threads, each count its own copy of the
networks, built from the same seed) alternating iteration by iteration in a rotating order, so
that load from other processes hits all alike; medians. Every runner counts iterations from
0, so the lazy R1 falls on the same iterations (0, r1_interval, ...). A window of a few
iterations rarely holds an R1 one, so `--r1_steps` more iterations are timed at an iteration
index set to a multiple of r1_interval (the R1 iterations), and the time per iteration
amortised over an R1 interval k is ((k - 1) * median + R1 median) / k. The ratio is official /
ours, against the fastest torch thread count: > 1 means ours is faster (issue 12 asks >= 2).
"""
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import types
import warnings

import jax
import numpy as np
from absl import app, flags

from mgr_jax import host_memory
from mgr_jax.errors import UserError
from mgr_jax.gan import ada, loop, steps

OFFICIAL_URL = 'https://github.com/NVlabs/stylegan2-ada-pytorch'
GET_OFFICIAL = (f'To time the official code too: git clone {OFFICIAL_URL} DIR, then add '
                '--official=DIR (needs torch: requirements-test.txt).')
G_REG_INTERVAL = 4  # training_loop.py's default (path-length regularisation, off here).
TARGET_RATIO = 2.0  # Issue 12: a GAN iteration >= 2x faster than the official code.


def random_data(gcfg, num_classes: int, num_images: int, channels: int = 3, seed: int = 0):
  """uint8 images [N, R, R, C] and int32 labels [N] of the generator's shape."""
  rng = np.random.default_rng(seed)
  res = gcfg.resolution
  return (rng.integers(0, 256, (num_images, res, res, channels), dtype=np.uint8),
          rng.integers(0, num_classes, num_images).astype(np.int32))


class Ours:
  """Our GAN loop's iteration on `images`, `labels` (the loop's setup, state, data placement,
  rng and jitted step) on `devices` (default: all, as the loop)."""

  def __init__(self, gcfg, images, labels, num_classes: int, devices=None):
    self.name = 'ours'
    self.setup = loop.make_setup(gcfg, num_classes, images.shape[-1])
    mesh = self.mesh = loop.data_mesh(gcfg.batch_size, devices)  # devices: all by default.
    self.state, self.data = loop.place(
        steps.create_state(self.setup, gcfg.seed, gcfg.ada_p_init), images, labels, mesh)
    self.rng = loop.step_rng(gcfg.seed)
    self.step_fn = loop.jit_train_step(self.setup, mesh)
    self.metrics = None
    self.index = 0  # state.step, counted on the host as the loop does.

  def iterate(self, index=None):
    """One iteration, blocking; `index` sets the iteration counter first (an R1 iteration
    when it is a multiple of r1_interval)."""
    if index is not None:  # Same sharding as the step's own output: no new compilation.
      self.index = index
      self.state = self.state.replace(
          step=jax.device_put(np.int32(index), self.state.step.sharding))
    self.state, self.metrics = self.step_fn(self.state, self.data, self.rng,
                                            r1=steps.is_r1_step(self.setup, self.index))
    jax.block_until_ready((self.state, self.metrics))
    self.index += 1


def import_official(path: str):
  """The official modules, imported from the checkout at `path` (put first on sys.path)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(os.path.join(path, 'training', 'loss.py')):
    raise UserError(f'--official={path} is not a stylegan2-ada-pytorch checkout (no '
                    f'training/loss.py). {GET_OFFICIAL}')
  if path not in sys.path:
    sys.path.insert(0, path)
  import torch
  from torch_utils import misc, training_stats
  from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
  from training import augment, loss, networks
  for module in (misc, augment, loss, networks):
    if not os.path.abspath(module.__file__).startswith(path + os.sep):
      raise UserError(f'{module.__name__} was imported from {module.__file__}, not from '
                      f'--official={path}: another package of that name shadows it.')
  # No patch is needed on torch 2.x: their custom CUDA ops (bias_act, upfirdn2d) take their
  # reference implementations on the CPU, and conv2d_gradfix / grid_sample_gradfix fall back
  # to torch's own ops. The latter warns that it does so (once); silenced here.
  warnings.filterwarnings('ignore', message='grid_sample_gradfix not supported')
  return types.SimpleNamespace(torch=torch, misc=misc, training_stats=training_stats,
                               conv2d_gradfix=conv2d_gradfix,
                               grid_sample_gradfix=grid_sample_gradfix, augment=augment,
                               loss=loss, networks=networks, path=path)


class Official:
  """The official training loop's iteration (training/training_loop.py, one GPU's worth, on
  the CPU in float32), at our G / D sizes, batch, R1 interval and gamma, augmentation and
  EMA, on the same images and labels. `threads`: torch.set_num_threads before each
  iteration."""

  def __init__(self, mods, gcfg, images, labels, num_classes: int, threads: int, seed: int = 0):
    torch = self.torch = mods.torch
    self.mods, self.threads, self.name = mods, int(threads), f'official_{threads}T'
    device = torch.device('cpu')
    np.random.seed(seed)
    torch.manual_seed(seed)
    # As training_loop.py sets them (no effect on the CPU, where neither custom op runs).
    mods.conv2d_gradfix.enabled = True
    mods.grid_sample_gradfix.enabled = True
    channels = images.shape[-1]
    self.G = mods.networks.Generator(**loop.generator_kwargs(gcfg, num_classes, channels))
    self.G.train().requires_grad_(False)
    self.D = mods.networks.Discriminator(**loop.discriminator_kwargs(gcfg, num_classes,
                                                                     channels))
    self.D.train().requires_grad_(False)
    self.G_ema = copy.deepcopy(self.G).eval()
    self.augment_pipe, self.ada_stats = None, None
    self.ada_target = float(gcfg.ada_target) or None
    if gcfg.augment:  # As ours: augment whenever a pipe is set (their loop: p > 0 or ADA).
      spec = {k: float(v) for k, v in dataclasses.asdict(ada.PIPES[gcfg.augment]).items()}
      self.augment_pipe = mods.augment.AugmentPipe(**spec).train().requires_grad_(False)
      self.augment_pipe.p.copy_(torch.as_tensor(float(gcfg.ada_p_init)))
      if self.ada_target is not None:
        self.ada_stats = mods.training_stats.Collector(regex='Loss/signs/real')
    self.loss = mods.loss.StyleGAN2Loss(
        device=device, G_mapping=self.G.mapping, G_synthesis=self.G.synthesis, D=self.D,
        augment_pipe=self.augment_pipe, style_mixing_prob=float(gcfg.style_mixing_prob),
        r1_gamma=float(gcfg.r1_gamma), pl_weight=0)
    self.phases = []
    d_reg = int(gcfg.r1_interval) if gcfg.r1_gamma > 0 else None
    for name, module, lr, reg_interval in (('G', self.G, gcfg.g_lr, G_REG_INTERVAL),
                                           ('D', self.D, gcfg.d_lr, d_reg)):
      if reg_interval is None:
        opt = torch.optim.Adam(module.parameters(), lr=lr, betas=[0, 0.99], eps=1e-8)
        self.phases.append(types.SimpleNamespace(name=name + 'both', module=module, opt=opt,
                                                 interval=1))
      else:  # Lazy regularisation.
        ratio = reg_interval / (reg_interval + 1)
        opt = torch.optim.Adam(module.parameters(), lr=lr * ratio,
                               betas=[b ** ratio for b in (0, 0.99)], eps=1e-8)
        self.phases.append(types.SimpleNamespace(name=name + 'main', module=module, opt=opt,
                                                 interval=1))
        self.phases.append(types.SimpleNamespace(name=name + 'reg', module=module, opt=opt,
                                                 interval=reg_interval))
    self.batch_size = int(gcfg.batch_size)
    self.ema_kimg, self.ema_rampup = float(gcfg.ema_kimg), float(gcfg.ema_rampup) or None
    self.ada_interval, self.ada_kimg = int(gcfg.ada_interval), float(gcfg.ada_kimg)
    self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NCHW uint8
    self.onehot = np.eye(num_classes, dtype=np.float32)[labels]  # dataset.get_label
    self.onehot_t = torch.from_numpy(self.onehot)
    self.cur_nimg, self.batch_idx = 0, 0

  def iterate(self, index=None):
    """training_loop.py's `while True` body up to the ADA heuristic (the tick's maintenance,
    snapshots and logs left out), with batch_gpu = batch_size and one process."""
    torch, misc = self.torch, self.mods.misc
    torch.set_num_threads(self.threads)
    if index is not None:
      self.batch_idx, self.cur_nimg = index, index * self.batch_size
    b, phases, n = self.batch_size, self.phases, len(self.onehot)
    # Fetch training data (a random batch of the images in memory instead of their
    # DataLoader; the rest as theirs).
    idx = torch.from_numpy(np.random.randint(n, size=b))
    phase_real_img = (self.images[idx].to(torch.float32) / 127.5 - 1).split(b)
    phase_real_c = self.onehot_t[idx].split(b)
    all_gen_z = torch.randn([len(phases) * b, self.G.z_dim])
    all_gen_z = [phase_gen_z.split(b) for phase_gen_z in all_gen_z.split(b)]
    all_gen_c = [self.onehot[np.random.randint(n)] for _ in range(len(phases) * b)]
    all_gen_c = torch.from_numpy(np.stack(all_gen_c))  # (.pin_memory().to(device): GPU only)
    all_gen_c = [phase_gen_c.split(b) for phase_gen_c in all_gen_c.split(b)]

    # Execute training phases.
    for phase, phase_gen_z, phase_gen_c in zip(phases, all_gen_z, all_gen_c):
      if self.batch_idx % phase.interval != 0:
        continue
      phase.opt.zero_grad(set_to_none=True)
      phase.module.requires_grad_(True)
      for real_img, real_c, gen_z, gen_c in zip(phase_real_img, phase_real_c, phase_gen_z,
                                                phase_gen_c):
        self.loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c,
                                       gen_z=gen_z, gen_c=gen_c, sync=True, gain=phase.interval)
      phase.module.requires_grad_(False)
      for param in phase.module.parameters():
        if param.grad is not None:
          misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
      phase.opt.step()

    # Update G_ema.
    ema_nimg = self.ema_kimg * 1000
    if self.ema_rampup is not None:
      ema_nimg = min(ema_nimg, self.cur_nimg * self.ema_rampup)
    ema_beta = 0.5 ** (b / max(ema_nimg, 1e-8))
    for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
      p_ema.copy_(p.lerp(p_ema, ema_beta))
    for b_ema, b_ in zip(self.G_ema.buffers(), self.G.buffers()):
      b_ema.copy_(b_)

    # Update state.
    self.cur_nimg += b
    self.batch_idx += 1

    # Execute ADA heuristic. (training_stats' counters are module globals: with several
    # copies the signs reach whichever copy updates next; this moves p, not the work.)
    if self.ada_stats is not None and self.batch_idx % self.ada_interval == 0:
      self.ada_stats.update()
      adjust = (np.sign(self.ada_stats['Loss/signs/real'] - self.ada_target)
                * (b * self.ada_interval) / (self.ada_kimg * 1000))
      self.augment_pipe.p.copy_((self.augment_pipe.p + adjust).max(misc.constant(0)))


def measure(runners, steps: int, warmup: int, r1_steps: int, r1_interval: int):
  """{runner name: {'iter_s': [...], 'r1_s': [...], 'first_s': s}}: `warmup` untimed and
  `steps` timed iterations of each runner, then `r1_steps` R1 iterations (index set to the next
  multiples of r1_interval), runners alternating in a rotating order."""
  if warmup < 2:
    raise UserError('--warmup must be >= 2 (the first two iterations compile ours: the one '
                    'with R1, then the one without).')
  out = {r.name: {'iter_s': [], 'r1_s': [], 'first_s': None} for r in runners}
  first_r1 = math.ceil((warmup + steps) / r1_interval)
  schedule = [(i, None) for i in range(warmup + steps)]
  schedule += [(warmup + steps + j, (first_r1 + j) * r1_interval) for j in range(r1_steps)]
  for i, index in schedule:
    k = i % len(runners)
    for runner in runners[k:] + runners[:k]:
      start = time.perf_counter()
      runner.iterate(index)
      seconds = time.perf_counter() - start
      if i == 0:
        out[runner.name]['first_s'] = seconds
      elif index is not None:
        out[runner.name]['r1_s'].append(seconds)
      elif i >= warmup:
        out[runner.name]['iter_s'].append(seconds)
  return out


def summarise(times, r1_interval: int) -> dict:
  """Medians and the amortised time per iteration of one runner's `measure` entry."""
  median = statistics.median(times['iter_s'])
  r1 = statistics.median(times['r1_s']) if times['r1_s'] else None
  amortised = None if r1 is None else ((r1_interval - 1) * median + r1) / r1_interval
  return {'median_s': median, 'r1_median_s': r1, 'amortised_s': amortised,
          'first_s': times['first_s'], 'iter_s': times['iter_s'], 'r1_s': times['r1_s']}


def run(config, steps: int = 10, warmup: int = 2, r1_steps: int = 3, official: str = '',
        torch_threads=(), num_classes: int = 10, num_images: int = 1000, channels: int = 3,
        as_json: bool = False) -> dict:
  gcfg = config.generator
  loop.validate(gcfg)
  mods = import_official(official) if official else None  # First: a bad path fails fast.
  images, labels = random_data(gcfg, num_classes, num_images, channels)
  runners = [Ours(gcfg, images, labels, num_classes)]
  if mods:
    threads = tuple(torch_threads) or tuple(sorted({mods.torch.get_num_threads(), 1},
                                                   reverse=True))
    runners += [Official(mods, gcfg, images, labels, num_classes, t, gcfg.seed)
                for t in threads]
  k = int(gcfg.r1_interval)
  times = measure(runners, steps, warmup, r1_steps, k)
  results = {'ours': summarise(times['ours'], k), 'official': {}}
  results['ours']['compilations'] = runners[0].step_fn._cache_size()
  for r in runners[1:]:
    results['official'][r.threads] = summarise(times[r.name], k)
  ratios = {}
  if results['official']:
    for key in ('median_s', 'r1_median_s', 'amortised_s'):
      theirs = [v[key] for v in results['official'].values() if v[key] is not None]
      if theirs and results['ours'][key]:
        ratios[key] = min(theirs) / results['ours'][key]
  info = {'jax': jax.__version__, 'device': (f'{jax.devices()[0].device_kind} '
                                             f'x{jax.device_count()} ({jax.default_backend()})'),
          'torch': mods.torch.__version__ if mods else None,
          'official': mods.path if mods else None,
          'generator': {key: gcfg[key] for key in (
              'resolution', 'z_dim', 'w_dim', 'mapping_layers', 'd_mapping_layers',
              'channel_base', 'channel_max', 'conv_clamp', 'mbstd_group_size', 'batch_size',
              'r1_gamma', 'r1_interval', 'style_mixing_prob', 'augment', 'ada_target')},
          'num_classes': num_classes, 'channels': channels, 'steps': steps, 'warmup': warmup,
          'r1_steps': r1_steps}
  out = {'results': results, 'ratio_official_over_ours': ratios, 'info': info}
  if as_json:
    print(json.dumps(out))
  else:
    print_table(out)
  return out


def print_table(out) -> None:
  info, res, ratios = out['info'], out['results'], out['ratio_official_over_ours']
  g = info['generator']
  print(f'ours: JAX {info["jax"]} on {info["device"]}'
        + (f'; official: torch {info["torch"]} on the CPU, float32 ({info["official"]})'
           if info['official'] else ''))
  print(f'conditional StyleGAN2-ADA {g["resolution"]} px x{info["channels"]}, '
        f'{info["num_classes"]} classes, z {g["z_dim"]}, w {g["w_dim"]}, channel_base '
        f'{g["channel_base"]}, channel_max {g["channel_max"]}, batch {g["batch_size"]}, R1 '
        f'every {g["r1_interval"]} (gamma {g["r1_gamma"]}), augment {g["augment"] or "none"}; '
        f'{info["steps"]} timed iterations after {info["warmup"]} (+ {info["r1_steps"]} R1 '
        'iterations), interleaved')
  threads = sorted(res['official'], reverse=True)
  cols = ''.join(f'{f"official {t}T s":>16}' for t in threads)
  ratio_col = f'{"official/ours":>14}' if threads else ''
  print(f'{"s / iteration":<26}{"ours s":>10}{cols}{ratio_col}')
  for key, label in (('median_s', 'iteration (median)'), ('r1_median_s', 'R1 iteration (median)'),
                     ('amortised_s', f'amortised over {g["r1_interval"]}')):
    if res['ours'][key] is None:
      continue
    row = f'{label:<26}{res["ours"][key]:>10.4f}'
    row += ''.join(f'{res["official"][t][key]:>16.4f}' for t in threads)
    if key in ratios:
      row += f'{ratios[key]:>14.2f}'
    print(row)
  print(f'ours: first iteration (trace + compile of the R1 program + run) '
        f'{res["ours"]["first_s"]:.1f} s, {res["ours"]["compilations"]} compilations of the step '
        '(with and without R1)')
  if not threads:
    print(GET_OFFICIAL)
    return
  print('official/ours: against the fastest official column; > 1 = ours faster.')
  key = 'amortised_s' if 'amortised_s' in ratios else 'median_s'
  met = ratios[key] >= TARGET_RATIO
  print(f'issue 12 target official/ours >= {TARGET_RATIO:g} ({key[:-2]}): '
        f'{"met" if met else "not met"} ({ratios[key]:.2f})')


def main(argv):
  del argv
  host_memory.reuse_step_buffers()  # As the entry points run steps (mgr_jax.cli).
  f = flags.FLAGS
  try:
    run(f.config, f.steps, f.warmup, f.r1_steps, f.official, [int(t) for t in f.torch_threads],
        f.num_classes, f.num_images, f.channels, f.json)
  except UserError as e:
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', 'configs/digits.py', 'Config file.')
  flags.DEFINE_integer('steps', 10, 'Timed iterations per runner (median).')
  flags.DEFINE_integer('warmup', 2, 'Untimed iterations first (>= 2: the first two compile '
                       'ours, with and without R1).')
  flags.DEFINE_integer('r1_steps', 3, 'R1 iterations timed after the window (0: none).')
  flags.DEFINE_string('official', '', 'A checkout of NVlabs/stylegan2-ada-pytorch to time '
                      'next to ours (empty: ours only).')
  flags.DEFINE_list('torch_threads', [], 'torch thread counts for the official code '
                    "(default: torch's default and 1).")
  flags.DEFINE_integer('num_classes', 10, 'Classes of the random data.')
  flags.DEFINE_integer('num_images', 1000, 'Images of the random data set.')
  flags.DEFINE_integer('channels', 3, 'Image channels (digits: 3).')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  app.run(main)
