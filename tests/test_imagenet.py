"""configs/imagenet.py (B.5): its recipe, and one epoch end to end on CPU from an
ImageNet-layout folder with a converted (tiny, random) BigGAN as G."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from test_stream import make_folder


def test_imagenet_config_is_torchvisions_recipe_with_a_biggan():
  from configs.imagenet import get_config
  from mgr_jax.config import validate
  c = get_config()
  validate(c)
  assert (c.learning_rate, c.momentum, c.nesterov, c.weight_decay) == (0.1, 0.9, False, 1e-4)
  assert (c.num_epochs, c.batch_size, c.lr_decay_factor) == (90, 256, 0.1)
  assert [round(f * c.num_epochs) for f in c.lr_decay_at] == [30, 60]
  assert (c.data.source, c.data.loader, c.data.image_size) == ('tfds:imagenet2012', 'grain', 224)
  assert (c.model.width, c.model.small_stem, c.model.pretrained) == (1.0, False, '')
  assert c.generator.checkpoint and c.method == 'mgr'


def _tiny_biggan(tmp_path):
  """A random 32-px, 10-class BigGAN-deep saved as the package saves one, then converted."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('pytorch_pretrained_biggan')
  from test_biggan import TINY, _randomised_reference  # Sane spectral norms (u, v).
  model = _randomised_reference(TINY)
  torch.save(model.state_dict(), tmp_path / 'pytorch_model.bin')
  (tmp_path / 'config.json').write_text(json.dumps(TINY))
  out = str(tmp_path / 'biggan')
  subprocess.run([sys.executable, '-m', 'converters.biggan', '--src',
                  str(tmp_path / 'pytorch_model.bin'), '--config', str(tmp_path / 'config.json'),
                  '--out', out], cwd=REPO, check=True, capture_output=True)
  return out


def test_imagenet_config_trains_an_epoch_from_a_folder_with_a_converted_biggan(tmp_path):
  """GDA (B.5's second row): G's class-conditional samples train the classifier. (mgr, the
  config's default, runs the same way; its meta step takes minutes to compile on 2 cores.)"""
  generator = _tiny_biggan(tmp_path)
  root = str(tmp_path / 'imagenet')
  for split, per_class in (('train', 6), ('test', 1)):  # 10 classes: G's.
    make_folder(os.path.join(root, split), classes=10, per_class=per_class, size=40,
                seed=len(split), ext='JPEG')
  workdir = str(tmp_path / 'run')
  small = {'method': 'gda', 'batch_size': 8, 'eval_batch_size': 8, 'synth.batch_size': 8,
           'meta.val_batch_size': 8, 'data.image_size': 32, 'model.width': 0.125,
           'num_epochs': 1, 'progress_bar': False, 'data.workers': 1}
  proc = subprocess.run(
      [sys.executable, '-m', 'mgr_jax.main', '--config=configs/imagenet.py',
       f'--workdir={workdir}', f'--config.data.source=folder:{root}',
       f'--config.generator.checkpoint={generator}',
       *[f'--config.{k}={v}' for k, v in small.items()]],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[:4000] + '\n...\n' + proc.stderr[-2000:]
  assert 'biggan, 10 classes, 32 px' in proc.stdout
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['method'] == 'gda' and results['num_epochs'] == 1
  assert 0.0 <= results['test_acc'] <= 1.0
  assert len(open(os.path.join(workdir, 'metrics.jsonl')).readlines()) == 1
