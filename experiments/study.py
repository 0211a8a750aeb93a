"""The reduced-data study (the paper's Table 1b): methods x fractions of D x seeds.

  python -m experiments.study --config=configs/digits.py --workdir=runs/study \
      --methods=base,gda,pcr,mgr --fractions=0.1,0.25,1.0 --seeds=0,1,2,3,4 \
      [--augment=none,cutmix] [--lam=0.3 | --lam=runs/study/lambda.json] [--config.key=value ...]

`--methods` also takes the named rows of the other tables (`experiments/rows.py`: mgr_nokl,
mgr_generator, mgr_latent, pcr_multimodal, ...), and `--augment` crosses every row with
`data.augment` values (Table 3: base+cutmix next to mgr+cutmix).

The paper's protocol: for each fraction, one generator trained on that fraction's D only
(<workdir>/generator_f0.1/generator), shared by the fraction's methods and seeds; D_val and
test are the same for every fraction. Each run is a resumable workdir
<workdir>/f0.1/<method>_seed<k> (`mgr_jax.train.loop.train_and_evaluate`): rerunning the
command resumes an interrupted run and reads finished ones. `--lam` sets λ of the
`--lam_methods` (default pcr, mgr): a number, or the lambda.json of
`python -m experiments.lambda_search` (the λ it chose on D_val for each fraction).

Writes <workdir>/summary.json (every run's numbers, per cell mean ± std and the paired
difference to base with a 95 % t interval), summary.md (the table, paper style) and
accuracy_vs_fraction.png.
"""
import os

from absl import flags
from ml_collections import config_flags

from experiments import rows as rows_lib
from experiments import runs, summary
from mgr_jax.workdir import atomic_write_json, workdir_lock

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the study.')
_METHODS = flags.DEFINE_list('methods', ['base', 'gda', 'pcr', 'mgr'],
                             'Methods and named rows (experiments/rows.py).')
_AUGMENT = flags.DEFINE_list('augment', ['none'], 'data.augment values crossed with --methods.')
_FRACTIONS = flags.DEFINE_list('fractions', ['0.1', '0.25', '1.0'], 'Shares of D (0, 1].')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Training seeds.')
_LAM = flags.DEFINE_string('lam', '', 'λ of --lam_methods: a number or a lambda.json '
                           '(default: the config\'s synth.lam).')
_LAM_METHODS = flags.DEFINE_list('lam_methods', ['pcr', 'mgr'], 'Methods that --lam sets.')
_FINISHED_ONLY = flags.DEFINE_bool(
    'finished_only', False, 'Train nothing: summarise the runs that have finished (a study '
    'still running elsewhere, or one stopped early); each cell shows its n.')
flags.mark_flags_as_required(['config', 'workdir'])


def study(config, workdir, methods, fractions, seeds, lam_spec='', lam_methods=('pcr', 'mgr'),
          finished_only=False, augments=('none',)):
  study_rows = rows_lib.expand(methods, augments)
  labels = [r.label for r in study_rows]
  methods = list(dict.fromkeys(r.method for r in study_rows))  # What the runs train.
  row_of = {}  # run workdir -> its row's label
  lam = runs.read_lam(lam_spec, fractions) if lam_spec else None
  if config.generator.checkpoint and len(fractions) > 1 and runs.uses_generator(methods):
    print('Note: --config.generator.checkpoint is shared by every fraction; the paper trains '
          'one generator per fraction on that fraction\'s D only.', flush=True)

  def make_jobs(fconfig, generator, parent):
    jobs = []
    for row in study_rows:
      for seed in seeds:
        c = runs.run_config(fconfig, row.method, seed, generator)
        rows_lib.apply_overrides(c, row.overrides)
        if lam and row.method in lam_methods:
          runs.set_lam(c, lam[runs.fraction_key(fconfig.data.fraction)])
        run_dir = os.path.join(parent, f'{row.dirname}_seed{seed}')
        row_of[run_dir] = row.label
        jobs.append(runs.Job(f'{os.path.basename(parent)} {row.label} seed {seed}', c, run_dir))
    return jobs

  os.makedirs(workdir, exist_ok=True)
  plans = runs.plan_fractions(config, workdir, fractions, methods, make_jobs)
  if finished_only:
    for plan in plans:
      plan.jobs = [job for job in plan.jobs if job.finished]
    print(f'Summarising the {sum(len(p.jobs) for p in plans)} finished runs '
          '(--finished_only: nothing is trained).', flush=True)
  records = []
  for plan, results in zip(plans, runs.run_fractions(plans, methods)):
    for job, result in zip(plan.jobs, results):
      records.append({'method': row_of[job.workdir], 'trained_method': job.config.method,
                      'fraction': runs.fraction_key(plan.fraction),
                      'seed': job.config.seed, 'workdir': job.workdir,
                      'lam': job.config.synth.lam, 'test_acc': result['test_acc'],
                      'best_val_acc': result['best_val_acc'],
                      'best_epoch': result['best_epoch'],
                      'wall_seconds': result['wall_seconds']})
  generators = {runs.fraction_key(p.fraction): p.generator for p in plans}
  return write_summary(config, workdir, labels, fractions, seeds, records,
                       {'spec': lam_spec, 'by_fraction': lam, 'methods': list(lam_methods)}
                       if lam else None, generators)


def write_summary(config, workdir, methods, fractions, seeds, records, lam, generators):
  keys = [runs.fraction_key(f) for f in fractions]
  accs = {}
  for r in records:
    accs.setdefault(r['method'], {}).setdefault(r['fraction'], {})[r['seed']] = (
        100.0 * r['test_acc'])
  cells = summary.study_cells(accs)
  title = (f'{config.data.source}: test accuracy by share of D '
           f'({len(seeds)} seed{"s" if len(seeds) > 1 else ""})')
  table = summary.markdown(cells, methods, keys, title)
  out = {'data_source': config.data.source, 'methods': methods, 'fractions': keys,
         'seeds': seeds, 'lam': lam, 'generators': generators, 'cells': cells,
         'runs': records, 'config': config.to_dict()}
  atomic_write_json(os.path.join(workdir, 'summary.json'), out)
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(table)
  summary.plot_accuracy_vs_fraction(cells, methods, keys,
                                    os.path.join(workdir, 'accuracy_vs_fraction.png'), title)
  print('\n' + table)
  print(f'Written: {workdir}/summary.json, summary.md, accuracy_vs_fraction.png')
  return out


def main():
  workdir = os.path.abspath(_WORKDIR.value)
  args = (runs.parse_numbers(_FRACTIONS.value, float, 'fractions', 0.0, 1.0),
          runs.parse_numbers(_SEEDS.value, int, 'seeds'), _LAM.value,
          runs.check_methods(_LAM_METHODS.value))
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock(workdir):  # Two studies in one workdir would share half-done runs.
    study(_CONFIG.value, workdir, _METHODS.value, *args, finished_only=_FINISHED_ONLY.value,
          augments=_AUGMENT.value)


if __name__ == '__main__':
  from mgr_jax import cli
  cli.run(main)
