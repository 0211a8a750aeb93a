"""XLA compiler options for a training step: the CPU scheduler each method's step runs best with.

XLA's CPU backend orders a program's operations with one of three schedulers. Which is
fastest depends on the program, not the data: on our 2-core CPU the memory-optimising one
runs the digits `base` step 8-13 % faster and every step with a generator (pcr, gda, mgr) or
with two classifier passes (real_cr) 8-11 % slower (docs/performance.md, session 13). A
scheduler only orders the same operations: the step's values are bit-for-bit the same
(tests/test_xla_options.py). So each `Method` names its scheduler and `step_compiler_options`
turns that into options for `jax.jit`, on the CPU backend only (GPU/TPU compile as before).
"""
import functools
from typing import Optional

import jax

CPU_SCHEDULERS = {
    'default': 'CPU_SCHEDULER_TYPE_DEFAULT',
    'memory': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
    'concurrency': 'CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED',
}


@functools.cache
def _xla_accepts(name: str, value: str) -> bool:
  """Whether this jaxlib's XLA knows the option (an option XLA does not know fails the
  compilation; a newer or older jaxlib may name it differently)."""
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options={name: value})
  except jax.errors.JaxRuntimeError:
    return False
  return True


def step_compiler_options(cpu_scheduler: str = 'default') -> Optional[dict]:
  """`jax.jit`'s compiler_options for a step whose method prefers `cpu_scheduler` (a key of
  CPU_SCHEDULERS); None (XLA's defaults) off the CPU, for 'default', or where this XLA does
  not know the option."""
  if cpu_scheduler not in CPU_SCHEDULERS:
    raise ValueError(f'cpu_scheduler {cpu_scheduler!r}: expected one of '
                     f'{", ".join(CPU_SCHEDULERS)}')
  if cpu_scheduler == 'default' or jax.default_backend() != 'cpu':
    return None
  option = ('xla_cpu_scheduler_type', CPU_SCHEDULERS[cpu_scheduler])
  return dict([option]) if _xla_accepts(*option) else None
