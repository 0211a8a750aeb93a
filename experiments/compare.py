"""Methods x seeds on one config, one generator, and a table of test accuracy (mean ± std).

  python -m experiments.compare --config=configs/digits.py --workdir=runs/digits \
      --methods=base,mgr [--seeds=0,1,2] [--config.data.fraction=0.1 ...]

Each (method, seed) run lives in <workdir>/<method>_seed<k> and resumes like `mgr_jax.main`
(finished runs are read, not retrained). Methods that use a generator share one: the
--config.generator.checkpoint given, or one trained on D once into <workdir>/generator.
The table is written to <workdir>/summary.json as well.
"""
import json
import os

from absl import flags
from ml_collections import config_flags

from experiments import runs
from experiments.summary import mean_std
from mgr_jax import cli
from mgr_jax.workdir import workdir_lock

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent directory of the runs.')
_METHODS = flags.DEFINE_list('methods', ['base', 'mgr'], 'Methods to compare.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Training seeds (the data split is fixed by data.seed).')
flags.mark_flags_as_required(['config', 'workdir'])


def summarize(results_by_method):
  """{method: [results]} -> rows of (method, n, mean, std) of test accuracy in %."""
  rows = []
  for method, results in results_by_method.items():
    mean, std = mean_std(100.0 * r['test_acc'] for r in results)
    rows.append({'method': method, 'runs': len(results), 'test_acc_mean': mean,
                 'test_acc_std': std, 'seeds': [r['seed'] for r in results]})
  return rows


def compare(config, workdir, methods, seeds):
  with workdir_lock(workdir):  # Two comparisons in one workdir would share runs half-done.
    return _compare(config, workdir, methods, seeds)


def _compare(config, workdir, methods, seeds):
  methods = runs.check_methods(methods)
  # One generator for every run: each run loads and checks it (obtain_generator).
  generator = runs.shared_generator(config, methods, workdir)
  jobs = [runs.Job(f'{method} seed {seed}', runs.run_config(config, method, seed, generator),
                   os.path.join(workdir, f'{method}_seed{seed}'))
          for method in methods for seed in seeds]
  results = {}
  for job, result in zip(jobs, runs.run_jobs(jobs)):
    results.setdefault(job.config.method, []).append(result)
  rows = summarize(results)
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump({'data': config.data.to_dict(), 'rows': rows}, f, indent=2, default=list)
  print(f'\n{config.data.source}, fraction {config.data.fraction}: test accuracy (%)')
  for row in rows:
    print(f'  {row["method"]:<16} {row["test_acc_mean"]:6.2f} ± {row["test_acc_std"]:.2f}  '
          f'({row["runs"]} seed{"s" if row["runs"] > 1 else ""})')
  return rows


def main():
  seeds = runs.parse_numbers(_SEEDS.value, int, 'seeds')
  compare(_CONFIG.value, os.path.abspath(_WORKDIR.value), _METHODS.value, seeds)


if __name__ == '__main__':
  cli.run(main)
