"""mgr_jax.host_memory: after the entry points' flag parsing, temporaries stop page-faulting."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from mgr_jax import host_memory

TEMP_MIB = 80

# A program whose 80 MiB temporary (the first product, read by the second) is allocated by
# XLA's CPU runtime on every call: the median page faults of 10 calls after 3 warm-up calls.
# (The median: with the setting, the heap still grows by one buffer now and then.)
# argv[1] 'cli': parse flags as every entry point does (mgr_jax.cli), which sets host_memory.
_SCRIPT = r'''
import resource, statistics, sys
import jax, jax.numpy as jnp
if sys.argv[1] == 'cli':
  from mgr_jax import cli
  cli.parse_flags(['prog'])
x = jnp.ones((%d << 16, 16), jnp.float32)
f = jax.jit(lambda x: (lambda y: y.T @ y)(jnp.tanh(x @ jnp.eye(16))))
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
faults = []
for i in range(13):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(temp, statistics.median(faults[3:]))
''' % (TEMP_MIB // 4)


def _faults_per_call(mode, reuse):
  env = dict(os.environ, **{host_memory.ENV: reuse})
  proc = subprocess.run([sys.executable, '-c', _SCRIPT, mode], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  temp, faults = proc.stdout.split()[-2:]
  return int(temp), float(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux') or host_memory._accelerator_possible(),
                    reason='glibc allocator setting: Linux with JAX on the CPU only')
def test_entry_points_stop_per_call_page_faults():
  pages = TEMP_MIB * 2**20 / 4096
  temp, default = _faults_per_call('plain', reuse='0')
  assert temp >= TEMP_MIB * 2**20, temp  # The program does have the large temporary.
  # glibc's default: the buffer is mapped afresh each call, so each of its pages faults.
  assert default > 0.5 * pages, default
  temp, kept = _faults_per_call('cli', reuse='1')
  assert kept < 0.05 * pages, (kept, default)


def test_left_alone_when_asked_or_off_cpu(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, '0')
  assert host_memory.reuse_step_buffers() is False
  monkeypatch.delenv(host_memory.ENV)
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert host_memory._accelerator_possible()
  assert host_memory.reuse_step_buffers() is False
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert not host_memory._accelerator_possible()
