"""Hostile and careless inputs (issue 9). Every crafted file is made here, by the test."""
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_overrides
from mgr_jax.errors import UserError

CLI = [sys.executable, '-m', 'mgr_jax.main', '--config=configs/digits.py']


def run_cli(workdir, *args, timeout=300):
  return subprocess.run(CLI + [f'--workdir={workdir}', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def clean_error(proc, *words):
  """Exit 2 and one paragraph naming `words`: no traceback, no Orbax noise."""
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert 'Traceback' not in proc.stderr and 'Event loop' not in proc.stderr, proc.stderr
  for word in words:
    assert word in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------- images


def _class_folder(root, name, images):
  os.makedirs(root / name, exist_ok=True)
  for i, im in enumerate(images):
    im.save(root / name / f'{i}.{"png" if im.mode in ("I;16", "RGB") else "tif"}')


def test_16_and_32_bit_grey_images_keep_their_contrast(tmp_path):
  from mgr_jax.data.sources import load_folder
  ramp = np.arange(64).reshape(8, 8)
  deep = [Image.fromarray((ramp * 1000).astype(np.uint16)),  # I;16 PNG (was all 255)
          Image.fromarray((ramp * 70000 - 10**6).astype(np.int32)),  # I TIFF
          Image.fromarray((ramp / 7.0).astype(np.float32))]  # F TIFF
  _class_folder(tmp_path, 'a', deep)
  _class_folder(tmp_path, 'b', [Image.fromarray(np.uint8(ramp))])
  raw = load_folder(str(tmp_path), 8)
  expected = np.round(ramp / 63 * 255)
  for image in raw.train_images[raw.train_labels == 0]:
    assert np.all(image == image[..., :1])  # Grey stays grey.
    np.testing.assert_allclose(image[..., 0], expected, atol=1)


def _png_header_only(width, height):
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)  # 1-bit grey.
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b''))
          + chunk(b'IEND', b''))


def test_decompression_bomb_image_is_a_user_error(tmp_path):
  from mgr_jax.data.sources import load_folder
  _class_folder(tmp_path, 'a', [Image.new('RGB', (8, 8))])
  _class_folder(tmp_path, 'b', [Image.new('RGB', (8, 8))])
  (tmp_path / 'b' / 'bomb.png').write_bytes(_png_header_only(30000, 30000))  # 900 Mpixel, 60 B.
  with pytest.raises(UserError, match='decompression bomb.*bomb.png|bomb.png.*decompression bomb'):
    load_folder(str(tmp_path), 8)


def test_single_class_folder_is_refused(tmp_path):
  from mgr_jax.data.sources import load_folder
  _class_folder(tmp_path, 'only', [Image.new('RGB', (8, 8))] * 3)
  with pytest.raises(UserError, match='single class'):
    load_folder(str(tmp_path), 8)


# --------------------------------------------------------------------- workdirs and runs

_HOLD = ('import sys, time\nfrom mgr_jax.workdir import workdir_lock\n'
         'with workdir_lock(sys.argv[1]):\n  print("held", flush=True)\n  time.sleep(600)\n')


def test_second_run_on_a_workdir_refuses_and_kill9_frees_it(tmp_path, tiny_config):
  from experiments.compare import compare
  from mgr_jax.gan.loop import train_generator
  from mgr_jax.workdir import workdir_lock
  workdir = tmp_path / 'w'
  holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(workdir)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    clean_error(run_cli(workdir, *tiny_overrides(num_epochs=1)), 'in use by another run',
                f'process {holder.pid}')
    for other_run in (lambda: train_generator(tiny_config, str(workdir)),
                      lambda: compare(tiny_config, str(workdir), ['base'], [0])):
      with pytest.raises(UserError, match=f'process {holder.pid}'):
        other_run()
  finally:
    holder.kill()  # SIGKILL: the lock file stays behind...
    holder.wait()
  assert (workdir / '.lock').is_file()
  with workdir_lock(str(workdir)):  # ...and does not block the next run.
    assert str(os.getpid()) in (workdir / '.lock').read_text()


ITEMS = ('state', 'best', 'progress')


def _orbax_checkpoints(workdir, epochs):
  from mgr_jax import checkpoints
  manager = checkpoints.open_manager(str(workdir), ITEMS)
  for epoch in range(1, epochs + 1):
    checkpoints.save(manager, epoch, state={'w': np.arange(50_000, dtype=np.float32) + epoch},
                     best={'b': np.full(3, epoch, np.float32)}, progress={'epoch': epoch})


