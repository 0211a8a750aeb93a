"""Exact vs finite-difference hypergradients (the paper's Table 4, and beyond it).

  python -m experiments.hypergrad --config=configs/digits.py --workdir=runs/hypergrad \
      [--seeds=0,1,2] [--every=50] [--radii=1e-1,1e-2,1e-3,1e-4,1e-5] [--config.key=value ...]

1. `mgr` trained with `fd` and with `exact` for each seed (<workdir>/{fd,exact}_seed<k>,
   resumable; one generator for all, <workdir>/generator): test accuracy mean ± std and wall
   time of training.
2. One step of each, timed after compilation (median seconds per step) with XLA's peak
   memory estimate of the compiled step (`experiments.bench_step`), on random data of the
   run's shape and the trained generator.
3. Agreement: one more `fd` run (<workdir>/agreement_seed<k>, the first seed; its wall time
   is not used) is stopped every `--every` steps to compute, on its state, batch and random
   draws of that step, the exact hypergradient and the `fd` one at each radius r, in float32
   and in float64: cosine similarity and relative error ||h_fd − h_exact|| / ||h_exact||.
   In float64 the classifier, the finder and the hypergradient arithmetic run in float64;
   the frozen StyleGAN2 generator computes in float32 (its code casts to it), which only
   limits the float64 agreement to about 1e-7.

Writes <workdir>/hypergrad.json and <workdir>/hypergrad_agreement.png.
"""
import functools
import json
import os
import statistics

import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import plots, runs
from experiments.summary import mean_std
from mgr_jax.errors import UserError
from mgr_jax.workdir import append_jsonl, atomic_write_json, workdir_lock

MODES = ('fd', 'exact')
DTYPES = ('float32', 'float64')
AGREEMENT_FILE = 'agreement.jsonl'

FLAGS = flags.FLAGS


def _define_flags():
  """Only when run as a program: tests import this module's functions."""
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory of the experiment.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds.')
  flags.DEFINE_integer('every', 50, 'Steps between two agreement measurements.')
  flags.DEFINE_list('radii', ['1e-1', '1e-2', '1e-3', '1e-4', '1e-5'],
                    'Radii r of the fd hypergradient (ε = r / ||v||).')
  flags.DEFINE_list('dtypes', list(DTYPES), 'Precisions of the agreement.')
  flags.DEFINE_integer('bench_steps', 20, 'Timed steps per mode.')
  flags.mark_flags_as_required(['config', 'workdir'])



def _hypergrad_at(state, batch, rng, gen_vars, radius, *, ctx, term, mode):
  """The meta step's hypergradient at `state` (same batch and draws as the step)."""
  from mgr_jax.meta import hypergradient_with_aux
  from mgr_jax.methods.steps import meta_problem
  p = meta_problem(state, batch, rng, gen_vars, ctx=ctx, term=term)
  return hypergradient_with_aux(p.synthetic_loss, p.val_loss, state.params, state.finder_params,
                                p.inner_lr, mode, theta_grad_fixed=p.ce_grad,
                                fd_radius=radius).hypergrad


def _to_float64(tree):
  import jax
  import jax.numpy as jnp
  return jax.tree.map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class AgreementProbe:
  """`on_step` hook of `train_and_evaluate`: every `every` steps, one row of agreement per
  dtype into <workdir>/agreement.jsonl. On resume the replayed steps are measured again;
  `read_rows` keeps the last row of each step."""

  def __init__(self, path: str, every: int, radii, dtypes=DTYPES):
    self.path, self.every, self.radii, self.dtypes = path, every, list(radii), list(dtypes)
    self.done = {r['step'] for r in read_rows(path)}
    self._fn = None

  def __call__(self, step, state, batch, rng, run):
    import jax
    from mgr_jax.meta import compare_fd_with_exact
    if step % self.every or step in self.done:
      return
    if self._fn is None:  # One compilation per mode and dtype; r is traced.
      term = run.method.step.keywords['term']  # The method's regulariser (PCR for mgr).
      self._fn = jax.jit(functools.partial(_hypergrad_at, ctx=run.ctx, term=term),
                         static_argnames='mode')
    sharded = run.shard_batch(batch)
    row = {'step': step, 'lr': float(run.ctx.classifier.lr_schedule(step))}
    for dtype in self.dtypes:
      with jax.enable_x64(dtype == 'float64'):
        st, gen_vars = ((state, run.gen_vars) if dtype == 'float32' else
                        (_to_float64(state), _to_float64(run.gen_vars)))
        row[dtype] = compare_fd_with_exact(
            lambda mode, r: self._fn(st, sharded, rng, gen_vars, np.asarray(r, dtype),
                                     mode=mode), self.radii)
    append_jsonl(self.path, row)
    self.done.add(step)
    k = self.radii.index(0.01) if 0.01 in self.radii else 0
    print(f'  agreement at step {step}, r = {self.radii[k]:g}: ' + ', '.join(
        f'{d} cosine {row[d]["cosine"][k]:.6f} relative error {row[d]["rel_error"][k]:.2e}'
        for d in self.dtypes), flush=True)


