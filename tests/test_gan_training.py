"""StyleGAN2-ADA training: D's official layout, each step lowers its own loss, EMA, and
`python -m mgr_jax.train_generator` end to end (PNG, metrics, loadable generator, resume)."""
import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mgr_jax.gan import steps as gt
from mgr_jax.gan.discriminator import Discriminator, minibatch_std
from mgr_jax.generators.io import flatten

# A GAN that compiles in seconds: 8 px, a handful of channels, 13 images per class.
TINY = {'resolution': 8, 'z_dim': 8, 'w_dim': 8, 'mapping_layers': 1, 'd_mapping_layers': 1,
        'channel_base': 64, 'channel_max': 16, 'batch_size': 8, 'num_steps': 4,
        'r1_interval': 2, 'ada_interval': 1, 'ada_kimg': 0.1, 'log_every': 2,
        'sample_every': 2, 'checkpoint_every': 2}


def tiny_gan_config():
  from configs.digits import get_config
  c = get_config()
  c.data.fraction = 0.1
  c.progress_bar = False
  for k, v in TINY.items():
    c.generator[k] = v
  return c


def test_discriminator_has_the_official_names_and_shapes():
  D = Discriminator.from_kwargs({'c_dim': 3, 'img_resolution': 16, 'img_channels': 3,
                                 'channel_base': 128, 'channel_max': 16,
                                 'mapping_kwargs': {'num_layers': 2}})
  shapes = {k: v.shape for k, v in flatten(jax.eval_shape(
      lambda: D.init(jax.random.PRNGKey(0), jnp.zeros((4, 16, 16, 3)), jnp.zeros((4, 3))))).items()}
  # channels(res) = min(128 // res, 16): b16 8 -> 16, b8 16 -> 16, epilogue 16 at 4x4.
  expected = {
      'b16/fromrgb/weight': (8, 3, 1, 1), 'b16/fromrgb/bias': (8,),
      'b16/conv0/weight': (8, 8, 3, 3), 'b16/conv0/bias': (8,),
      'b16/conv1/weight': (16, 8, 3, 3), 'b16/conv1/bias': (16,),
      'b16/skip/weight': (16, 8, 1, 1),
      'b8/conv0/weight': (16, 16, 3, 3), 'b8/conv0/bias': (16,),
      'b8/conv1/weight': (16, 16, 3, 3), 'b8/conv1/bias': (16,),
      'b8/skip/weight': (16, 16, 1, 1),
      'mapping/embed/weight': (16, 3), 'mapping/embed/bias': (16,),
      'mapping/fc0/weight': (16, 16), 'mapping/fc0/bias': (16,),
      'mapping/fc1/weight': (16, 16), 'mapping/fc1/bias': (16,),
      'b4/conv/weight': (16, 17, 3, 3), 'b4/conv/bias': (16,),  # +1 minibatch-std channel
      'b4/fc/weight': (16, 16 * 4 * 4), 'b4/fc/bias': (16,),
      'b4/out/weight': (16, 16), 'b4/out/bias': (16,),  # cmap_dim = channels(4)
  }
  assert shapes == {f'params/{k}': v for k, v in expected.items()}
  # Unconditional: no label mapping, one output.
  D0 = Discriminator(c_dim=0, img_resolution=8, img_channels=1, channel_base=64, channel_max=8)
  out, variables = jax.eval_shape(
      lambda: D0.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1))))
  assert out.shape == (2, 1) and 'mapping' not in variables['params']
  assert variables['params']['b4']['out']['weight'].shape == (1, 8)


def test_minibatch_std_groups_as_the_official_reshape():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2, 2, 3))
  y = np.asarray(minibatch_std(x, group_size=4))
  assert y.shape == (8, 2, 2, 4)
  xs = np.asarray(x)
  for i in range(8):  # Sample i is grouped with i ± 2 (N / G = 2), as torch's reshape(G, -1).
    group = xs[i % 2::2]
    np.testing.assert_allclose(y[i, :, :, 3], np.sqrt(group.var(0) + 1e-8).mean(), rtol=1e-5)


