"""λ on D_val, the paper's protocol (§4.1): a grid over λ for PCR, chosen by validation
accuracy, then reused for PCR and MGR.

  python -m experiments.lambda_search --config=configs/digits.py --workdir=runs/study \
      [--lams=0.1,0.2,...,1.0] [--fractions=0.1,0.25,1.0] [--seeds=0] [--method=pcr]
  python -m experiments.study --config=configs/digits.py --workdir=runs/study \
      --lam=runs/study/lambda.json ...

For each fraction and λ, `--method` is trained with each seed in
<workdir>/f0.1/<method>_lam0.3_seed0 (resumable; finished runs are read), with the
fraction's own generator (<workdir>/generator_f0.1, the same one `experiments.study`
uses in the same workdir). The λ with the highest mean best D_val accuracy over the seeds
is chosen (the smaller λ on a tie); the test split is never looked at. Writes
<workdir>/lambda.json: the grid, every run's D_val accuracy and the choice per fraction.
"""
import os
import statistics

from absl import flags
from ml_collections import config_flags

from experiments import runs
from mgr_jax.workdir import atomic_write_json, workdir_lock

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the study.')
_LAMS = flags.DEFINE_list('lams', [f'{0.1 * i:.1f}' for i in range(1, 11)],
                          'The λ grid (the paper: 0.1 ... 1.0).')
_FRACTIONS = flags.DEFINE_list('fractions', None, 'Shares of D (default: data.fraction).')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Training seeds averaged per λ.')
_METHOD = flags.DEFINE_string('method', 'pcr', 'The method searched (the paper: PCR).')
flags.mark_flags_as_required(['config', 'workdir'])


def choose(val_acc_by_lam: dict) -> float:
  """The λ of the highest mean D_val accuracy; the smaller λ on a tie."""
  means = {lam: statistics.fmean(accs) for lam, accs in val_acc_by_lam.items()}
  return min(means, key=lambda lam: (-means[lam], lam))


def lambda_search(config, workdir, lams, fractions, seeds, method='pcr'):
  (method,) = runs.check_methods([method])
  os.makedirs(workdir, exist_ok=True)

  def make_jobs(fconfig, generator, parent):
    jobs = []
    for lam in lams:
      for seed in seeds:
        c = runs.run_config(fconfig, method, seed, generator)
        runs.set_lam(c, lam)
        jobs.append(runs.Job(f'{os.path.basename(parent)} {method} λ={lam:g} seed {seed}', c,
                             os.path.join(parent, f'{method}_lam{lam:g}_seed{seed}')))
    return jobs

  plans = runs.plan_fractions(config, workdir, fractions, [method], make_jobs)
  by_fraction = {}
  for plan, results in zip(plans, runs.run_fractions(plans, [method], 'λ search ',
                                                             'best_val_acc')):
    val_acc = {}
    for job, result in zip(plan.jobs, results):
      val_acc.setdefault(job.config.synth.lam, []).append(100.0 * result['best_val_acc'])
    lam, key = choose(val_acc), runs.fraction_key(plan.fraction)
    by_fraction[key] = {'lam': lam, 'val_acc': {f'{k:g}': v for k, v in val_acc.items()},
                        'val_acc_mean': {f'{k:g}': statistics.fmean(v)
                                         for k, v in val_acc.items()}}
    print(f'fraction {key}: λ = {lam:g} (mean D_val accuracy '
          f'{statistics.fmean(val_acc[lam]):.2f} %)', flush=True)
  out = {'method': method, 'criterion': 'highest mean best-epoch D_val accuracy over the '
         'seeds (smaller λ on a tie); test accuracy is not used',
         'grid': list(lams), 'seeds': list(seeds), 'by_fraction': by_fraction,
         'lam_by_fraction': {k: v['lam'] for k, v in by_fraction.items()},
         'config': config.to_dict()}
  path = os.path.join(workdir, runs.LAMBDA_FILE)
  atomic_write_json(path, out)
  print(f'Written: {path} (use it with experiments.study --lam={path})')
  return out


def main():
  config = _CONFIG.value
  fractions = (runs.parse_numbers(_FRACTIONS.value, float, 'fractions', 0.0, 1.0)
               if _FRACTIONS.value else [config.data.fraction])
  workdir = os.path.abspath(_WORKDIR.value)
  lams = runs.parse_numbers(_LAMS.value, float, 'lams', 0.0)
  seeds = runs.parse_numbers(_SEEDS.value, int, 'seeds')
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock(workdir):
    lambda_search(config, workdir, lams, fractions, seeds, _METHOD.value)


if __name__ == '__main__':
  from mgr_jax import cli
  cli.run(main)
