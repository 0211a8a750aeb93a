"""StyleGAN2-ADA generator: reproduces the official network's outputs (shared fixture),
gradients w.r.t. z, generator directories (save/load, errors), other configurations."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgr_jax import generators
from mgr_jax.errors import UserError
from mgr_jax.generators import io as gen_io
from mgr_jax.generators import stylegan2 as sg
from mgr_jax.models import conv
from ynn_fusions import ynn_convolutions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(REPO), 'shared', 'fixtures', 'stylegan2ada_tiny')
needs_fixture = pytest.mark.skipif(
    not os.path.isdir(FIXTURE),
    reason=f'shared fixture {FIXTURE} absent (it lives next to the repo in ../shared)')
TOL = 1e-4


@pytest.fixture(scope='module')
def tiny():
  """(kwargs, variables, reference npz) of the fixture, via the state_dict converter."""
  torch = pytest.importorskip('torch')
  from converters.stylegan2_ada import state_dict_to_variables
  with open(os.path.join(FIXTURE, 'stylegan2ada_tiny_kwargs.json')) as f:
    kwargs = json.load(f)
  sd = torch.load(os.path.join(FIXTURE, 'stylegan2ada_tiny_state_dict.pt'), weights_only=True)
  variables = state_dict_to_variables({k: v.numpy() for k, v in sd.items()}, kwargs)
  ref = dict(np.load(os.path.join(FIXTURE, 'stylegan2ada_tiny_reference.npz')))
  return kwargs, variables, ref


def _random_variables(G, seed=0):
  """Random variables of G's shapes (numpy: cheaper than compiling G.init's threefry)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), sg.abstract_variables(G))


def _nchw(img):
  return np.transpose(np.asarray(img), (0, 3, 1, 2))


@needs_fixture
def test_reproduces_official_outputs(tiny):
  kwargs, variables, ref = tiny
  G = sg.Generator.from_kwargs(kwargs)
  map_fn = jax.jit(lambda v, z, y, psi: sg.mapping(G, v, z, y, psi))
  syn_fn = jax.jit(lambda v, ws, mode: sg.synthesis(G, v, ws, mode), static_argnums=2)
  ws = map_fn(variables, ref['z'], ref['labels'], 1.0)
  ws_trunc = map_fn(variables, ref['z'], ref['labels'], 0.7)
  assert ws.shape == ref['ws'].shape == (4, G.num_ws, 32)
  assert np.abs(ws - ref['ws']).max() <= TOL
  assert np.abs(ws_trunc - ref['ws_trunc']).max() <= TOL
  # Labels may also be given as c vectors (one-hot), as the official code takes them.
  ws_c = map_fn(variables, ref['z'], ref['c'], 1.0)
  assert np.abs(ws_c - ref['ws']).max() <= TOL
  for ws_in, mode, key in [(ref['ws'], 'const', 'img_noise_const'),
                           (ref['ws'], 'none', 'img_noise_none'),
                           (ref['ws_trunc'], 'const', 'img_trunc07_noise_const')]:
    img = syn_fn(variables, jnp.asarray(ws_in), mode)
    assert img.dtype == jnp.float32 and img.shape == (4, 16, 16, 3)
    diff = np.abs(_nchw(img) - ref[key]).max()
    assert diff <= TOL, (key, diff)