@pytest.fixture(scope='module')
def tiny_setup():
  from mgr_jax.gan.loop import make_setup
  gcfg = tiny_gan_config().generator
  gcfg.r1_gamma = 1.0
  gcfg.augment = ''  # Augmentation has its own tests (test_ada.py); this saves compile time.
  setup = make_setup(gcfg, num_classes=3)
  return setup, gt.create_state(setup, seed=0)


def test_each_step_lowers_its_own_loss(tiny_setup):
  """On fixed inputs, G's step lowers the G loss and D's step the D loss: each player
  descends its own objective. (The R1 step runs in the CLI test below.)"""
  setup, state = tiny_setup
  b, res = setup.batch_size, setup.G.img_resolution
  keys = jax.random.split(jax.random.PRNGKey(1), 6)
  z = jax.random.normal(keys[0], (b, setup.G.z_dim))
  c = jax.nn.one_hot(jnp.arange(b) % 3, 3)
  reals = jnp.tanh(jax.random.normal(keys[1], (b, res, res, 3)))
  fakes, _ = jax.jit(lambda s: gt.run_G(setup, s.g_params, s.g_buffers, z, c, keys[2]))(state)

  g_step = jax.jit(lambda s: gt.g_step(s, setup, z, c, keys[3]))
  d_step = jax.jit(lambda s: gt.d_step(s, setup, fakes, c, reals, c, keys[4]))
  g_losses, d_losses = [], []
  s = state
  for _ in range(4):
    s, loss = g_step(s)
    g_losses.append(float(loss))
  s = state
  for _ in range(4):
    s, loss, _ = d_step(s)
    d_losses.append(float(loss))
  assert g_losses[-1] < g_losses[0], g_losses
  assert d_losses[-1] < d_losses[0], d_losses
  assert np.all(np.isfinite(g_losses + d_losses))


def test_ema_half_life_and_ramp_up(tiny_setup):
  setup, _ = tiny_setup
  assert float(gt.ema_beta(setup, jnp.asarray(0))) == 0.0  # G_ema starts as G.
  late = float(gt.ema_beta(setup, jnp.asarray(10 ** 7)))
  np.testing.assert_allclose(late, 0.5 ** (setup.batch_size / (setup.ema_kimg * 1000)), rtol=1e-6)
  ramp = float(gt.ema_beta(setup, jnp.asarray(100)))  # half-life = 100 * 8 * 0.05 images
  np.testing.assert_allclose(ramp, 0.5 ** (8 / (100 * 8 * 0.05)), rtol=1e-6)


# ------------------------------------------------------------------------------- the CLI

CLI = [sys.executable, '-m', 'mgr_jax.train_generator', '--config=configs/digits.py']


def _overrides():
  values = {'data.fraction': 0.1, 'progress_bar': False,
            **{f'generator.{k}': v for k, v in TINY.items()}}
  return [f'--config.{k}={v}' for k, v in values.items()]


