"""converters.stylegan2_ada and converters.safe_pickle: state_dict and official-format
snapshot pickles give the same generator; malicious pickles are refused before anything
runs; key/shape mismatches are named."""
import collections
import io
import json
import os
import pickle
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from converters import safe_pickle
from converters import stylegan2_ada
from mgr_jax import generators
from mgr_jax.errors import UserError

torch = pytest.importorskip('torch')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(REPO), 'shared', 'fixtures', 'stylegan2ada_tiny')
needs_fixture = pytest.mark.skipif(
    not os.path.isdir(FIXTURE),
    reason=f'shared fixture {FIXTURE} absent (it lives next to the repo in ../shared)')
SD_PATH = os.path.join(FIXTURE, 'stylegan2ada_tiny_state_dict.pt')
KWARGS_PATH = os.path.join(FIXTURE, 'stylegan2ada_tiny_kwargs.json')
_BUFFERS = ('w_avg', 'noise_const', 'resample_filter')


# ----------------------------------------------------------------------------------------
# A producer of official-format snapshots, written from the format's description: each
# network pickles as torch_utils.persistence._reconstruct_persistent_obj(meta) with
# meta = {type, version, module_src, class_name, state=module.__dict__}. Fake modules named
# torch_utils.persistence / dnnlib.util exist only while pickling (pickle checks that a
# global is importable); the reader never imports them.


def _fake_reconstruct(meta):  # never called: only its name is pickled.
  raise AssertionError('the reader must not call the original reconstruct function')


class _FakeEasyDict(dict):
  pass


# The names under which pickle records them (the official ones).
_fake_reconstruct.__module__ = 'torch_utils.persistence'
_fake_reconstruct.__qualname__ = '_reconstruct_persistent_obj'
_FakeEasyDict.__module__ = 'dnnlib.util'
_FakeEasyDict.__qualname__ = 'EasyDict'


class _PersistentModule:
  """Pickles like a torch_utils.persistence-decorated torch.nn.Module."""

  def __init__(self, class_name, parameters, buffers, modules, init_kwargs, extra=None):
    self.meta = dict(
        type='class', version=6, class_name=class_name,
        # If this source were ever exec'd, it would leave a marker file behind.
        module_src=f'open({MARKER!r}, "w").write("executed")\nclass {class_name}: pass\n',
        state=dict(training=False, _parameters=parameters, _buffers=buffers, _modules=modules,
                   _non_persistent_buffers_set=set(), _forward_hooks=collections.OrderedDict(),
                   _init_args=(), _init_kwargs=init_kwargs, **(extra or {})))

  def __reduce__(self):
    return (_fake_reconstruct, (self.meta,))


MARKER = '/tmp/mgr_jax_test_safe_pickle_marker'


def _module_tree(state_dict, prefix, class_name, init_kwargs):
  """Nested _PersistentModules from a flat torch state_dict (params as nn.Parameter)."""
  params, buffers, children = (collections.OrderedDict() for _ in range(3))
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    rest = key[len(prefix):]
    if '.' in rest:
      children.setdefault(rest.split('.')[0], None)
    elif rest in _BUFFERS:
      buffers[rest] = value.clone()
    else:
      params[rest] = torch.nn.Parameter(value.clone(), requires_grad=False)
  modules = collections.OrderedDict(
      (name, _module_tree(state_dict, prefix + name + '.', name, {})) for name in children)
  extra = {'weight_gain': np.float64(0.01) / np.sqrt(32), 'activation': 'lrelu'}
  return _PersistentModule(class_name, params, buffers, modules, init_kwargs, extra)


