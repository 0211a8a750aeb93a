"""`python -m mgr_jax.main` end to end: outputs, resume after kill -9, errors, loading."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, tiny_overrides

CLI = [sys.executable, '-m', 'mgr_jax.main', '--config=configs/digits.py']


def run_cli(workdir, *overrides, **kw):
  return subprocess.run(CLI + [f'--workdir={workdir}', *overrides], cwd=REPO,
                        capture_output=True, text=True, timeout=600, **kw)


def _read(workdir):
  results = json.load(open(os.path.join(workdir, 'results.json')))
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return results, rows


def _without_timing(results, rows):
  results = {k: v for k, v in results.items() if k != 'wall_seconds'}
  return results, [{k: v for k, v in r.items() if k != 'seconds'} for r in rows]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run') / 'w'
  proc = run_cli(workdir, *tiny_overrides())
  assert proc.returncode == 0, proc.stderr
  return workdir, proc


def test_end_to_end_writes_outputs(finished_run):
  workdir, proc = finished_run
  results, rows = _read(workdir)
  assert set(results) >= {'method', 'seed', 'data_fraction', 'best_epoch', 'best_val_acc',
                          'test_acc', 'wall_seconds'}
  assert results['method'] == 'base' and results['data_fraction'] == 0.25
  assert [r['epoch'] for r in rows] == [1, 2, 3]
  assert set(rows[0]) >= {'train_loss', 'val_loss', 'val_acc', 'lr', 'seconds'}
  assert results['best_val_acc'] == max(r['val_acc'] for r in rows)
  assert rows[results['best_epoch'] - 1]['val_acc'] == results['best_val_acc']
  assert results['test_acc'] > 0.3  # Well above chance (0.1) after 3 tiny epochs.
  assert json.load(open(workdir / 'config.json'))['data']['image_size'] == 16
  assert f'Test accuracy {results["test_acc"]:.4f}' in proc.stdout


def test_finished_run_is_not_retrained(finished_run):
  workdir, _ = finished_run
  before = os.path.getmtime(workdir / 'results.json')
  proc = run_cli(workdir, *tiny_overrides())
  assert proc.returncode == 0 and 'already finished' in proc.stdout
  assert os.path.getmtime(workdir / 'results.json') == before


def test_load_classifier_matches_training_preprocessing(finished_run):
  from mgr_jax.data import load_splits
  from mgr_jax.models import load_classifier
  from configs.digits import get_config
  workdir, _ = finished_run
  clf = load_classifier(str(workdir))
  cfg = get_config()
  cfg.data.image_size, cfg.data.fraction = 16, 0.25
  test = load_splits(cfg.data).test
  # Any-size [0,1] input: the original 8x8 digits, as RGB.
  from sklearn.datasets import load_digits
  raw = load_digits().images[test.indices[:16]].astype(np.float32) / 16.0
  raw = np.repeat(raw[..., None], 3, axis=-1)
  logits = np.asarray(clf(raw))
  stored = (test.images[:16].astype(np.float32) / 255.0 - 0.5) / 0.5
  np.testing.assert_allclose(logits, np.asarray(clf.logits(stored)), rtol=1e-5, atol=1e-5)
  feats = clf.features(stored)
  fc = clf.variables['params']['fc']
  np.testing.assert_allclose(feats @ fc['kernel'] + fc['bias'], logits, rtol=1e-4, atol=1e-4)
  results = json.load(open(workdir / 'results.json'))
  all_logits = np.concatenate([np.asarray(clf.logits((test.images[i:i + 128] / 255.0 - 0.5) / 0.5))
                               for i in range(0, len(test), 128)])
  acc = float(np.mean(all_logits.argmax(-1) == test.labels))
  assert abs(acc - results['test_acc']) < 1e-6  # The best checkpoint, in eval mode.


def test_resume_after_kill_gives_same_results(finished_run, tmp_path):
  reference = _without_timing(*_read(finished_run[0]))
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen(CLI + [f'--workdir={workdir}', *tiny_overrides()], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.isdir(workdir / 'checkpoints' / '1') and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(workdir / 'results.json')
  resumed = run_cli(workdir, *tiny_overrides())
  assert resumed.returncode == 0, resumed.stderr
  assert 'Resuming from epoch' in resumed.stdout
  assert _without_timing(*_read(workdir)) == reference


def test_resume_refuses_other_config(finished_run, tmp_path):
  workdir = tmp_path / 'partial'
  os.makedirs(workdir)
  (workdir / 'config.json').write_text(open(finished_run[0] / 'config.json').read())
  proc = run_cli(workdir, *tiny_overrides(num_epochs=5))
  assert proc.returncode != 0 and 'different config' in proc.stderr
  assert 'num_epochs: 3 -> 5' in proc.stderr


@pytest.mark.parametrize('override,expected', [
    ('--config.data.nonexistent_key=1', 'unknown config key'),
    ('--config.data.source=imagenet_please', 'Unknown data.source'),
    ('--config.data.source=folder:/no/such/folder', 'does not exist'),
    ('--config.method=magic', 'Unknown method'),
    ('--config.data.fraction=1.5', 'out of range'),
    ('--config.finder.lr=1e-3', '--config.finder.lr has moved to --config.meta.finder.lr'),
    ('--coordinator_address=localhost:1234', 'add --config.distributed=True'),
    ('--config.distributed=True --num_processes=2', 'Pass all three'),
])
def test_bad_input_fails_cleanly(tmp_path, override, expected):
  workdir = tmp_path / 'w'
  proc = run_cli(workdir, *tiny_overrides(), *override.split())
  assert proc.returncode != 0
  assert expected in proc.stderr and 'Traceback' not in proc.stderr
  assert not os.path.exists(workdir / 'results.json')
  assert not os.path.exists(workdir / 'checkpoints')


def _tiny_stylegan2_dir(path, num_classes=10):
  """A random conditional 8 px StyleGAN2-ADA saved as a generator directory."""
  import jax
  from mgr_jax import generators
  from mgr_jax.generators import stylegan2
  kwargs = {'z_dim': 8, 'c_dim': num_classes, 'w_dim': 8, 'img_resolution': 8,
            'img_channels': 3, 'mapping_kwargs': {'num_layers': 1},
            'synthesis_kwargs': {'channel_base': 64, 'channel_max': 8, 'num_fp16_res': 0,
                                 'conv_clamp': 256}}
  gdef = generators.generator_def('stylegan2', kwargs)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                           stylegan2.abstract_variables(gdef.module))
  generators.save(str(path), 'stylegan2', kwargs, variables)
  return path


@pytest.mark.parametrize('method', ['mgr'])
def test_synthetic_method_end_to_end(tmp_path, method):
  gen_dir = _tiny_stylegan2_dir(tmp_path / 'gen')
  workdir = tmp_path / 'w'
  proc = run_cli(workdir, *tiny_overrides(num_epochs=1), f'--config.method={method}',
                 f'--config.generator.checkpoint={gen_dir}', '--config.synth.batch_size=8',
                 '--config.meta.val_batch_size=8')
  assert proc.returncode == 0, proc.stderr[-3000:]
  results, rows = _read(workdir)
  assert results['method'] == method and len(rows) == 1
  assert np.isfinite(rows[0]['train_synthetic']) and rows[0]['train_synthetic'] > 0
  assert 'train_kl' in rows[0] and 'train_val_loss_inner' in rows[0]


def test_compare_runs_methods_and_seeds_and_summarizes(tmp_path):
  import statistics
  workdir = tmp_path / 'cmp'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.compare', '--config=configs/digits.py',
       f'--workdir={workdir}', '--methods=base', '--seeds=0,1', *tiny_overrides(num_epochs=1)],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  accs = [100 * json.load(open(workdir / f'base_seed{s}' / 'results.json'))['test_acc']
          for s in (0, 1)]
  assert accs[0] != accs[1]  # Seeds differ (init, batch order), data split does not.
  (row,) = json.load(open(workdir / 'summary.json'))['rows']
  assert row['runs'] == 2 and row['seeds'] == [0, 1]
  assert abs(row['test_acc_mean'] - statistics.fmean(accs)) < 1e-9
  assert abs(row['test_acc_std'] - statistics.stdev(accs)) < 1e-9
  assert f'{statistics.fmean(accs):6.2f} ± {statistics.stdev(accs):.2f}' in proc.stdout
