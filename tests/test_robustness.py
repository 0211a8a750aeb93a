"""Common corruptions (mgr_jax/corruptions.py) and `python -m experiments.robustness`."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_overrides
from mgr_jax import corruptions
from mgr_jax.errors import UserError


@pytest.fixture(scope='module')
def images():
  """Two 16 px RGB images with structure (a gradient and a square) and full contrast."""
  y, x = np.mgrid[0:16, 0:16]
  a = np.stack([x * 16, y * 16, (x + y) * 8], -1)
  b = np.zeros((16, 16, 3)) + 40
  b[4:12, 4:12] = 230
  return np.stack([a, b]).astype(np.uint8)


@pytest.mark.parametrize('name', corruptions.CORRUPTIONS)
def test_severity_5_differs_from_1_and_keeps_the_range(images, name):
  for im in images:
    out = [corruptions.corrupt(im, name, s, np.random.default_rng(0)) for s in (1, 5)]
    for o in out:
      assert o.shape == im.shape and o.dtype == np.float32
      assert o.min() >= 0.0 and o.max() <= 1.0
    assert not np.array_equal(out[0], out[1])
    assert np.abs(out[1] - im / 255.0).mean() > 0  # severity 5 corrupts


def test_bad_corruption_or_severity_is_a_user_error(images):
  with pytest.raises(UserError, match='gaussian_noise'):
    corruptions.corrupt(images[0], 'gaussian', 1, np.random.default_rng(0))
  with pytest.raises(UserError, match='1, 2, 3, 4, 5'):
    corruptions.corrupt(images[0], 'fog', 6, np.random.default_rng(0))


def test_robustness_command_on_a_tiny_finished_run(tmp_path):
  run = tmp_path / 'run'
  train = subprocess.run(
      [sys.executable, '-m', 'mgr_jax.main', '--config=configs/digits.py', f'--workdir={run}',
       *tiny_overrides(num_epochs=1, **{'data.image_size': 8})],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr
  proc = subprocess.run([sys.executable, '-m', 'experiments.robustness', f'--run={run}',
                         '--limit=16'], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  result = json.load(open(run / 'robustness.json'))
  assert list(result['per_corruption']) == list(corruptions.CORRUPTIONS)
  assert all(len(v) == 5 for v in result['per_severity'].values())
  assert result['mean'] == pytest.approx(np.mean(list(result['per_corruption'].values())))
  assert result['test_images'] == 16 and 0 <= result['clean'] <= 1
  table = (run / 'robustness.md').read_text()
  assert 'jpeg_compression' in table and '| base |' in table
  missing = subprocess.run([sys.executable, '-m', 'experiments.robustness',
                            f'--run={tmp_path}'], cwd=REPO, capture_output=True, text=True)
  assert missing.returncode == 2 and 'not a finished run' in missing.stderr