def _run(workdir):
  # A persistent compilation cache makes the resumed run skip most of the compiling.
  env = dict(os.environ, MGR_JAX_CACHE_DIR=str(workdir) + '_jax_cache',
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  proc = subprocess.run(CLI + [f'--workdir={workdir}', *_overrides()], cwd=REPO,
                        capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def _variables(directory):
  with open(os.path.join(directory, 'variables.msgpack'), 'rb') as f:
    return f.read()


def test_cli_end_to_end_then_resume_and_finished(tmp_path):
  from mgr_jax import generators
  workdir = tmp_path / 'gan'
  _run(workdir)
  for name in ('samples_000002.png', 'samples_000004.png', 'samples_final.png',
               'metrics.jsonl', 'gan_config.json'):
    assert (workdir / name).is_file(), name
  from PIL import Image
  with Image.open(workdir / 'samples_final.png') as im:  # 10 x 10 cells of 8 px, x8, 2 px apart.
    assert im.size == (10 * 66 - 2, 10 * 66 - 2)
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [2, 4]
  assert {'g_loss', 'd_loss', 'r1_penalty', 'ada_p', 'images_per_s'} <= set(rows[0])
  gen = generators.load(str(workdir / 'generator'))
  assert (gen.num_classes, gen.resolution, gen.z_dim) == (10, 8, 8)
  images = gen(jnp.zeros((3, 8)), jnp.array([0, 1, 2]))
  assert images.shape == (3, 8, 8, 3) and np.all(np.isfinite(images))
  first = _variables(workdir / 'generator')

  # A crash after the step-2 checkpoint: the same command resumes and ends identically.
  shutil.rmtree(workdir / 'generator')
  shutil.rmtree(workdir / 'checkpoints' / '4')
  out = _run(workdir)
  assert 'Resuming from step 2 of 4' in out, out
  assert _variables(workdir / 'generator') == first
  assert [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')] == [2, 4]

  out = _run(workdir)
  assert 'already been trained' in out, out

  # What a classifier run without generator.checkpoint uses: a finished <workdir>/generator.
  from mgr_jax.gan.loop import TRAINING_SUBDIR
  from mgr_jax.train.setup import generator_dir
  main_workdir = tmp_path / 'main'
  shutil.copytree(workdir / 'generator', main_workdir / 'generator')
  os.makedirs(main_workdir / TRAINING_SUBDIR)
  shutil.copy(workdir / 'gan_config.json', main_workdir / TRAINING_SUBDIR)
  assert generator_dir(tiny_gan_config(), str(main_workdir)) == str(main_workdir / 'generator')


def test_obtain_generator_rejects_a_bad_checkpoint(tmp_path):
  from mgr_jax.errors import UserError
  from mgr_jax.train.setup import obtain_generator
  c = tiny_gan_config()
  c.generator.checkpoint = str(tmp_path / 'missing')
  with pytest.raises(UserError, match='does not exist'):
    obtain_generator(c, str(tmp_path / 'w'), num_classes=10)


def test_bad_generator_settings_are_user_errors():
  from mgr_jax.errors import UserError
  from mgr_jax.gan.loop import validate
  for key, value, match in (('resolution', 12, 'power of 2'), ('batch_size', 6, 'multiple'),
                            ('augment', 'bgcx', 'augment'), ('g_lr', 0.0, 'g_lr')):
    c = tiny_gan_config()
    c.generator[key] = value
    with pytest.raises(UserError, match=match):
      validate(c.generator)


def test_sharded_gan_step_equals_single_device():
  """On 8 devices (the batch split over them) a step with R1 and an ADA adjustment computes
  what it computes on one: losses, R1 and ADA's sign statistic are global-batch means. Each
  device does a fraction of the work (XLA's FLOPs per device of the compiled step)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from mgr_jax.gan.loop import data_mesh, make_setup
  gcfg = tiny_gan_config().generator
  # Augmenting from step 0; 'blit' compiles far faster than 'bgc' and is split the same way
  # (per-image draws over the batch).
  gcfg.r1_gamma, gcfg.augment, gcfg.ada_p_init = 1.0, 'blit', 0.5
  setup = make_setup(gcfg, num_classes=3)
  rng = np.random.default_rng(0)
  data = {'images': rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8),
          'labels': rng.integers(0, 3, 24).astype(np.int32)}
  results, flops = [], []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = data_mesh(setup.batch_size, devices)
    replicated = NamedSharding(mesh, P())
    args = (jax.device_put(gt.create_state(setup, 0, gcfg.ada_p_init), replicated),
            jax.device_put(data, replicated), jax.random.PRNGKey(0))
    compiled = jax.jit(functools.partial(gt.train_step, setup=setup, mesh=mesh, r1=True)).lower(
        *args).compile()
    cost = compiled.cost_analysis()
    flops.append((cost[0] if isinstance(cost, list) else cost)['flops'])
    state, metrics = compiled(*args)
    results.append((jax.tree.map(np.asarray, state), jax.device_get(metrics)))
  (single, m1), (sharded, m8) = results
  assert m1['r1_done'] == 1 and m1['ada_p'] != gcfg.ada_p_init  # Both phases ran.
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-5, err_msg=k)
  # Parameters to 1e-4: Adam divides by sqrt(v) + eps, so a weight whose gradient is of order
  # eps moves by lr times that gradient's relative rounding (on an AMD EPYC one weight of 576
  # differed by 2.1e-5 between the two reduction orders, before and after session 17).
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(single), jax.tree.leaves(sharded)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=jax.tree_util.keystr(path))
  # 2.96e7 -> 4.27e6 (0.144): G's style-mixing and noise draws and ADA's parameter draws stay
  # replicated (small), the convolutions are split.
  assert flops[1] <= 1.25 * flops[0] / 8, flops