@needs_fixture
def test_gradient_wrt_z_and_directory_round_trip(tiny, tmp_path):
  kwargs, variables, ref = tiny
  out = generators.save(str(tmp_path / 'g'), 'stylegan2', kwargs, variables)
  gen = generators.load(out)
  assert (gen.z_dim, gen.num_classes, gen.resolution, gen.channels) == (32, 10, 16, 3)
  z, labels = jnp.asarray(ref['z']), jnp.asarray(ref['labels'])
  img = gen(z, labels, truncation_psi=0.7, noise_mode='const')
  assert np.abs(_nchw(img) - ref['img_trunc07_noise_const']).max() <= TOL
  # The round trip is exact: same variables, identical images.
  jax.tree_util.tree_map(np.testing.assert_array_equal, gen.variables, variables)
  f = jax.jit(lambda v, z: gen.apply(v, z, labels, truncation_psi=0.7))
  np.testing.assert_array_equal(np.asarray(f(gen.variables, z)), np.asarray(f(variables, z)))

  # Pure and differentiable w.r.t. z (the finder network is trained through it).
  def loss(z):
    return jnp.mean(gen.apply(gen.variables, z, labels, truncation_psi=0.7) ** 2)

  g = jax.jit(jax.grad(loss))(z)
  assert g.shape == z.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0

  with open(os.path.join(out, 'generator.json')) as f:
    config = json.load(f)
  assert config['kind'] == 'stylegan2' and config['kwargs']['img_resolution'] == 16


@needs_fixture
def test_noise_modes_and_truncation_cutoff(tiny):
  kwargs, variables, ref = tiny
  G = sg.Generator.from_kwargs(kwargs)
  ws = jnp.asarray(ref['ws'][:2])
  syn = jax.jit(lambda ws, rng: sg.synthesis(G, variables, ws, 'random', rng))
  a, b = syn(ws, jax.random.PRNGKey(1)), syn(ws, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(syn(ws, jax.random.PRNGKey(1))))
  assert float(jnp.abs(a - b).max()) > 0
  with pytest.raises(ValueError, match='rng'):
    sg.synthesis(G, variables, ws, 'random')
  wc = jax.jit(lambda v: sg.mapping(G, v, ref['z'], ref['labels'], 0.7, truncation_cutoff=2))(
      variables)
  np.testing.assert_allclose(wc[:, :2], ref['ws_trunc'][:, :2], atol=TOL)
  np.testing.assert_allclose(wc[:, 2:], ref['ws'][:, 2:], atol=TOL)


@pytest.mark.parametrize('kwargs', [
    dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=1,
         mapping_kwargs={'num_layers': 1}, synthesis_kwargs={'channel_base': 64, 'channel_max': 8,
                                                             'architecture': 'orig'}),
    dict(z_dim=4, c_dim=3, w_dim=8, img_resolution=8, img_channels=3,
         mapping_kwargs={'num_layers': 2, 'embed_features': 4, 'layer_features': 6},
         synthesis_kwargs={'channel_base': 32, 'channel_max': 8, 'architecture': 'resnet',
                           'num_fp16_res': 2, 'conv_clamp': 256}),
], ids=['uncond_orig', 'cond_resnet'])
def test_other_configurations_init_and_run(kwargs):
  G = sg.Generator.from_kwargs(kwargs)
  shapes = gen_io.flatten(sg.abstract_variables(G))
  assert shapes['params/synthesis/b4/const'].shape == (8, 4, 4)
  assert shapes['buffers/synthesis/b8/conv0/noise_const'].shape == (8, 8)
  assert ('params/mapping/embed/weight' in shapes) == (kwargs['c_dim'] > 0)
  if kwargs['synthesis_kwargs']['architecture'] == 'resnet':
    assert shapes['params/synthesis/b8/skip/weight'].shape == (4, 8, 1, 1)
  else:
    assert 'params/synthesis/b4/torgb/weight' not in shapes  # 'orig': last block only.
  gdef = gen_io.generator_def('stylegan2', kwargs)
  variables = _random_variables(G)
  z = jax.random.normal(jax.random.PRNGKey(1), (2, kwargs['z_dim']))
  labels = jnp.array([0, 2]) if kwargs['c_dim'] else None
  img = jax.jit(lambda v: gdef.apply(v, z, labels, 0.5, 'const'))(variables)
  assert img.shape == (2, 8, 8, kwargs['img_channels'])
  assert bool(jnp.all(jnp.isfinite(img)))


def test_bad_kwargs_are_user_errors():
  with pytest.raises(UserError, match='img_resolution must be a power of 2'):
    sg.Generator.from_kwargs(dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=12, img_channels=3))
  with pytest.raises(UserError, match="unknown synthesis_kwargs \\['magnitude_ema_beta'\\]"):
    sg.Generator.from_kwargs(dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                                  synthesis_kwargs={'magnitude_ema_beta': 0.9}))