def _official_snapshot_bytes(state_dict, kwargs, monkeypatch, protocol):
  persistence = types.ModuleType('torch_utils.persistence')
  persistence._reconstruct_persistent_obj = _fake_reconstruct
  dnnlib_util = types.ModuleType('dnnlib.util')
  dnnlib_util.EasyDict = _FakeEasyDict
  for name, mod in [('torch_utils', types.ModuleType('torch_utils')),
                    ('torch_utils.persistence', persistence),
                    ('dnnlib', types.ModuleType('dnnlib')), ('dnnlib.util', dnnlib_util)]:
    monkeypatch.setitem(sys.modules, name, mod)
  init_kwargs = dict(kwargs, mapping_kwargs=_FakeEasyDict(kwargs['mapping_kwargs']),
                     synthesis_kwargs=_FakeEasyDict(kwargs['synthesis_kwargs']))
  G = _module_tree(state_dict, '', 'Generator', init_kwargs)
  D = _PersistentModule('Discriminator', collections.OrderedDict(
      w=torch.nn.Parameter(torch.randn(3, 4).t())), collections.OrderedDict(),
      collections.OrderedDict(), _FakeEasyDict(c_dim=10))
  snapshot = dict(training_set_kwargs=dict(path='x.zip', use_labels=True), G=G, D=D, G_ema=G,
                  augment_pipe=None)
  data = pickle.dumps(snapshot, protocol=protocol)
  monkeypatch.undo()  # The fake modules are gone before anything is read.
  return data


@pytest.fixture(scope='module')
def fixture_state_dict():
  with open(KWARGS_PATH) as f:
    kwargs = json.load(f)
  return torch.load(SD_PATH, weights_only=True), kwargs


# ----------------------------------------------------------------------------------------


@needs_fixture
def test_cli_state_dict_end_to_end(tmp_path, capsys):
  out = str(tmp_path / 'gen')
  assert stylegan2_ada.main(['--src', SD_PATH, '--kwargs', KWARGS_PATH, '--out', out]) == 0
  assert 'stylegan2 16x16x3, z_dim 32, 10 classes' in capsys.readouterr().out
  gen = generators.load(out)
  ref = np.load(os.path.join(FIXTURE, 'stylegan2ada_tiny_reference.npz'))
  img = gen(ref['z'], ref['labels'], noise_mode='none')
  assert np.abs(np.transpose(np.asarray(img), (0, 3, 1, 2)) - ref['img_noise_none']).max() <= 1e-4
  with open(os.path.join(out, 'generator.json')) as f:
    source = json.load(f)['source']
  assert source['file'] == 'stylegan2ada_tiny_state_dict.pt' and len(source['sha256']) == 64
  # A .pt without --kwargs is a clear error, not a guess.
  assert stylegan2_ada.main(['--src', SD_PATH, '--out', str(tmp_path / 'x')]) == 2
  assert 'pass --kwargs' in capsys.readouterr().err


@needs_fixture
@pytest.mark.parametrize('protocol', [2, 4])
def test_official_format_pickle_equals_state_dict_route(fixture_state_dict, tmp_path,
                                                        monkeypatch, protocol):
  sd, kwargs = fixture_state_dict
  if os.path.exists(MARKER):
    os.remove(MARKER)
  src = tmp_path / 'network-snapshot-000000.pkl'
  src.write_bytes(_official_snapshot_bytes(sd, kwargs, monkeypatch, protocol))
  assert 'torch_utils' not in sys.modules and 'dnnlib' not in sys.modules

  snap = safe_pickle.load_pickle(str(src))
  assert sorted(snap) == ['D', 'G', 'G_ema', 'augment_pipe', 'training_set_kwargs']
  np.testing.assert_array_equal(snap['D'].state['_parameters']['w'].shape, (4, 3))
  got_kwargs, got_sd = safe_pickle.generator_from_snapshot(snap, 'G_ema')
  assert got_kwargs == kwargs
  assert list(got_sd) == list(sd)  # torch's state_dict order
  for k, v in sd.items():
    np.testing.assert_array_equal(got_sd[k], v.numpy())
  with pytest.raises(UserError, match="is a 'Discriminator', not a Generator"):
    safe_pickle.generator_from_snapshot(snap, 'D')

  out_pkl, out_sd = str(tmp_path / 'from_pkl'), str(tmp_path / 'from_sd')
  stylegan2_ada.convert(str(src), out_pkl)
  stylegan2_ada.convert(SD_PATH, out_sd, kwargs_path=KWARGS_PATH)
  a, b = generators.load(out_pkl), generators.load(out_sd)
  assert a.kwargs == b.kwargs
  jax.tree_util.tree_map(np.testing.assert_array_equal, a.variables, b.variables)
  assert not os.path.exists(MARKER), 'module_src from the pickle was executed'


