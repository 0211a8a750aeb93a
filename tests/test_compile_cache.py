"""The persistent compilation cache: a second process compiles nothing the first compiled."""
import os
import shutil
import subprocess
import sys

from conftest import REPO

# A tiny `base` run's setup and step, compiled in a fresh process (one CPU device) with the
# cache at argv[1]. Threshold 0: every compilation is written, so a second process that writes
# no new entry had a cache hit for every program it needed. Width 0.25: layer1's 16-channel
# convolutions take the C++ kernel gradient (where g++ is), a custom call the loaded
# executable must find registered.
_SCRIPT = r'''
import sys
import jax, numpy as np
from mgr_jax import compile_cache
compile_cache.enable(sys.argv[1], min_compile_seconds=0.0)
from configs.digits import get_config
from mgr_jax.train.setup import build_run
c = get_config()
c.method, c.model.width, c.batch_size, c.eval_batch_size = 'base', 0.25, 8, 8
run = build_run(c, 10, 80)
rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
         'label': np.arange(8, dtype=np.int32)}
args = (run.state, run.shard_batch(batch), jax.random.PRNGKey(0), run.gen_vars)
from mgr_jax.models import native_conv
print(native_conv.TARGET in run.jit_step().lower(*args).as_text())
state, metrics = run.jit_step()(*args)
print(float(metrics['loss']))
'''


def _run(cache_dir):
  # Both processes inherit conftest.py's XLA_FLAGS (they are part of the cache key).
  proc = subprocess.run([sys.executable, '-c', _SCRIPT, str(cache_dir)], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  native, loss = proc.stdout.split()[-2:]
  assert native == str(shutil.which(os.environ.get('CXX', 'g++')) is not None), proc.stderr
  return float(loss)


def test_second_process_compiles_nothing_new(tmp_path):
  from mgr_jax import compile_cache
  cache = tmp_path / 'cache'
  loss = _run(cache)
  first = compile_cache.entries(str(cache))
  assert any(n.startswith('jit_base_step-') for n in first), first
  assert _run(cache) == loss  # The loaded executable computes the same step.
  assert compile_cache.entries(str(cache)) == first  # Every program came from the cache.


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  from mgr_jax import compile_cache
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('MGR_JAX_CACHE_DIR', str(tmp_path / 'c'))
  assert compile_cache.default_dir() == str(tmp_path / 'c')
  monkeypatch.setenv('MGR_JAX_CACHE_DIR', 'off')
  assert compile_cache.default_dir() is None
  assert compile_cache.enable() is None  # Off: JAX's configuration is left alone.
  monkeypatch.delenv('MGR_JAX_CACHE_DIR')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compile_cache.default_dir() == os.path.join(str(tmp_path / 'xdg'), 'mgr_jax', 'jax')


def test_jax_environment_keeps_its_threshold(monkeypatch, tmp_path):
  """JAX's own JAX_PERSISTENT_CACHE_* variables (the tests' subprocesses set them) win."""
  import jax
  from mgr_jax import compile_cache
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '7')
  try:
    assert compile_cache.enable(str(tmp_path / 'c')) == str(tmp_path / 'c')
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'c')
    assert jax.config.jax_persistent_cache_min_compile_time_secs == before[1]
    monkeypatch.delenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')
    compile_cache.enable(str(tmp_path / 'c'), min_compile_seconds=0.25)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.25
  finally:
    jax.config.update('jax_compilation_cache_dir', before[0])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', before[1])