def _truncate_data_file(step_dir):
  """Cuts the largest array file Orbax wrote for the 'state' item to half its length."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir / 'state') for f in fs]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)


def _templates():
  return {'state': {'w': np.zeros(50_000, np.float32)}, 'best': {'b': np.zeros(3, np.float32)},
          'progress': None}


def test_damaged_newest_checkpoint_is_skipped_and_set_aside(tmp_path, capfd):
  from mgr_jax import checkpoints
  _orbax_checkpoints(tmp_path, 2)
  _truncate_data_file(tmp_path / 'checkpoints' / '2')
  manager = checkpoints.open_manager(str(tmp_path), ITEMS)
  restored = checkpoints.restore(manager, resuming=True, **_templates())
  assert restored['progress'] == {'epoch': 1}
  assert restored['state']['w'][0] == 1 and restored['best']['b'][0] == 1
  err = capfd.readouterr().err
  assert 'checkpoints/2 does not restore' in err and 'resuming from checkpoint 1' in err
  assert 'Event loop' not in err and 'Traceback' not in err
  assert [n.split('.')[0] for n in os.listdir(tmp_path / 'damaged_checkpoints')] == ['2']
  # The run goes on: epoch 2 is saved again (Orbax skips a step number it already has).
  checkpoints.save(manager, 2, state=restored['state'], best=restored['best'],
                   progress={'epoch': 2})
  assert checkpoints.open_manager(str(tmp_path), ITEMS).latest_step() == 2


def test_no_checkpoint_restores_says_what_to_delete(tmp_path):
  from mgr_jax import checkpoints
  _orbax_checkpoints(tmp_path, 2)
  for step in ('1', '2'):
    _truncate_data_file(tmp_path / 'checkpoints' / step)
  with pytest.raises(UserError, match='No checkpoint .* restores .*Delete'):
    checkpoints.restore(checkpoints.open_manager(str(tmp_path), ITEMS), resuming=True,
                        **_templates())
  assert not (tmp_path / 'damaged_checkpoints').exists()  # Nothing moved when none restores.


def test_finished_run_with_another_config_is_an_error(tmp_path, tiny_config):
  from mgr_jax.train.loop import train_and_evaluate
  (tmp_path / 'config.json').write_text(json.dumps(tiny_config.to_dict()))
  (tmp_path / 'results.json').write_text(json.dumps({'test_acc': 0.5}))
  assert train_and_evaluate(tiny_config, str(tmp_path))['test_acc'] == 0.5
  tiny_config.seed = 1
  with pytest.raises(UserError, match='seed: 0 -> 1'):
    train_and_evaluate(tiny_config, str(tmp_path))


# ----------------------------------------------------------------- CLI: one clear paragraph


def test_wrong_type_config_value_is_a_user_error(tmp_path):
  clean_error(run_cli(tmp_path / 'w', '--config.num_epochs=abc'), '--config.num_epochs=abc')
  missing = subprocess.run([sys.executable, '-m', 'mgr_jax.main', '--config=configs/no_such.py',
                            f'--workdir={tmp_path / "w"}'], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
  clean_error(missing, 'no_such.py')


def test_full_disk_is_a_user_error(tmp_path):
  if not os.path.exists('/dev/full'):
    pytest.skip('needs /dev/full')
  workdir = tmp_path / 'w'
  os.makedirs(workdir)
  os.symlink('/dev/full', workdir / '.lock')  # Every write to it fails with ENOSPC.
  clean_error(run_cli(workdir, *tiny_overrides()), 'No space left on device',
              'run the same command')


def test_read_only_workdir_is_a_user_error(tmp_path, tiny_config):
  from mgr_jax.train.loop import train_and_evaluate
  if os.geteuid() == 0:  # root writes through file modes; /sys refuses even root.
    if not os.path.isdir('/sys/kernel'):
      pytest.skip('needs /sys as root')
    workdir = '/sys/kernel/mgr_jax_test_workdir'
  else:
    os.chmod(tmp_path, 0o555)
    workdir = str(tmp_path / 'w')
  with pytest.raises(UserError, match='Cannot use workdir'):
    train_and_evaluate(tiny_config, workdir)


# --------------------------------------------------------------------- untrusted weights

_UNDER_MEMORY_LIMIT = '''
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # ~4.5 GiB go to torch + jax.
from converters import resnet18, safe_pickle, stylegan2_ada
from mgr_jax.errors import UserError
pth, pkl, kwargs, out = sys.argv[1:]
print('codes', resnet18.main(['--src', pth, '--out', out + '1']),
      stylegan2_ada.main(['--src', pth, '--kwargs', kwargs, '--out', out + '2']), flush=True)
try:
  stylegan2_ada.state_dict_to_variables(safe_pickle.load_pickle(pkl), json.load(open(kwargs)))
except UserError as e:
  print('pkl:', e)
print('peak MiB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
'''


def test_tiny_file_claiming_160_gb_is_refused_without_allocating(tmp_path):
  import pickle
  import torch
  bomb = torch.zeros(1, dtype=torch.float16).expand(200_000, 200_000)  # Stride 0: 2 bytes.
  torch.save({'conv1.weight': bomb}, tmp_path / 'bomb.pth')
  with open(tmp_path / 'bomb.pkl', 'wb') as f:  # The snapshot-pickle path of stylegan2_ada.
    pickle.dump({'mapping.w_avg': bomb}, f, protocol=2)
  assert os.path.getsize(tmp_path / 'bomb.pth') < 2000
  (tmp_path / 'kwargs.json').write_text(json.dumps({
      'z_dim': 8, 'c_dim': 0, 'w_dim': 8, 'img_resolution': 8, 'img_channels': 3,
      'mapping_kwargs': {'num_layers': 1}, 'synthesis_kwargs': {'channel_base': 64,
                                                                'channel_max': 8}}))
  env = dict(os.environ, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='')
  proc = subprocess.run(
      [sys.executable, '-c', _UNDER_MEMORY_LIMIT, str(tmp_path / 'bomb.pth'),
       str(tmp_path / 'bomb.pkl'), str(tmp_path / 'kwargs.json'), str(tmp_path / 'out')],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert 'codes 2 2' in proc.stdout, proc.stdout + proc.stderr
  assert proc.stderr.count('Nothing was allocated') == 2, proc.stderr
  assert 'pkl: The state_dict declares 40,000,000,000 values' in proc.stdout, proc.stdout
  assert 'Traceback' not in proc.stderr and 'MemoryError' not in proc.stdout + proc.stderr


class NotATensor:  # Pickled by reference: loading it would import and call this module.
  pass


def test_weights_only_refusal_says_why_and_never_suggests_the_unsafe_option(tmp_path):
  import torch
  from converters.resnet18 import read_checkpoint
  torch.save({'fc.weight': torch.zeros(2, 2), 'extra': NotATensor()}, tmp_path / 'x.pth')
  with pytest.raises(UserError) as info:
    read_checkpoint(str(tmp_path / 'x.pth'))
  message = str(info.value).replace(str(tmp_path), 'DIR')
  assert 'NotATensor' in message and 'run any code' in message
  assert 'original source' in message and 're-save only its tensors' in message
  assert 'weights_only' not in message and 'False' not in message


# ------------------------------------------------------- generator and classifier directories

_G_KWARGS = {'z_dim': 8, 'c_dim': 10, 'w_dim': 8, 'img_resolution': 8, 'img_channels': 3,
             'mapping_kwargs': {'num_layers': 1},
             'synthesis_kwargs': {'channel_base': 64, 'channel_max': 8, 'conv_clamp': 256}}


def _generator_dir(path, fill=0.01):
  import jax
  from mgr_jax import generators
  from mgr_jax.generators import stylegan2
  shapes = stylegan2.abstract_variables(stylegan2.Generator.from_kwargs(_G_KWARGS))
  variables = jax.tree.map(lambda s: np.full(s.shape, fill, np.float32), shapes)
  return generators.save(str(path), 'stylegan2', _G_KWARGS, variables)


@pytest.mark.parametrize('field,value', [
    ('kind', ['stylegan2']), ('kwargs', [8]), ('format_version', '1'), ('source', 'x'),
    ('kwargs.mapping_kwargs.num_layers', 'two'), ('kwargs.synthesis_kwargs.channel_base', '64'),
    ('kwargs.synthesis_kwargs', [1, 2])])
def test_generator_json_with_wrong_types_is_a_user_error(tmp_path, field, value):
  from mgr_jax import generators
  _generator_dir(tmp_path)
  config = json.loads((tmp_path / 'generator.json').read_text())
  *parents, last = field.split('.')
  node = config
  for name in parents:
    node = node[name]
  node[last] = value
  (tmp_path / 'generator.json').write_text(json.dumps(config))
  with pytest.raises(UserError, match='generator.json'):
    generators.load(str(tmp_path))


def test_generator_with_nan_weights_is_refused(tmp_path):
  from mgr_jax import generators
  _generator_dir(tmp_path, fill=np.nan)
  with pytest.raises(UserError, match='NaN'):
    generators.load(str(tmp_path))


def test_train_generator_workdir_is_a_generator_directory(tmp_path, tiny_config):
  from mgr_jax import generators
  from mgr_jax.train.setup import obtain_generator
  _generator_dir(tmp_path / 'generator')  # Where train_generator puts it.
  assert generators.load(str(tmp_path)).path == str(tmp_path / 'generator')
  tiny_config.method = 'pcr'
  tiny_config.generator.checkpoint = str(tmp_path)  # --config.generator.checkpoint=WORKDIR
  generator = obtain_generator(tiny_config, str(tmp_path / 'run'), num_classes=10)
  assert generator.path == str(tmp_path / 'generator')


def test_sample_grid_has_a_border_between_cells(tmp_path):
  from mgr_jax.gan.loop import write_grid
  write_grid(str(tmp_path / 's.png'), np.full((6, 8, 8, 3), 255, np.uint8), rows=2, cols=3)
  grid = np.asarray(Image.open(tmp_path / 's.png'))
  assert grid.shape == (2 * 64 + 2, 3 * 64 + 2 * 2, 3)
  assert np.all(grid[64:66] == 128) and np.all(grid[:, 64:66] == 128)  # Grey lines between.
  assert np.all(grid[:64, :64] == 255) and np.all(grid[66:, 132:] == 255)


@pytest.fixture(scope='module')
def classifier_dir(tmp_path_factory):
  import jax
  from configs.digits import get_config
  from mgr_jax.models.classifier import build_model, save_classifier, variables_template
  config = get_config()
  config.model.width, config.data.image_size = 0.125, 16
  path = tmp_path_factory.mktemp('clf') / 'c'
  template = variables_template(build_model(config.model, 10), 16)
  save_classifier(str(path), config, [str(i) for i in range(10)],
                  jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), template))
  return path


def _largest_file(root):
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


_TAMPERS = {
    'no config.json': lambda d: os.remove(d / 'config.json'),
    'config.json a list': lambda d: (d / 'config.json').write_text('[1]'),
    'config.json without model': lambda d: (d / 'config.json').write_text(json.dumps(
        {k: v for k, v in json.loads((d / 'config.json').read_text()).items() if k != 'model'})),
    'width of another model': lambda d: (d / 'config.json').write_text(
        (d / 'config.json').read_text().replace('"width": 0.125', '"width": 0.25')),
    'classes.json a dict': lambda d: (d / 'classes.json').write_text('{"a": 1}'),
    'classes.json cut short': lambda d: (d / 'classes.json').write_text('["0", "1'),
    'checkpoint file cut short': lambda d: os.truncate(_largest_file(d / 'checkpoints'), 100),
    'checkpoint file missing': lambda d: os.remove(_largest_file(d / 'checkpoints')),
}


@pytest.mark.parametrize('tamper', list(_TAMPERS))
def test_tampered_classifier_directory_is_a_user_error(classifier_dir, tmp_path, tamper, capfd):
  import shutil
  from mgr_jax.models import load_classifier
  copy = tmp_path / 'c'
  shutil.copytree(classifier_dir, copy)
  _TAMPERS[tamper](copy)
  with pytest.raises(UserError, match=str(copy)):
    load_classifier(str(copy))
  err = capfd.readouterr().err
  assert 'Event loop' not in err and 'Traceback' not in err, err


def test_pretrained_classifier_cut_short_fails_cleanly_in_the_cli(classifier_dir, tmp_path):
  import shutil
  copy = tmp_path / 'c'
  shutil.copytree(classifier_dir, copy)
  _TAMPERS['checkpoint file cut short'](copy)
  proc = run_cli(tmp_path / 'w', *tiny_overrides(num_epochs=1), f'--config.model.pretrained={copy}')
  clean_error(proc, 'No checkpoint', str(copy))


# ------------------------------------------------------------------------------ validation


def test_negative_lambda_is_refused(tiny_config):
  from mgr_jax.config import validate
  tiny_config.synth.lam = -0.1
  with pytest.raises(UserError, match='synth.lam'):
    validate(tiny_config)
