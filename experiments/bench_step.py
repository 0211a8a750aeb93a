"""Step-time and memory benchmark of base, pcr, mgr (fd) and mgr (exact) at one shape.

  python -m experiments.bench_step --config=configs/digits.py [--json] [--steps=20]
      [--config.batch_size=64 --config.generator.checkpoint=DIR ...]
  python -m experiments.bench_step --config=configs/digits.py --torch   (next to PyTorch eager:
      experiments/bench_torch.py; needs requirements-test.txt)

At the paper's scale, on an accelerator (random weights and random data; nothing to
download): ResNet-18 at 224 px, 64 real + 64 synthetic (+ 64 D_val) per step, with a
StyleGAN2-ADA at 256 px or a BigGAN-deep at 128 px as G; add --config.dtype=bfloat16 for
bf16 activations:

  python -m experiments.bench_step --scale=paper --generator=stylegan2 --steps=10
  python -m experiments.bench_step --scale=paper --generator=biggan --steps=10 \
      --config.dtype=bfloat16

Each method's step is compiled once, run `--warmup` times, then timed `--steps` times
(median, blocking on the result). Peak memory is XLA's own estimate for the compiled step
(arguments + outputs + temporaries − donated aliases). Without --config.generator.checkpoint a
randomly initialised StyleGAN2-ADA of the config's generator architecture stands in (same
cost as a trained one). The data are random images of the config's shape.
"""
import json
import math
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import interleave
from mgr_jax import generators, host_memory
from mgr_jax.generators import biggan, stylegan2
from mgr_jax.methods import METHODS
from mgr_jax.train.setup import build_run

VARIANTS = (('base', 'base', 'fd'), ('pcr', 'pcr', 'fd'), ('mgr_fd', 'mgr', 'fd'),
            ('mgr_exact', 'mgr', 'exact'))


def select_variants(names):
  """The VARIANTS entries named in `names`, in VARIANTS' order (--variants)."""
  known = [v[0] for v in VARIANTS]
  unknown = sorted(set(names) - set(known))
  if unknown or not names:
    raise app.UsageError(f'--variants={",".join(names)}: choose one or more of {known}.')
  return [v for v in VARIANTS if v[0] in names]


def random_stylegan2(gen_config, num_classes: int, seed: int = 0):
  """A LoadedGenerator-like StyleGAN2-ADA with random weights of the configured shape."""
  kwargs = {'z_dim': gen_config.z_dim, 'c_dim': num_classes, 'w_dim': gen_config.w_dim,
            'img_resolution': gen_config.resolution, 'img_channels': 3,
            'mapping_kwargs': {'num_layers': gen_config.mapping_layers},
            'synthesis_kwargs': {'channel_base': gen_config.channel_base,
                                 'channel_max': gen_config.channel_max, 'num_fp16_res': 0,
                                 'conv_clamp': gen_config.conv_clamp or None}}
  gdef = generators.generator_def('stylegan2', kwargs)
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32) * 0.1,
                           stylegan2.abstract_variables(gdef.module))
  return generators.LoadedGenerator('stylegan2', gdef, variables)


def random_biggan(seed: int = 0):
  """A LoadedGenerator-like BigGAN-deep of the published 128-px layout (1000 classes) with
  random weights (N(0, 0.02)); BN statistics tables at mean 0, variance 1."""
  gdef = generators.generator_def('biggan', biggan.config_kwargs({}))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = jax.tree_util.keystr(path)
    if 'running_vars' in name:
      return np.ones(s.shape, np.float32)
    if 'running_means' in name:
      return np.zeros(s.shape, np.float32)
    return rng.standard_normal(s.shape).astype(np.float32) * 0.02
  variables = jax.tree_util.tree_map_with_path(leaf, biggan.abstract_variables(gdef.module))
  return generators.LoadedGenerator('biggan', gdef, variables)


def paper_scale(config, generator: str):
  """(config, generator, num_classes) of the paper's step: ResNet-18 at 224 px, 64 real +
  64 synthetic + 64 D_val, G = StyleGAN2-ADA 256 px (official 256-px widths, 10 classes) or
  BigGAN-deep 128 px (ImageNet's 1000 classes, as in B.5)."""
  c = config.copy_and_resolve_references()
  c.data.image_size, c.data.crop_pad, c.data.flip = 224, 16, True
  c.model.width, c.model.small_stem = 1.0, False
  c.batch_size = c.synth.batch_size = c.meta.val_batch_size = 64
  if generator == 'biggan':
    return c, random_biggan(), 1000
  g = c.generator
  g.resolution, g.z_dim, g.w_dim, g.mapping_layers = 256, 512, 512, 2
  g.channel_base, g.channel_max, g.conv_clamp = 16384, 512, 256.0
  return c, random_stylegan2(g, 10), 10


def peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  if m is None:
    return -1
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def random_batch(config, num_classes: int, seed: int = 0) -> dict:
  """A batch of random uint8 images of the config's shape, with a D_val batch."""
  n, size = config.batch_size, config.data.image_size
  val_n = config.meta.val_batch_size
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          'label': rng.integers(0, num_classes, n).astype(np.int32),
          'val_image': rng.integers(0, 256, (val_n, size, size, 3), dtype=np.uint8),
          'val_label': rng.integers(0, num_classes, val_n).astype(np.int32)}


