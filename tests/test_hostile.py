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
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0))
          + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))


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


def test_full_disk_is_a_user_error(tmp_path):
  if not os.path.exists('/dev/full'):
    pytest.skip('needs /dev/full')
  workdir = tmp_path / 'w'
  os.makedirs(workdir)
  os.symlink('/dev/full', workdir / '.lock')  # Every write to it fails with ENOSPC.
  clean_error(run_cli(workdir, *tiny_overrides()), 'No space left on device', 'run the same command')


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
