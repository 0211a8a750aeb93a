"""The CPU scheduler a method's step is compiled with changes the program's order, not its values."""
import functools

import jax
import numpy as np
import pytest

from mgr_jax import xla_options
from mgr_jax.methods import METHODS
from mgr_jax.train.setup import build_run


def _batch(n=16, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          'label': rng.integers(0, 10, n).astype(np.int32)}


def test_base_step_with_its_scheduler_is_bit_identical_to_xla_defaults(tiny_config):
  c = tiny_config
  c.batch_size = 16
  assert METHODS['base'].cpu_scheduler == 'memory'
  options = xla_options.step_compiler_options('memory')
  assert options is not None, 'this XLA does not know the memory-optimising CPU scheduler'
  run = build_run(c, 10, 160)
  args = [run.shard_batch(_batch(seed=s)) for s in range(2)]
  rng = jax.random.PRNGKey(0)
  ours = run.jit_step().lower(run.state, args[0], rng, run.gen_vars).compile()
  plain = jax.jit(functools.partial(run.method.step, ctx=run.ctx), donate_argnums=0).lower(
      run.state, args[0], rng, run.gen_vars).compile()
  # The option reached XLA: the two programs are scheduled differently...
  assert ours.as_text() != plain.as_text()
  copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)
  a, b = copy(run.state), copy(run.state)
  for batch in args:
    a, metrics_a = ours(a, batch, rng, run.gen_vars)
    b, metrics_b = plain(b, batch, rng, run.gen_vars)
  # ...and compute the same values, to the bit (params, BatchNorm statistics, momentum).
  for x, y in zip(jax.tree.leaves((a, metrics_a)), jax.tree.leaves((b, metrics_b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_options_only_where_asked_and_known():
  assert xla_options.step_compiler_options('default') is None
  assert xla_options.step_compiler_options('memory') == {
      'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  # An option value this XLA does not know would fail every compilation: it is left out.
  assert not xla_options._xla_accepts('xla_cpu_scheduler_type', 'NO_SUCH_SCHEDULER')
  with pytest.raises(ValueError, match='memory'):
    xla_options.step_compiler_options('fastest')
