"""When XLA runs on the CPU: each step's temporaries reused from the heap, not mapped anew.

XLA's CPU runtime allocates an execution's temporaries as one buffer with glibc's malloc: 77
MiB for the base step at 32 px, 43-99 MiB for pcr and mgr at the digits shape, 146-271 MiB
for them at 32 px (`compiled.memory_analysis()`). glibc serves a request above its mmap
threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on `free`; and JAX runs each
program on a worker thread, whose malloc arena cannot hold a buffer above 64 MiB at all. So
every step touched its temporaries' pages anew: ~19,000 page faults and 42-52 ms of kernel
time per 32 px base step on our 2-core AMD EPYC, 37,000 and 70-100 ms per pcr step (`getrusage`),
against ~1 ms for PyTorch, whose tensors stay under the threshold and are reused.

`reuse_step_buffers` (called by every entry point: `mgr_jax.cli.parse_flags` and the
benchmarks) makes JAX run single-device CPU programs on the calling thread
(`jax_cpu_enable_async_dispatch` off), so the buffer comes from the main heap, and tells glibc
(`mallopt`) never to `mmap` a chunk and never to trim the heap: the buffer is then reused, as
PyTorch's are. Steps are bit-for-bit the same. Measured (docs/performance.md, session 20):
page faults per step ~0, kernel time ~1 ms; 32 px base 117-141 ms against 151-170 ms before.
(One arena for all threads, the other way to keep the buffer on the main heap, made the threads
queue on its lock: ~1,700 context switches per pcr step against ~60, and no gain.)

The price: the process keeps its peak heap instead of returning it to the system, and the
Python thread waits for each CPU program instead of dispatching the next one (on a CPU the
program uses the cores anyway). Only on Linux with glibc, only when JAX will run on the CPU (no
JAX_PLATFORMS naming another platform, no accelerator plugin installed), before JAX starts its
CPU client, and not when ``$MGR_JAX_REUSE_STEP_BUFFERS`` is 0.
"""
import ctypes
import importlib.util
import os
import sys

ENV = 'MGR_JAX_REUSE_STEP_BUFFERS'
# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest.


def _accelerator_possible() -> bool:
  """Whether JAX may pick a platform other than the CPU (without starting a backend)."""
  import importlib.metadata  # Here: ~18 ms that `--help` (mgr_jax.cli imports this) need not pay.
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() != 'cpu'
  return (bool(importlib.metadata.entry_points(group='jax_plugins'))
          or importlib.util.find_spec('jax_plugins') is not None
          or importlib.util.find_spec('libtpu') is not None)


def reuse_step_buffers() -> bool:
  """The settings of the module docstring; True if made, False if everything is left as is."""
  if os.environ.get(ENV, '').strip().lower() in ('0', 'off', 'false', 'no'):
    return False
  if not sys.platform.startswith('linux') or _accelerator_possible():
    return False
  libc = ctypes.CDLL(None)  # The C library this process runs on.
  if not hasattr(libc, 'gnu_get_libc_version'):  # mallopt's parameters are glibc's.
    return False
  import jax  # Here: --help and the checks above need no JAX.
  try:
    jax.config.update('jax_cpu_enable_async_dispatch', False)
  except AttributeError:  # A JAX without the option: then the heap would not get the buffer.
    return False
  return all(libc.mallopt(param, value) == 1
             for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)))
