"""BigGAN: Flax port vs pytorch-pretrained-BigGAN, converter CLI and errors.

A small random BigGAN (every weight, BN statistics table and spectral-norm u/v randomised) is
saved as pytorch_model.bin + config.json, converted with `python -m converters.biggan`, loaded
with `mgr_jax.generators.load`, and its images compared with the package's eval-mode output.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch (requirements-test.txt) is not installed')
ppb = pytest.importorskip(
    'pytorch_pretrained_biggan',
    reason='pytorch-pretrained-biggan (requirements-test.txt) is not installed: no reference')

from converters import biggan as converter  # pylint: disable=wrong-import-position
from mgr_jax import generators  # pylint: disable=wrong-import-position
from mgr_jax.errors import UserError  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 32 px: 4 -> 8 -> 16 -> 32, channel drops on and off up-sampling, attention at 16 px (16 ch).
TINY = dict(output_dim=32, z_dim=16, class_embed_dim=16, channel_width=4, num_classes=10,
            layers=[[False, 16, 16], [True, 16, 8], [True, 8, 4], [False, 4, 4],
                    [True, 4, 2], [False, 2, 1]],
            attention_layer_position=4, eps=1e-4, n_stats=51)


def _randomised_reference(config):
  torch.manual_seed(0)
  model = ppb.BigGAN(ppb.BigGANConfig.from_dict(config)).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for key, t in model.state_dict().items():
      if key.endswith('running_vars'):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif key.endswith('running_means'):
        t.copy_(torch.randn(t.shape, generator=g) * 0.3)
      elif key.endswith('gamma'):  # zero at init: attention would be skipped
        t.copy_(torch.randn(t.shape, generator=g) + 1.0)
      elif not key.endswith(('weight_u', 'weight_v')):
        t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    # u, v near (not at) the singular vectors: sigma = u.Wv is sane but differs from ||W||_2,
    # so only the package's exact eval-mode formula matches.
    for module in model.modules():
      if hasattr(module, 'weight_u'):
        w = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
        v = torch.nn.functional.normalize(w.t() @ torch.randn(w.shape[0], generator=g), dim=0)
        u = torch.nn.functional.normalize(w @ v, dim=0)
        module.weight_u.copy_(u + 0.1 * torch.randn(u.shape, generator=g))
        module.weight_v.copy_(v + 0.1 * torch.randn(v.shape, generator=g))
  return model


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'converters.biggan', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('biggan')
  model = _randomised_reference(TINY)
  torch.save(model.state_dict(), tmp / 'pytorch_model.bin')
  (tmp / 'config.json').write_text(json.dumps(TINY))
  out = tmp / 'gen'
  proc = _cli('--src', str(tmp / 'pytorch_model.bin'), '--config', str(tmp / 'config.json'),
              '--out', str(out))
  assert proc.returncode == 0, proc.stderr
  return model, tmp, generators.load(str(out))


def _reference(model, z, labels, truncation):
  onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), TINY['num_classes']).float()
  with torch.no_grad():
    return model(torch.from_numpy(z), onehot, truncation).numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def images_and_grads(converted):
  """One compiled function (truncation traced) for images and d sum(x^2) / dz: compiles once."""
  _, _, gen = converted

  def f(z, labels, truncation):
    loss = lambda z: jnp.sum(gen.apply(gen.variables, z, labels, truncation_psi=truncation) ** 2)
    images = gen.apply(gen.variables, z, labels, truncation_psi=truncation)
    return images, jax.grad(loss)(z)

  return jax.jit(f)


Z = np.random.RandomState(0).randn(4, 16).astype(np.float32)
LABELS = np.array([0, 3, 7, 9])


def test_loaded_generator_matches_package(converted):
  model, _, gen = converted
  assert (gen.z_dim, gen.num_classes, gen.resolution) == (16, 10, 32)
  # The loader's call (truncation a Python float: the package's float64 row lookup), at a
  # truncation a quarter of the way between table rows: the package weights row floor by the
  # fraction itself, so an ordinary lerp would fail here by ~0.1.
  out = np.asarray(gen(jnp.asarray(Z), jnp.asarray(LABELS), truncation_psi=0.345))
  ref = _reference(model, Z, LABELS, 0.345)
  assert out.shape == (4, 32, 32, 3) and out.dtype == np.float32
  diff = np.abs(out - ref).max()
  print(f'truncation 0.345 (loader, static): max |flax - torch| = {diff:.2e}')
  assert diff <= 1e-3
  # BigGAN's own spelling of the knob gives the same images.
  same = np.asarray(gen(jnp.asarray(Z), jnp.asarray(LABELS), truncation=0.345))
  np.testing.assert_array_equal(out, same)
  assert ref.std() > 0.2 and np.mean(np.abs(ref) > 0.99) < 0.05  # not saturated / trivial


@pytest.mark.parametrize('truncation', [1.0, 0.4, 0.37, 0.345])
def test_traced_truncation_matches_package(converted, images_and_grads, truncation):
  model, _, _ = converted
  out, _ = images_and_grads(Z, LABELS, jnp.float32(truncation))
  ref = _reference(model, Z, LABELS, truncation)
  diff = np.abs(np.asarray(out) - ref).max()
  print(f'truncation {truncation} (traced): max |flax - torch| = {diff:.2e}')
  assert diff <= 1e-3
  other = _reference(model, Z, LABELS, 0.7)
  assert np.abs(ref - other).max() > 1e-2  # the statistics table matters


def test_gradients_wrt_z_are_finite(images_and_grads):
  _, grad = images_and_grads(Z, LABELS, jnp.float32(0.4))
  assert grad.shape == Z.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).max()) > 0


def test_key_and_shape_mismatch_lists_keys(converted, tmp_path, capsys):
  model, tmp, _ = converted
  sd = dict(model.state_dict())
  del sd['generator.layers.2.conv_1.weight_v']
  sd['generator.extra.weight'] = torch.zeros(3)
  sd['embeddings.weight'] = torch.zeros(16, 11)
  torch.save(sd, tmp_path / 'bad.bin')
  rc = converter.main(['--src', str(tmp_path / 'bad.bin'), '--config', str(tmp / 'config.json'),
                       '--out', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert rc != 0
  for key in ('generator.layers.2.conv_1.weight_v', 'generator.extra.weight',
              'embeddings.weight'):
    assert key in err, err
  assert not (tmp_path / 'out').exists()
  with pytest.raises(UserError, match='missing keys'):
    converter.convert({k: v.numpy() for k, v in sd.items()}, TINY)


def test_bad_config_and_truncation_are_user_errors(converted):
  _, _, gen = converted
  with pytest.raises(UserError, match='out = in / 2'):
    converter.convert({}, dict(TINY, layers=[[False, 16, 4], [True, 4, 1]]))
  with pytest.raises(UserError, match='truncation'):
    gen(jnp.zeros((1, 16)), jnp.array([0]), truncation_psi=0.0)
  with pytest.raises(UserError, match='labels'):
    gen(jnp.zeros((1, 16)))


# Layouts of the published biggan-deep-128 (the package's default config), -256 and -512
# (two blocks per resolution, attention at 64 px).
_DEEP = [[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8], [False, 8, 8]]
LAYOUTS = {
    128: None,
    256: _DEEP + [[True, 8, 8], [False, 8, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2],
                  [False, 2, 2], [True, 2, 1]],
    512: _DEEP + [[True, 8, 8], [False, 8, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2],
                  [False, 2, 2], [True, 2, 1], [False, 1, 1], [True, 1, 1]],
}


@pytest.mark.parametrize('resolution', sorted(LAYOUTS))
def test_published_layouts_map_every_key(resolution):
  config = ppb.BigGANConfig().to_dict()
  if LAYOUTS[resolution] is not None:
    config.update(output_dim=resolution, layers=LAYOUTS[resolution])
  with torch.device('meta'):  # shapes only, nothing allocated
    model = ppb.BigGAN(ppb.BigGANConfig.from_dict(config))
  want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  kwargs = converter.biggan.config_kwargs(config)
  got = {k: s for _, keys, _ in converter._plan(kwargs) for k, s in keys.items()}  # pylint: disable=protected-access
  assert got == want
  assert converter.biggan.BigGAN(**kwargs).resolution == resolution
