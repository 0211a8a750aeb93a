"""Our steps next to the same steps in PyTorch eager, timed interleaved in one run.

  python -m experiments.bench_torch --config=configs/digits.py [--steps=20] [--json]
  python -m experiments.bench_step --config=configs/digits.py --torch     (the same)

For base, pcr, mgr (fd) and mgr (exact): builds our step and `experiments/torch_step.py`'s
(ResNet-18 as torchvision builds it with the config's width and stem; the same random
pytorch-pretrained-biggan BigGAN in both frameworks, at the classifier's resolution; our
RandAugment, all 14 ops, ported to torch), loads our initial weights into torch, and
1. checks equal math: one step of each with the same weights, batch and random draws (z, y_p,
   RandAugment ops, crops), printing the largest relative difference of the step's losses;
2. times `--steps` steps of each after `--warmup` rounds, JAX and torch taking turns (so that
   load from other processes hits both alike) in blocks of `--block` consecutive steps, each
   block after an untimed step (`experiments/interleave.py`: a step right after the other
   framework's pays for the switch, JAX's more than torch's; training runs steps back to
   back), torch at its default thread count and at 1 thread (`--torch_threads`); medians, and
   the ratio JAX / fastest torch with its 95 % bootstrap interval over the paired steps of the
   rounds (`ratio_interval`): a ratio whose interval spans 1 is level with torch on this run,
   not faster or slower.
JAX's compile time (trace + XLA) is printed too. torch needs requirements-test.txt.
"""
import json
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from scipy import stats

from experiments import interleave
from experiments.bench_step import VARIANTS, select_variants
from mgr_jax import host_memory
from mgr_jax.train.setup import build_run

CHECKED = ('loss', 'synthetic', 'val_loss_inner', 'kl')


def _batch(config, num_classes):
  n, size, nv = config.batch_size, config.data.image_size, config.meta.val_batch_size
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          'label': rng.integers(0, num_classes, n).astype(np.int32),
          'val_image': rng.integers(0, 256, (nv, size, size, 3), dtype=np.uint8),
          'val_label': rng.integers(0, num_classes, nv).astype(np.int32)}


def ratio_interval(jax_s, torch_s, confidence: float = 0.95, seed: int = 0):
  """(low, high): percentile bootstrap interval of median(jax_s) / median(torch_s), resampling
  the steps in pairs (JAX's and torch's k-th timed steps ran in the same round, in the same
  place of their blocks, under about the same load from the rest of the machine)."""
  result = stats.bootstrap((np.asarray(jax_s), np.asarray(torch_s)),
                           lambda a, b, axis: np.median(a, axis) / np.median(b, axis),
                           paired=True, confidence_level=confidence, method='percentile',
                           n_resamples=2000, rng=np.random.default_rng(seed))
  return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare(config, num_classes: int, steps: int, warmup: int, gan_width: int = 8,
            threads=(2, 1), gan_resolution: int = 0, device: str = 'cpu',
            variants=tuple(v[0] for v in VARIANTS), block: int = interleave.BLOCK):
  """{variant: {...}}: JAX and torch median seconds, compile seconds, loss agreement.

  torch is timed at each of `threads` (torch.set_num_threads); the ratio is against the
  fastest. (On a loaded 2-core machine torch's OpenMP with 2 threads can be 10x slower than
  with 1; JAX's thread pool is left as it is.) `gan_resolution`: the BigGAN's output size (0:
  the classifier's; else its output is resized as in our views). `device`: torch's ('cuda'
  on a GPU machine; JAX uses its default backend).
  """
  import torch
  from experiments import torch_step
  chosen = select_variants(variants)  # First: a bad name fails before anything is built.
  size = config.data.image_size
  gan_config = torch_step.bench_biggan_config(gan_resolution or size, num_classes,
                                              config.generator.z_dim, gan_width)
  torch_gen, jax_gen = torch_step.random_biggan(gan_config)  # Built on the CPU...
  torch_gen = torch_gen.to(device)
  if device != 'cpu':
    torch.set_default_device(device)  # ...everything after on `device`.
  sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
  full = _batch(config, num_classes)
  out = {}
  for name, method, mode in chosen:
    c = config.copy_and_resolve_references()
    c.method, c.meta.hypergrad = method, mode
    c.synth.lam_warmup = 0.0  # Full λ from the first step (the warm-up would make it ~0).
    batch = full if method == 'mgr' else {k: full[k] for k in ('image', 'label')}
    run = build_run(c, num_classes, 1000 * c.batch_size, jax_gen)  # lr constant throughout.
    ref = torch_step.TorchSteps(run.ctx, num_classes, c.model.width, c.model.small_stem,
                                torch_gen if method != 'base' else None,
                                weight_decay=c.weight_decay, momentum=c.momentum,
                                finder_lr=c.meta.finder.lr)
    ref.load_jax_state(run.state)
    rng = jax.random.PRNGKey(0)
    args = (run.state, run.shard_batch(batch), rng, run.gen_vars)
    start = time.perf_counter()
    lowered = run.jit_step().lower(*args)
    traced = time.perf_counter()
    step = lowered.compile()
    compiled = time.perf_counter()
    draws, real01 = torch_step.jax_draws(run.state, batch, rng, run.ctx, method, device)
    tbatch = torch_step.to_torch(batch, device)

    # 1. Equal math: the first step of both from the same weights and draws.
    state, jm = step(run.state, args[1], rng, run.gen_vars)
    torch.set_num_threads(min(threads))  # One fixed summation order for the check.
    tm = ref.step(name, tbatch, draws, real01)
    agreement = {k: abs(float(jm[k]) - float(tm[k])) / max(abs(float(jm[k])), 1e-12)
                 for k in CHECKED if k in tm}

    # 2. Timing: JAX and torch at each thread count in rotating blocks (experiments/interleave.py).
    def jax_step():
      nonlocal state, jm
      state, jm = step(state, args[1], rng, run.gen_vars)
      jax.block_until_ready((state, jm))

    def torch_call():  # At the thread count `set_threads` chose for this turn.
      ref.step(name, tbatch)
      sync()

    thread_count = {f'torch{t}': t for t in threads}
    runners = {'jax': jax_step, **{which: torch_call for which in thread_count}}

    def set_threads(which):
      if which in thread_count:
        torch.set_num_threads(thread_count[which])

    times = interleave.time_in_blocks(runners, steps, warmup, block, before=set_threads)
    med = {r: statistics.median(v) for r, v in times.items()}
    best = min((med[f'torch{t}'], t) for t in threads)
    out[name] = {'jax_s': med['jax'], 'torch_s': {t: med[f'torch{t}'] for t in threads},
                 'torch_best_s': best[0], 'torch_best_threads': best[1],
                 'ratio': med['jax'] / best[0],
                 'ratio_interval': ratio_interval(times['jax'], times[f'torch{best[1]}']),
                 'trace_s': traced - start, 'compile_s': compiled - traced,
                 'max_rel_loss_diff': max(agreement.values()), 'loss_diffs': agreement}
    low, high = out[name]['ratio_interval']
    print(f'{name}: JAX {med["jax"]:.4f} s, torch {best[0]:.4f} s, ratio '
          f'{out[name]["ratio"]:.2f} ({low:.2f}-{high:.2f})', file=sys.stderr,
          flush=True)  # Progress on long runs.
  return out, gan_config


