"""Shared test setup: 8 forced CPU devices (for sharding tests), tiny configs, paths."""
import os
import sys

# XLA's backend (LLVM) optimisation level 1 compiles faster than the default 3, and its
# programs gave bit-for-bit the same base, pcr and mgr updates (session 15). Not level 0:
# with jaxlib 0.10.2 on CPU it miscompiles (the mgr step's synthetic term 0, NaN parameters).
# Inherited by the commands the tests start. MGR_JAX_TEST_OPT_LEVEL=3: the default programs.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level='
                           + os.environ.get('MGR_JAX_TEST_OPT_LEVEL', '1')).strip()

import jax  # noqa: E402

# Must run before any JAX computation; single-device code still runs on device 0.
jax.config.update('jax_num_cpu_devices', 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Tests of minutes of CPU each (multi-process runs, PyTorch parity of a whole step, ablation
# runs): marked `slow`, run with MGR_JAX_SLOW_TESTS=1; CI (2 xdist workers) must stay under 25 minutes
# on 2 cores.
RUN_SLOW = os.environ.get('MGR_JAX_SLOW_TESTS') == '1'


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: minutes of CPU; runs only with MGR_JAX_SLOW_TESTS=1')


def pytest_collection_modifyitems(config, items):
  if RUN_SLOW:
    return
  skip = pytest.mark.skip(reason='slow (minutes of CPU): set MGR_JAX_SLOW_TESTS=1 to run it')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)

def assert_close_to_scale(a, b, rtol=2e-5):
  """Equal to float32 rounding: the largest error small against the values' own scale."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  scale = max(np.abs(b).max(), 1e-12)
  assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared')
if REPO not in sys.path:
  sys.path.insert(0, REPO)


@pytest.fixture(scope='session', autouse=True)
def _compile_cache_dir(tmp_path_factory):
  """Command-line runs in the tests share one fresh compilation cache, not the user's."""
  old = os.environ.get('MGR_JAX_CACHE_DIR')
  os.environ['MGR_JAX_CACHE_DIR'] = str(tmp_path_factory.mktemp('jax_cache'))
  yield
  if old is None:
    del os.environ['MGR_JAX_CACHE_DIR']
  else:
    os.environ['MGR_JAX_CACHE_DIR'] = old


def tiny_overrides(**extra):
  """CLI overrides that make configs/digits.py train in seconds."""
  values = {'method': 'base', 'num_epochs': 3, 'data.image_size': 16, 'data.fraction': 0.25,
            'model.width': 0.125, 'batch_size': 32, 'progress_bar': False,
            'min_train_steps': 0, 'checkpoint_every_seconds': 0}
  values.update(extra)
  return [f'--config.{k}={v}' for k, v in values.items()]


@pytest.fixture
def tiny_config():
  from configs.digits import get_config
  c = get_config()
  c.method = 'base'
  c.num_epochs = 3
  c.data.image_size = 16
  c.data.fraction = 0.25
  c.model.width = 0.125
  c.batch_size = 32
  c.progress_bar = False
  c.min_train_steps = 0  # Tests train for exactly num_epochs.
  c.checkpoint_every_seconds = 0.0  # Every epoch, so resume tests can stop after any.
  c.synth.lam_warmup = 0.0  # Full λ from step 0, so one step shows each term's effect.
  return c
