"""Where a step's time goes: XLA op times from jax.profiler, summed by part of the method.

  python -m experiments.profile_step --config=configs/digits.py [--variants=base,pcr,mgr_fd]
      [--profile_steps=5] [--top=0]

Compiles each step (base, pcr, mgr fd, mgr exact) at the config's shape with a random
StyleGAN2-ADA (as experiments.bench_step), runs `--profile_steps` steps under `jax.profiler.trace`
and attributes every XLA op's time (from the trace's op events) to a part by the JAX name
stack of the HLO instructions it runs:

  classifier      ResNet-18 forward and backward (every pass: real, synthetic, val, θ±)
  randaugment     T (mgr_jax.randaugment.apply_rand_augment), forward and backward
  generator       G (and the resize/normalise of its output), forward and backward
  finder          F_φ and its KL term
  rng             random draws (z, y_p, T's ops, crops)
  other           everything else: optimiser updates, the hypergradient's vector algebra,
                  BatchNorm glue fused outside the modules, copies

The last column is the time of the ops inside `mgr_jax.meta.hypergradient_with_aux` (the
inner step, ∇L_val(θ') and the θ± / JVP passes, whatever their part). Shares are of the
summed op time (on 2 cores two ops may run at once, so the sum can exceed the wall time).
`--top=N` also lists the N slowest ops of each step.
"""
import collections
import contextlib
import functools
import glob
import gzip
import json
import os
import re
import tempfile

import jax
import numpy as np
from absl import app, flags

from experiments.bench_step import VARIANTS, random_batch, random_stylegan2
from mgr_jax import host_memory, randaugment
from mgr_jax.methods import common, steps, views
from mgr_jax.train.setup import build_run

PARTS = ('classifier', 'randaugment', 'generator', 'finder', 'rng', 'other')
HYPERGRADIENT = 'mgr_hypergradient'