def run(config, steps: int = 20, warmup: int = 1, num_classes: int = 10, as_json: bool = False,
        gan_width: int = 8, threads=None, gan_resolution: int = 0, device: str = 'cpu',
        variants=tuple(v[0] for v in VARIANTS), block: int = interleave.BLOCK):
  import torch
  threads = tuple(threads or sorted({torch.get_num_threads(), 1}, reverse=True))
  results, gan = compare(config, num_classes, steps, warmup, gan_width, threads,
                         gan_resolution, device, variants, block)
  jax_device = f'{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})'
  if as_json:
    print(json.dumps({'results': results, 'device': jax_device, 'torch_device': device,
                      'torch': torch.__version__, 'jax': jax.__version__}))
    return results
  torch_device = torch.cuda.get_device_name() if device.startswith('cuda') else device
  print(f'JAX on {jax_device}, torch on {torch_device}; jax {jax.__version__}, torch '
        f'{torch.__version__}; {steps} steps each (rounded up to blocks), in rotating blocks of '
        f'{block} consecutive steps after an untimed one (JAX, torch at each thread count)')
  print(f'batch {config.batch_size} real + {config.synth.batch_size} synthetic at '
        f'{config.data.image_size} px; ResNet-18 width {config.model.width}'
        f'{" small stem" if config.model.small_stem else ""}; BigGAN '
        f'{gan["output_dim"]} px, channel_width {gan["channel_width"]}, z {gan["z_dim"]}')
  torch_cols = ''.join(f'{f"torch {t}T s":>11}' for t in threads)
  print(f'{"step":<10} {"JAX s":>8}{torch_cols} {"JAX/torch":>10} {"95 % interval":>14} '
        f'{"JAX compile s":>14} {"loss rel diff":>14}')
  for name, r in results.items():
    cols = ''.join(f'{r["torch_s"][t]:>11.4f}' for t in threads)
    interval = '{:.2f}-{:.2f}'.format(*r['ratio_interval'])
    print(f'{name:<10} {r["jax_s"]:>8.4f}{cols} {r["ratio"]:>10.2f} {interval:>14} '
          f'{r["trace_s"] + r["compile_s"]:>14.1f} {r["max_rel_loss_diff"]:>14.1e}')
  print('JAX/torch: against the fastest torch column, with its 95 % bootstrap interval over '
        'the paired steps. loss rel diff: the largest relative difference of the first '
        'step\'s losses (same weights, batch and draws).')
  return results


def main(argv):
  del argv
  host_memory.reuse_step_buffers()  # As the entry points run steps (mgr_jax.cli).
  f = flags.FLAGS
  run(f.config, f.steps, f.warmup, f.num_classes, f.json, f.biggan_channel_width,
      [int(t) for t in f.torch_threads], f.gan_resolution, f.torch_device, f.variants, f.block)


if __name__ == '__main__':
  # Flags only when run as a program: experiments.bench_step --torch imports this module.
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', 'configs/digits.py', 'Config file.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_integer('steps', 20, 'Timed steps per method and framework.')
  flags.DEFINE_integer('warmup', 1, 'Untimed rounds after compilation (each: 1 + block steps '
                       'of every column).')
  flags.DEFINE_integer('block', interleave.BLOCK,
                       'Timed consecutive steps per turn (after an untimed one).')
  flags.DEFINE_integer('num_classes', 10, 'Classes of the random data.')
  flags.DEFINE_integer('biggan_channel_width', 8, 'BigGAN channel_width (16 x this at 4 px).')
  flags.DEFINE_list('torch_threads', [], 'torch thread counts to time (default: torch\'s '
                    'default and 1).')
  flags.DEFINE_integer('gan_resolution', 0, 'BigGAN output size (0: data.image_size).')
  flags.DEFINE_list('variants', [v[0] for v in VARIANTS], 'Steps to compare.')
  flags.DEFINE_string('torch_device', 'cpu', "torch's device: cpu, or cuda on a GPU machine.")
  app.run(main)
