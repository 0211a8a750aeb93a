"""Keep freed host memory in the process when XLA runs on the CPU: no page faults per step.

XLA's CPU runtime allocates each execution's temporaries as one buffer, on its own worker
threads, with glibc's malloc: 77 MiB for the base step at 32 px, 43-99 MiB for pcr and mgr at
the digits shape, 146-271 MiB for them at 32 px (`compiled.memory_analysis()`). glibc serves a
request above its mmap threshold (at most 32 MiB; and always, on a worker thread's arena, one
above 64 MiB) with a fresh `mmap` and unmaps it on `free`, so every step touches its
temporaries' pages anew: ~19,000 page faults and 42-45 ms of kernel time per forward +
backward of the 32 px classifier on our 2-core AMD EPYC, against 1 ms for PyTorch, whose
tensors stay under the threshold and are reused (`getrusage`; docs/performance.md, session 20).

`keep_freed_memory` tells glibc (`mallopt`) to use one arena for all threads, never to `mmap`
a chunk and never to trim the heap: the step's buffer is then reused from the heap, as
PyTorch's are. It is process-wide and must come before `import jax`, whose first thread
already takes a second arena (JAX's CPU threads would then share it and keep mapping): so
importing `mgr_jax` (or `experiments`, which imports it first) does it, once. The price is that
the process keeps its peak heap instead of returning it to the system.

Only on Linux with glibc, only when JAX will run on the CPU (no JAX_PLATFORMS naming another
platform, no accelerator plugin installed), and not when ``$MGR_JAX_KEEP_FREED_MEMORY`` is 0.
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import sys

ENV = 'MGR_JAX_KEEP_FREED_MEMORY'
# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest.


def _accelerator_possible() -> bool:
  """Whether JAX may pick a platform other than the CPU (without starting a backend)."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() != 'cpu'
  return (bool(importlib.metadata.entry_points(group='jax_plugins'))
          or importlib.util.find_spec('jax_plugins') is not None
          or importlib.util.find_spec('libtpu') is not None)


def keep_freed_memory() -> bool:
  """glibc keeps freed memory (module docstring); True if it was set, False if left as is."""
  if os.environ.get(ENV, '').strip().lower() in ('0', 'off', 'false', 'no'):
    return False
  if not sys.platform.startswith('linux') or _accelerator_possible():
    return False
  libc = ctypes.CDLL(None)  # The C library this process runs on.
  if not hasattr(libc, 'gnu_get_libc_version'):  # mallopt's parameters are glibc's.
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)))