@contextlib.contextmanager
def named_parts():
  """Wraps T, G and the hypergradient in jax.named_scope: their HLO ops carry the name."""
  originals = (views.apply_rand_augment, common.StepContext.generate,
               common.StepContext.to_classifier_input, views.resize,
               randaugment.apply_rand_augment, steps.hypergradient_with_aux)

  def scoped(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      with jax.named_scope(name):
        return fn(*args, **kwargs)
    return wrapper
  views.apply_rand_augment = scoped('mgr_randaugment', originals[0])
  common.StepContext.generate = scoped('mgr_generator', originals[1])
  common.StepContext.to_classifier_input = scoped('mgr_generator', originals[2])
  views.resize = scoped('mgr_generator', originals[3])
  randaugment.apply_rand_augment = scoped('mgr_randaugment', originals[4])
  steps.hypergradient_with_aux = scoped(HYPERGRADIENT, originals[5])
  try:
    yield
  finally:
    (views.apply_rand_augment, common.StepContext.generate,
     common.StepContext.to_classifier_input, views.resize,
     randaugment.apply_rand_augment, steps.hypergradient_with_aux) = originals


def part_of(op_names):
  """The part of an HLO instruction (or fusion) from the op_names inside it."""
  text = ' '.join(op_names)
  if 'mgr_randaugment' in text:
    return 'randaugment'
  if 'mgr_generator' in text or 'Generator' in text or 'BigGAN' in text:
    return 'generator'
  if 'ResNet18' in text:
    return 'classifier'
  if 'Finder' in text or 'kl_penalty' in text:
    return 'finder'
  if re.search(r'_threefry|_randint|_normal|_uniform|_bernoulli|random_bits', text):
    return 'rng'
  return 'other'


def instruction_parts(hlo_text: str):
  """{instruction name: (part, in the hypergradient?)} for every instruction of the optimised
  HLO module."""
  comps, current = {}, None
  inst = {}
  for line in hlo_text.splitlines():
    m = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if m and not line.startswith(' '):
      current = m.group(1)
      comps[current] = []
      continue
    m = re.match(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^(]*\(([^)]*)\)', line)
    if m and current is not None:
      names = re.findall(r'op_name="([^"]*)"', line)
      calls = re.findall(r'calls=%?([\w.\-]+)', line)
      operands = re.findall(r'%([\w.\-]+)', m.group(2))
      comps[current].append(m.group(1))
      inst[m.group(1)] = (names, calls, operands)

  @functools.lru_cache(maxsize=None)
  def names_of(name):
    names, calls, _ = inst.get(name, ([], [], []))
    out = list(names)
    for c in calls:
      for sub in comps.get(c, []):
        out.extend(names_of(sub))
    return tuple(out)

  @functools.lru_cache(maxsize=None)
  def part(name, depth=0):
    """(part, inside the hypergradient?) by its own names; a nameless op (e.g. a custom
    fusion XLA built for a weight gradient) takes them from its first operand with a part."""
    names = names_of(name)
    if names or depth > 8:
      return part_of(names), any(HYPERGRADIENT in n for n in names)
    for operand in inst.get(name, ([], [], []))[2]:
      found = part(operand, depth + 1)
      if found[0] != 'other':
        return found
    return 'other', False
  return {name: part(name) for name in inst}


def op_times(trace_dir: str, steps: int):
  """{op name: µs per step} from the profiler's perfetto trace (XLA op events only)."""
  path = glob.glob(os.path.join(trace_dir, 'plugins/profile/*/perfetto_trace.json.gz'))[0]
  events = json.load(gzip.open(path))
  events = events['traceEvents'] if isinstance(events, dict) else events
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(('$', 'ThunkExecutor', 'Pjit',
                                                        'CommonPjRt', 'PjRt')):
      totals[e['name']] += e['dur'] / steps
  return totals


def profile(config, method, mode, generator, batch, steps_, num_classes=10):
  """({part: µs per step}, µs per step inside the hypergradient, {op: µs per step},
  {op: (part, in hypergradient)}) of one method's compiled step."""
  config = config.copy_and_resolve_references()
  config.method, config.meta.hypergrad = method, mode
  run = build_run(config, num_classes, 1000 * config.batch_size, generator)
  args = (run.state, run.shard_batch(batch), jax.random.PRNGKey(0), run.gen_vars)
  with named_parts():
    compiled = run.jit_step().lower(*args).compile()
  parts = instruction_parts(compiled.as_text())
  state = run.state
  for _ in range(3):
    state, metrics = compiled(state, *args[1:])
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps_):
        state, metrics = compiled(state, *args[1:])
        jax.block_until_ready(metrics)
    times = op_times(tmp, steps_)
  by_part, hyper = collections.Counter(), 0.0
  for op, us in times.items():
    part, in_hyper = parts.get(op, ('other', False))
    by_part[part] += us
    hyper += us if in_hyper else 0.0
  return by_part, hyper, times, parts


def main(argv):
  del argv
  host_memory.reuse_step_buffers()  # As the entry points run steps (mgr_jax.cli).
  config, num_classes = FLAGS.config, FLAGS.num_classes
  batch = random_batch(config, num_classes)
  generator = random_stylegan2(config.generator, num_classes)
  print(f'{"step":<10}' + ''.join(f'{p:>14}' for p in PARTS) + f'{"sum ms":>9}'
        + f'{"hypergradient":>16}')
  for name, method, mode in VARIANTS:
    if name not in FLAGS.variants:
      continue
    step_batch = batch if method == 'mgr' else {k: batch[k] for k in ('image', 'label')}
    by_part, hyper, times, parts = profile(config, method, mode, generator, step_batch,
                                           FLAGS.profile_steps, num_classes)
    total = sum(by_part.values())
    print(f'{name:<10}' + ''.join(f'{by_part[p] / 1e3:>7.1f} ({100 * by_part[p] / total:>3.0f}%)'
                                  for p in PARTS) + f'{total / 1e3:>9.1f}'
          + f'{hyper / 1e3:>8.1f} ({100 * hyper / total:>3.0f}%)', flush=True)
    for op, us in times.most_common(FLAGS.top):
      print(f'    {us / 1e3:8.2f} ms  {parts.get(op, ("?",))[0]:<12} {op}')


if __name__ == '__main__':
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', 'configs/digits.py', 'Config file.')
  flags.DEFINE_list('variants', 'base,pcr,mgr_fd,mgr_exact', 'Steps to profile.')
  flags.DEFINE_integer('profile_steps', 5, 'Profiled steps (after 3 untimed ones).')
  flags.DEFINE_integer('top', 0, 'List the N slowest ops of each step.')
  flags.DEFINE_integer('num_classes', 10, 'Classes of the random data.')
  app.run(main)