def read_rows(path: str):
  """The agreement rows of a run, one per step (the last written), by step."""
  if not os.path.exists(path):
    return []
  rows = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows[row['step']] = row
  return [rows[s] for s in sorted(rows)]


def informative(rows, dtypes):
  """The rows where the exact hypergradient is not 0 in every dtype. With synth.lam_warmup the
  synthetic term has weight 0 at step 0, both hypergradients are exactly 0 there, and cosine
  and error say nothing."""
  return [r for r in rows if all(r[d]['exact_norm'] > 0 for d in dtypes)]


def summarize_agreement(rows, radii, dtypes) -> dict:
  """Per dtype and radius: median, min and max over the measurements of cosine and error."""
  out = {}
  for dtype in dtypes:
    per = {}
    for key in ('cosine', 'rel_error'):
      values = np.array([r[dtype][key] for r in rows])  # [measurements, radii]
      per[key] = {'median': np.median(values, 0).tolist(), 'min': values.min(0).tolist(),
                  'max': values.max(0).tolist()}
    out[dtype] = per
  return {'radii': list(radii), 'dtypes': list(dtypes), 'measurements': len(rows), **out}


def plot_agreement(rows, radii, dtypes, default_radius: float, path: str) -> str:
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  steps = [r['step'] for r in rows]
  k = radii.index(default_radius) if default_radius in radii else 0
  styles = {'float32': '-', 'float64': '--'}
  for dtype in dtypes:
    axes[0].semilogy(steps, [r[dtype]['rel_error'][k] for r in rows], styles[dtype],
                     marker='.', label=dtype)
    axes[1].semilogy(steps, [max(1.0 - r[dtype]['cosine'][k], 1e-17) for r in rows],
                     styles[dtype], marker='.', label=dtype)
    errors = np.array([r[dtype]['rel_error'] for r in rows])
    axes[2].loglog(radii, np.median(errors, 0), styles[dtype], marker='o',
                   label=f'{dtype} (median)')
    axes[2].fill_between(radii, errors.min(0), errors.max(0), alpha=0.2)
  axes[0].set(title=f'relative error over training (r = {radii[k]:g})', xlabel='step',
              ylabel='||h_fd − h_exact|| / ||h_exact||')
  axes[1].set(title=f'1 − cosine over training (r = {radii[k]:g})', xlabel='step',
              ylabel='1 − cos(h_fd, h_exact)')
  axes[2].set(title=f'relative error against r ({len(rows)} measurements)',
              xlabel='radius r (ε = r / ||v||)', ylabel='relative error')
  for ax in axes:
    ax.grid(alpha=0.3, which='both')
    ax.legend()
  return plots.save(fig, path)