def bench(config, method, mode, generator, batch, num_classes=10, steps=20, warmup=3,
          num_train=None):
  """(median seconds per step, XLA peak bytes, compilations) of `method`'s jitted step.
  `num_train` (default 10 batches) sets the learning-rate schedule: with a run's D size
  the step is the run's very program (a persistent compilation cache then serves it)."""
  config = config.copy_and_resolve_references()
  config.method = method
  config.meta.hypergrad = mode
  if not METHODS[method].meta:
    batch = {k: batch[k] for k in ('image', 'label')}
  run = build_run(config, num_classes, num_train or 10 * config.batch_size, generator)
  step = run.jit_step()
  rng = jax.random.PRNGKey(0)
  args = (run.state, run.shard_batch(batch), rng, run.gen_vars)
  compiled = step.lower(*args).compile()
  state = run.state
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = step(state, args[1], rng, run.gen_vars)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  # One compilation for the AOT lowering plus one for the calls; nothing after step one.
  # (_cache_size is private: -1 where a JAX version lacks it.)
  cache_size = getattr(step, '_cache_size', lambda: -1)()
  return statistics.median(times), peak_bytes(compiled), cache_size


def main(argv):
  del argv
  host_memory.reuse_step_buffers()  # As the entry points run steps (mgr_jax.cli).
  config = FLAGS.config
  num_classes = FLAGS.num_classes
  if FLAGS.torch:
    from experiments import bench_torch  # torch is imported only here.
    # bench_torch's warm-up counts rounds of 1 + BLOCK steps of each column.
    rounds = math.ceil(FLAGS.warmup / (1 + interleave.BLOCK))
    bench_torch.run(config, FLAGS.steps, rounds, num_classes, FLAGS.json, variants=FLAGS.variants)
    return
  if FLAGS.scale == 'paper':
    config, generator, num_classes = paper_scale(config, FLAGS.generator)
  elif config.generator.checkpoint:
    generator = generators.load(config.generator.checkpoint)
  else:
    generator = random_stylegan2(config.generator, num_classes)
  batch = random_batch(config, num_classes)
  seconds, peak, compiles = {}, {}, {}
  for name, method, mode in select_variants(FLAGS.variants):
    seconds[name], peak[name], compiles[name] = bench(config, method, mode, generator, batch,
                                                      num_classes, FLAGS.steps, FLAGS.warmup)
    print(f'{name}: {seconds[name]:.4f} s, {peak[name] / 2**20:.1f} MiB', file=sys.stderr,
          flush=True)  # Progress: paper-scale compiles take minutes.
  ratios = {f'{a}/{b}': seconds[a] / seconds[b]
            for a, b in (('mgr_fd', 'pcr'), ('mgr_exact', 'mgr_fd'), ('pcr', 'base'))
            if a in seconds and b in seconds}
  device = device_name()
  if FLAGS.json:
    print(json.dumps({'step_seconds': seconds, 'ratios': ratios, 'peak_bytes': peak,
                      'device': device, 'dtype': config.dtype}))
    return
  print(f'device: {device}; batch {config.batch_size} real + {config.synth.batch_size} '
        f'synthetic at {config.data.image_size} px; ResNet-18 width {config.model.width}, '
        f'{config.dtype} activations; generator {generator.kind} {generator.resolution} px, '
        f'z_dim {generator.z_dim}')
  print(f'{"method":<10} {"median step (s)":>16} {"peak memory (MiB)":>18} {"compilations":>13}')
  for name in seconds:
    print(f'{name:<10} {seconds[name]:>16.4f} {peak[name] / 2**20:>18.1f} {compiles[name]:>13}')
  for key, value in ratios.items():
    print(f'{key:<18} {value:.2f}')


def device_name() -> str:
  return f'{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})'


if __name__ == '__main__':
  # Flags only when run as a program: experiments.hypergrad imports `bench`.
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', 'configs/digits.py', 'Config file.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_integer('steps', 20, 'Timed steps per method.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
  flags.DEFINE_integer('num_classes', 10, 'Classes of the random data.')
  flags.DEFINE_enum('scale', 'config', ['config', 'paper'],
                    'config: the --config shapes; paper: ResNet-18 at 224 px, 64 + 64 per step.')
  flags.DEFINE_enum('generator', 'stylegan2', ['stylegan2', 'biggan'],
                    'G of --scale=paper: StyleGAN2-ADA 256 px or BigGAN-deep 128 px.')
  flags.DEFINE_list('variants', [v[0] for v in VARIANTS], 'Steps to time (of '
                    f'{",".join(v[0] for v in VARIANTS)}).')
  flags.DEFINE_bool('torch', False, 'Also run each step in PyTorch eager, interleaved, with a '
                    'BigGAN in both (experiments/bench_torch.py; --config shapes).')
  app.run(main)