def test_load_errors_are_clear(tmp_path):
  kwargs = dict(z_dim=4, c_dim=0, w_dim=4, img_resolution=4, img_channels=3,
                mapping_kwargs={'num_layers': 1}, synthesis_kwargs={'channel_max': 4})
  with pytest.raises(UserError, match='does not exist'):
    generators.load(str(tmp_path / 'nope'))
  with pytest.raises(UserError, match='no generator.json'):
    generators.load(str(tmp_path))
  G = sg.Generator.from_kwargs(kwargs)
  variables = sg.init(G, jax.random.PRNGKey(0))  # The official initialisation.
  p, b = variables['params'], variables['buffers']
  assert float(jnp.std(p['mapping']['fc0']['weight'])) > 10  # randn / lr_multiplier 0.01
  np.testing.assert_array_equal(p['synthesis']['b4']['conv1']['affine']['bias'], 1.0)
  assert float(p['synthesis']['b4']['conv1']['noise_strength']) == 0.0
  np.testing.assert_array_equal(b['mapping']['w_avg'], 0.0)
  assert b['synthesis']['b4']['conv1']['noise_const'].shape == (4, 4)
  d = generators.save(str(tmp_path / 'g'), 'stylegan2', kwargs, variables)
  assert generators.load(d).num_classes == 0
  vpath = os.path.join(d, gen_io.VARIABLES_FILE)
  data = open(vpath, 'rb').read()
  with open(vpath, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(UserError, match='corrupt or truncated'):
    generators.load(d)
  os.remove(vpath)
  with pytest.raises(UserError, match='no variables.msgpack'):
    generators.load(d)
  # Weights of another architecture: the offending variables are named.
  other = dict(kwargs, w_dim=6)
  d2 = generators.save(str(tmp_path / 'g2'), 'stylegan2', other,
                       _random_variables(sg.Generator.from_kwargs(other)))
  os.replace(os.path.join(d2, gen_io.VARIABLES_FILE), vpath)
  with pytest.raises(UserError, match=r'wrong shape .*params/mapping/fc0/weight \(6, 4\) '
                                      r'\(expected \(4, 4\)\)'):
    generators.load(d)
  with open(os.path.join(d, 'generator.json'), 'w') as f:
    f.write('{"kind": "nonexistent", "kwargs": {}}')
  with pytest.raises(UserError, match="Unknown generator kind 'nonexistent'"):
    generators.load(d)


def test_loaded_generator_runs_its_convolutions_on_eigen():
  """`LoadedGenerator.__call__` compiles with `conv.compiler_options()` on CPU, as the training
  programs do: none of its convolutions in a YNNPACK fusion (XLA's default puts some there)."""
  kwargs = {'z_dim': 8, 'c_dim': 0, 'w_dim': 8, 'img_resolution': 8, 'img_channels': 3,
            'mapping_kwargs': {'num_layers': 1},
            'synthesis_kwargs': {'channel_base': 256, 'channel_max': 32, 'num_fp16_res': 0}}
  gdef = generators.generator_def('stylegan2', kwargs)
  gen = generators.LoadedGenerator('stylegan2', gdef, _random_variables(gdef.module))
  z = jnp.zeros((2, 8))
  args = (gen.variables, z, None)
  statics = {'truncation_psi': 1.0, 'noise_mode': 'const'}
  default = jax.jit(gdef.apply, static_argnames=tuple(statics)).lower(*args, **statics).compile()
  assert ynn_convolutions(default.as_text()) >= 1  # Else XLA's default changed.
  assert conv.compiler_options() is not None
  assert ynn_convolutions(gen._jitted.lower(*args, **statics).compile().as_text()) == 0
  np.testing.assert_allclose(np.asarray(gen(z)), np.asarray(default(*args)), atol=1e-5)