def hypergrad_study(config, workdir, seeds, every, radii, dtypes=DTYPES, bench_steps=20):
  from mgr_jax.data import load_splits
  from mgr_jax.generators import load as load_generator
  from experiments.bench_step import bench, device_name, random_batch
  if every <= 0:
    raise UserError(f'--every={every} must be positive.')
  os.makedirs(workdir, exist_ok=True)
  generator = runs.generator_dir(config, ['mgr'], workdir)

  def job(mode, seed, name, on_step=None):
    c = runs.run_config(config, 'mgr', seed, generator)
    c.meta.hypergrad = mode
    return runs.Job(f'mgr {mode} seed {seed}' + (' (agreement)' if on_step else ''), c,
                    os.path.join(workdir, f'{name}_seed{seed}'), on_step)

  probe_dir = os.path.join(workdir, f'agreement_seed{seeds[0]}')
  unknown = [d for d in dtypes if d not in DTYPES]
  if unknown or not dtypes:
    raise UserError(f'--dtypes={",".join(dtypes)}: choose from {DTYPES}.')
  probe = AgreementProbe(os.path.join(probe_dir, AGREEMENT_FILE), every, radii, dtypes)
  modes = [mode for mode in MODES for _ in seeds]
  jobs = [job(mode, seed, mode) for mode in MODES for seed in seeds]
  jobs.append(job('fd', seeds[0], 'agreement', probe))
  if not all(j.finished for j in jobs):
    runs.shared_generator(config, ['mgr'], workdir)
  results = runs.run_jobs(jobs)[:len(modes)]  # The agreement run's results are not used.

  table = {}
  for mode in MODES:
    mine = [r for m, r in zip(modes, results) if m == mode]
    accs = [100.0 * r['test_acc'] for r in mine]
    walls = [r['wall_seconds'] for r in mine]
    mean, std = mean_std(accs)
    table[mode] = {'test_acc': accs, 'test_acc_mean': mean, 'test_acc_std': std,
                   'wall_seconds': walls, 'wall_seconds_mean': statistics.fmean(walls)}

  print('Timing one step of each mode (random data of the run\'s shape, the trained '
        'generator)...', flush=True)
  splits = load_splits(config.data)
  batch = random_batch(config, splits.num_classes)
  gen = load_generator(generator)
  for mode in MODES:
    seconds, peak, _ = bench(config, 'mgr', mode, gen, batch, splits.num_classes, bench_steps,
                             num_train=len(splits.train))
    table[mode].update(median_step_seconds=seconds, peak_bytes=peak)

  all_rows = read_rows(probe.path)
  rows = informative(all_rows, dtypes)
  if not rows:
    raise UserError(f'No agreement measurements with a non-zero exact hypergradient in '
                    f'{probe.path} ({len(all_rows)} rows): the run has fewer than --every={every} '
                    'steps after the λ warm-up, or its measurements were deleted.')
  default_r = config.meta.fd_radius
  out = {'device': device_name(), 'seeds': list(seeds), 'modes': table,
         'agreement': {'every': every, 'default_radius': default_r, 'run': probe_dir,
                       'summary': summarize_agreement(rows, radii, dtypes), 'rows': all_rows},
         'config': config.to_dict()}
  atomic_write_json(os.path.join(workdir, 'hypergrad.json'), out)
  plot_agreement(rows, list(radii), dtypes, default_r,
                 os.path.join(workdir, 'hypergrad_agreement.png'))
  print_table(out)
  return out


def print_table(out):
  print(f'\nmgr, fd vs exact ({len(out["seeds"])} seeds; {out["device"]})')
  print(f'{"mode":<6} {"test acc (%)":>16} {"s/step":>8} {"peak MiB":>9} {"wall s":>8}')
  for mode, t in out['modes'].items():
    print(f'{mode:<6} {t["test_acc_mean"]:>8.2f} ± {t["test_acc_std"]:<5.2f} '
          f'{t["median_step_seconds"]:>8.4f} {t["peak_bytes"] / 2**20:>9.1f} '
          f'{t["wall_seconds_mean"]:>8.1f}')
  s = out['agreement']['summary']
  print(f'\nagreement of fd with exact over {s["measurements"]} measurements (median):')
  dtypes = s['dtypes']
  print(f'{"r":>8} ' + ' '.join(f'{d + " cos":>14} {d + " rel.err":>14}' for d in dtypes))
  for i, r in enumerate(s['radii']):
    print(f'{r:>8g} ' + ' '.join(f'{s[d]["cosine"]["median"][i]:>14.9f} '
                                 f'{s[d]["rel_error"]["median"][i]:>14.3e}' for d in dtypes))


def main():
  workdir = os.path.abspath(FLAGS.workdir)
  args = (runs.parse_numbers(FLAGS.seeds, int, 'seeds'), FLAGS.every,
          runs.parse_numbers(FLAGS.radii, float, 'radii', 0.0), FLAGS.dtypes, FLAGS.bench_steps)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock(workdir):
    hypergrad_study(FLAGS.config, workdir, *args)


if __name__ == '__main__':
  _define_flags()
  from mgr_jax import cli
  cli.run(main)
