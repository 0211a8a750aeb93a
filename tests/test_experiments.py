"""experiments.study, lambda_search, hypergrad and figures end to end on digits, tiny.

The runs share one persistent compilation cache and use settings under which every
fraction compiles the same programs: a batch of 160 gives both fractions (0.25: 324
images, 0.3: 387) two steps per epoch, so the learning-rate schedule, a constant of the
step, is the same; `hypergrad`'s fd step is then the study's mgr step. Generators are
random tiny StyleGAN2s put where the study would train them (GAN training is tested in
test_gan_training.py).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_overrides
from test_cli import _tiny_stylegan2_dir

FRACTIONS = ('0.25', '0.3')
SEEDS = (0, 1)


def _overrides():
  extra = {'num_epochs': 1, 'batch_size': 160, 'synth.batch_size': 8,
           'meta.val_batch_size': 8}
  return [o for o in tiny_overrides(**extra) if not o.startswith('--config.data.fraction')]


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp('jax_cache')
  # XLA_FLAGS (the backend optimisation level) come from conftest.py.
  return dict(os.environ, MGR_JAX_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')


def _run(env, module, *args, check=True):
  proc = subprocess.run([sys.executable, '-m', f'experiments.{module}',
                         '--config=configs/digits.py', *args, *_overrides()],
                        cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _place_generators(workdir):
  for f in FRACTIONS:
    _tiny_stylegan2_dir(workdir / f'generator_f{f}' / 'generator')


def _results(path):
  return json.load(open(os.path.join(path, 'results.json')))


def _assert_png(path):
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size[0] > 100 and im.size[1] > 100
    im.verify()


@pytest.fixture(scope='module')
def study(tmp_path_factory, env):
  workdir = tmp_path_factory.mktemp('study')
  _place_generators(workdir)
  proc = _run(env, 'study', f'--workdir={workdir}', '--methods=base,mgr',
              f'--fractions={",".join(FRACTIONS)}', f'--seeds={",".join(map(str, SEEDS))}')
  return workdir, proc


def test_study_summary_equals_the_runs_results(study):
  from scipy import stats
  workdir, proc = study
  summary = json.load(open(workdir / 'summary.json'))
  assert summary['fractions'] == list(FRACTIONS) and summary['methods'] == ['base', 'mgr']
  assert len(summary['cells']) == 4 and len(summary['runs']) == 8
  accs = {}
  for cell in summary['cells']:
    runs = [workdir / f'f{cell["fraction"]}' / f'{cell["method"]}_seed{s}' for s in SEEDS]
    expected = [100.0 * _results(r)['test_acc'] for r in runs]
    assert cell['seeds'] == list(SEEDS) and cell['test_acc'] == expected
    assert cell['mean'] == statistics.fmean(expected)
    assert cell['std'] == statistics.stdev(expected)
    accs[cell['method'], cell['fraction']] = expected
    for r in runs:  # Each fraction's runs: that fraction's D and its own generator.
      config = json.load(open(r / 'config.json'))
      assert config['data']['fraction'] == float(cell['fraction'])
      want = (str(workdir / f'generator_f{cell["fraction"]}' / 'generator')
              if cell['method'] == 'mgr' else '')
      assert config['generator']['checkpoint'] == want
  for f in FRACTIONS:
    cell = next(c for c in summary['cells'] if c['method'] == 'mgr' and c['fraction'] == f)
    mgr, base = accs['mgr', f], accs['base', f]
    diff = cell['vs_base']
    assert diff['mean'] == pytest.approx(statistics.fmean(np.subtract(mgr, base)), abs=1e-12)
    if np.ptp(np.subtract(mgr, base)) > 0:
      low, high = stats.ttest_rel(mgr, base).confidence_interval(0.95)
      assert (diff['low'], diff['high']) == (pytest.approx(low), pytest.approx(high))
  table = (workdir / 'summary.md').read_text()
  assert '| method | 25 % | 30 % |' in table and 'Paired difference' in table
  base_mean = next(c for c in summary['cells'] if c['method'] == 'base')['mean']
  assert f'{base_mean:.2f}' in table
  _assert_png(workdir / 'accuracy_vs_fraction.png')
  assert proc.stdout.count('time left about') == 8 and '[8/8]' in proc.stdout


def test_study_rerun_reads_finished_runs(study, env):
  workdir, _ = study
  before = json.load(open(workdir / 'summary.json'))
  proc = _run(env, 'study', f'--workdir={workdir}', '--methods=base,mgr',
              f'--fractions={",".join(FRACTIONS)}', f'--seeds={",".join(map(str, SEEDS))}')
  assert proc.stdout.count('read (finished before)') == 8 and '===' not in proc.stdout
  after = json.load(open(workdir / 'summary.json'))
  assert after['cells'] == before['cells']
  # Another setting on the same workdir: refused, not mixed into the summary.
  proc = _run(env, 'study', f'--workdir={workdir}', '--methods=base', '--fractions=0.25',
              '--seeds=0', '--config.learning_rate=0.1', check=False)
  assert proc.returncode == 2 and 'different config' in proc.stderr
  assert 'Traceback' not in proc.stderr
  # --finished_only: seed 7 was never run; nothing is trained and the cells keep n = 2.
  proc = _run(env, 'study', f'--workdir={workdir}', '--methods=base,mgr',
              f'--fractions={",".join(FRACTIONS)}', '--seeds=0,1,7', '--finished_only')
  assert 'Summarising the 8 finished runs' in proc.stdout and '===' not in proc.stdout
  assert json.load(open(workdir / 'summary.json'))['cells'] == before['cells']


@pytest.mark.parametrize('args,expected', [
    (['--fractions=0,0.5'], 'out of range'),
    (['--methods=base,magic'], 'Unknown methods'),
    (['--augment=none,cutmixx'], 'Unknown data.augment'),
    (['--lam=/no/such/lambda.json'], 'is missing'),
])
def test_study_bad_input_fails_cleanly(tmp_path, env, args, expected):
  proc = _run(env, 'study', f'--workdir={tmp_path / "w"}', *args, check=False)
  assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'w' / 'f0.25').exists()


def test_study_crosses_rows_with_augment(tmp_path, env):
  """--augment crosses every row with data.augment: base and base+cutmix side by side."""
  workdir = tmp_path / 'w'
  proc = _run(env, 'study', f'--workdir={workdir}', '--methods=base', '--augment=none,cutmix',
              '--fractions=0.25', '--seeds=0')
  summary = json.load(open(workdir / 'summary.json'))
  assert summary['methods'] == ['base', 'base+cutmix']
  for label, name, aug in [('base', 'base', 'none'), ('base+cutmix', 'base_cutmix', 'cutmix')]:
    config = json.load(open(workdir / 'f0.25' / f'{name}_seed0' / 'config.json'))
    assert (config['method'], config['data']['augment']) == ('base', aug)
    cell = next(c for c in summary['cells'] if c['method'] == label)
    assert cell['test_acc'] == [100 * _results(workdir / 'f0.25' / f'{name}_seed0')['test_acc']]
  assert '| base+cutmix |' in (workdir / 'summary.md').read_text()
  assert proc.stdout.count('time left about') == 2


@pytest.fixture(scope='module')
def lambda_dir(tmp_path_factory, env):
  workdir = tmp_path_factory.mktemp('lam')
  _place_generators(workdir)
  proc = _run(env, 'lambda_search', f'--workdir={workdir}', '--lams=0.1,0.5',
              '--fractions=0.25', '--seeds=0')
  return workdir, proc


def test_lambda_search_chooses_by_validation_and_study_reuses_it(lambda_dir, env):
  workdir, proc = lambda_dir
  chosen = json.load(open(workdir / 'lambda.json'))
  val = {lam: _results(workdir / 'f0.25' / f'pcr_lam{lam}_seed0')['best_val_acc']
         for lam in ('0.1', '0.5')}
  best = max(val.values())
  want = min(float(lam) for lam, v in val.items() if v == best)  # The smaller on a tie.
  assert chosen['lam_by_fraction'] == {'0.25': want}
  assert chosen['by_fraction']['0.25']['val_acc'] == {k: [100 * v] for k, v in val.items()}
  assert 'D_val accuracy' in proc.stdout
  proc = _run(env, 'study', f'--workdir={workdir}', f'--lam={workdir / "lambda.json"}',
              '--methods=pcr', '--fractions=0.25', '--seeds=0')
  config = json.load(open(workdir / 'f0.25' / 'pcr_seed0' / 'config.json'))
  assert config['synth']['lam'] == want
  proc = _run(env, 'study', f'--workdir={workdir}', f'--lam={workdir / "lambda.json"}',
              '--methods=pcr', '--fractions=0.3', '--seeds=0', check=False)
  assert proc.returncode == 2 and 'no λ for fraction' in proc.stderr


@pytest.fixture(scope='module')
def hypergrad_dir(tmp_path_factory, env):
  workdir = tmp_path_factory.mktemp('hypergrad')
  _tiny_stylegan2_dir(workdir / 'generator')
  proc = _run(env, 'hypergrad', f'--workdir={workdir}', '--seeds=0,1', '--every=1',
              '--bench_steps=1', '--radii=1e-2,1e-4', '--config.data.fraction=0.25')
  return workdir, proc


def test_hypergrad_end_to_end(hypergrad_dir):
  workdir, proc = hypergrad_dir
  out = json.load(open(workdir / 'hypergrad.json'))
  for mode in ('fd', 'exact'):
    t = out['modes'][mode]
    accs = [100 * _results(workdir / f'{mode}_seed{s}')['test_acc'] for s in SEEDS]
    assert t['test_acc'] == accs and t['test_acc_mean'] == statistics.fmean(accs)
    assert t['median_step_seconds'] > 0 and t['peak_bytes'] > 0 and t['wall_seconds_mean'] > 0
  rows = out['agreement']['rows']
  assert [r['step'] for r in rows] == [0, 1]  # Two steps per epoch, every step.
  for row in rows:
    for dtype in ('float32', 'float64'):
      assert len(row[dtype]['cosine']) == 2 and row[dtype]['exact_norm'] > 0
      assert all(-1 - 1e-9 <= c <= 1 + 1e-9 for c in row[dtype]['cosine'])
      assert all(np.isfinite(e) and e >= 0 for e in row[dtype]['rel_error'])
  _assert_png(workdir / 'hypergrad_agreement.png')
  assert 'agreement of fd with exact' in proc.stdout and '[5/5]' in proc.stdout


def test_figures_write_pngs(hypergrad_dir, lambda_dir, env, tmp_path):
  from experiments.figures import load_run
  run, baseline = hypergrad_dir[0] / 'fd_seed0', lambda_dir[0] / 'f0.25' / 'pcr_lam0.1_seed0'
  proc = subprocess.run([sys.executable, '-m', 'experiments.figures', f'--run={run}',
                         f'--baseline={baseline}', f'--out={tmp_path}', '--num_real=100',
                         '--num_synthetic=40'], cwd=REPO, capture_output=True, text=True,
                        timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ('val_loss', 'samples', 'umap'):
    _assert_png(tmp_path / f'{name}.png')
  # The finder of the best epoch is in the checkpoint, and it has moved from its start.
  loaded = load_run(str(run), need_finder=True)  # dense2 starts at zero (F(z) = z).
  assert np.abs(loaded.finder_params['mlp']['dense2']['kernel']).max() > 0
  proc = subprocess.run([sys.executable, '-m', 'experiments.figures', f'--run={baseline}',
                         f'--out={tmp_path}', '--figures=samples'], cwd=REPO,
                        capture_output=True, text=True, timeout=900, env=env)
  assert proc.returncode == 2 and 'meta-learning run' in proc.stderr


def test_agreement_rows_keep_the_last_measurement_of_a_step(tmp_path):
  from experiments.hypergrad import read_rows
  path = tmp_path / 'agreement.jsonl'
  path.write_text('\n'.join(json.dumps({'step': s, 'v': v})
                            for s, v in ((0, 'a'), (2, 'b'), (2, 'c'), (1, 'd'))) + '\n')
  assert read_rows(str(path)) == [{'step': 0, 'v': 'a'}, {'step': 1, 'v': 'd'},
                                  {'step': 2, 'v': 'c'}]
  shutil.rmtree(tmp_path)
  assert read_rows(str(path)) == []


def test_agreement_leaves_out_rows_where_the_exact_hypergradient_is_zero():
  """λ warm-up: at step 0 both hypergradients are 0; such rows must not enter medians."""
  from experiments.hypergrad import informative, summarize_agreement
  row = lambda step, norm, cos: {'step': step, **{d: {'exact_norm': norm, 'cosine': [cos],
                                                      'rel_error': [1 - cos]}
                                                  for d in ('float32', 'float64')}}
  rows = [row(0, 0.0, 0.0), row(5, 2.0, 0.9), row(10, 1.0, 0.5)]
  kept = informative(rows, ('float32', 'float64'))
  assert [r['step'] for r in kept] == [5, 10]
  summary = summarize_agreement(kept, [0.01], ('float32',))
  assert summary['measurements'] == 2 and summary['float32']['cosine']['median'] == [0.7]


def test_summary_markdown_bolds_every_best_mean_and_underlines_above_base():
  """Equal image counts can differ in the 7th digit (float32 accuracies): both are the best."""
  from experiments.summary import markdown
  cell = lambda m, mean: {'method': m, 'fraction': '0.25', 'mean': mean, 'std': 0.5,
                          'seeds': [0, 1], 'vs_base': None}
  cells = [cell('base', 95.0), cell('pcr', 98.60724210739136), cell('mgr', 98.60724329948425),
           cell('gda', 94.0)]
  text = markdown(cells, ['base', 'gda', 'pcr', 'mgr'], ['0.25'], 'title')
  first_table = text.split('\n\n')[2]  # Title, legend, the accuracy table, the differences.
  rows = {line.split(' | ')[0][2:]: line for line in first_table.splitlines()}
  assert '<u>**98.61**</u>' in rows['pcr'] and '<u>**98.61**</u>' in rows['mgr']
  assert '**' not in rows['base'] and '<u>' not in rows['gda'] and '<u>' not in rows['base']