def test_tensor_layouts_from_torch_pickles():
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  obj = {'t': base.t(), 'view': base[1:, 2:4], 'half': torch.tensor([1.5, -2], dtype=torch.float16),
         'long': torch.tensor([3, 4]), 'scalar': torch.tensor(2.5),
         'empty': torch.zeros(0, 3), 'p': torch.nn.Parameter(torch.ones(2))}
  got = safe_pickle.SafeUnpickler(io.BytesIO(pickle.dumps(obj))).load()
  for k, v in obj.items():
    assert got[k].dtype == v.detach().numpy().dtype and got[k].shape == tuple(v.shape), k
    np.testing.assert_array_equal(got[k], v.detach().numpy())


class _Evil:
  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


@pytest.mark.parametrize('payload,name', [
    (_Evil(os.system, f'touch {MARKER}'), 'posix.system'),
    (_Evil(eval, f'open({MARKER!r}, "w")'), 'builtins.eval'),
    (_Evil(subprocess.call, ['touch', MARKER]), 'subprocess.call'),
    (_Evil(getattr, 1, 'real'), 'builtins.getattr'),
])
def test_malicious_pickles_are_refused(tmp_path, payload, name):
  if os.path.exists(MARKER):
    os.remove(MARKER)
  path = tmp_path / 'evil.pkl'
  path.write_bytes(pickle.dumps({'G_ema': {'x': [payload]}}))
  with pytest.raises(safe_pickle.UnsafePickleError, match=f'refusing to load {name}'):
    safe_pickle.load_pickle(str(path))
  assert not os.path.exists(MARKER)


def test_malicious_pickle_cli_exit_code(tmp_path):
  if os.path.exists(MARKER):
    os.remove(MARKER)
  path = tmp_path / 'network-snapshot-evil.pkl'
  path.write_bytes(pickle.dumps({'G_ema': _Evil(os.system, f'touch {MARKER}')}))
  proc = subprocess.run(
      [sys.executable, '-m', 'converters.stylegan2_ada', '--src', str(path), '--out',
       str(tmp_path / 'out')], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'refusing to load posix.system' in proc.stderr and 'Traceback' not in proc.stderr
  assert not os.path.exists(MARKER)
  assert not os.path.exists(tmp_path / 'out' / 'generator.json')


@needs_fixture
def test_key_and_shape_mismatches_are_listed(fixture_state_dict, tmp_path, capsys):
  sd, kwargs = fixture_state_dict
  bad = dict(sd)
  del bad['synthesis.b8.conv1.affine.weight']
  bad['synthesis.b8.conv1.extra'] = torch.zeros(3)
  bad['mapping.fc1.weight'] = torch.zeros(32, 31)
  bad['synthesis.b16.resample_filter'] = torch.ones(4, 4) / 16
  with pytest.raises(UserError) as e:
    stylegan2_ada.state_dict_to_variables({k: v.numpy() for k, v in bad.items()}, kwargs)
  msg = str(e.value)
  assert 'missing (1): synthesis.b8.conv1.affine.weight' in msg
  assert 'unexpected (1): synthesis.b8.conv1.extra' in msg
  assert 'wrong shape (1): mapping.fc1.weight (32, 31) (expected (32, 32))' in msg
  assert 'resample_filter differs' in msg and 'synthesis.b16.resample_filter' in msg
  # The CLI with kwargs of another architecture: exit code 2, keys named on stderr.
  other = tmp_path / 'kwargs.json'
  other.write_text(json.dumps(dict(kwargs, img_resolution=32)))
  assert stylegan2_ada.main(['--src', SD_PATH, '--kwargs', str(other),
                             '--out', str(tmp_path / 'o')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'missing (' in err and 'synthesis.b32.conv0.weight' in err
  assert not os.path.exists(tmp_path / 'o')
