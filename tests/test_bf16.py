"""config.dtype=bfloat16: bf16 activations, float32 parameters, optimiser state and loss."""
import jax
import jax.numpy as jnp
import numpy as np

from mgr_jax.data import load_splits
from mgr_jax.train.setup import build_run


def test_bfloat16_step_runs_in_bf16_keeps_f32_state_and_matches_f32_loss(tiny_config):
  c = tiny_config
  c.method, c.batch_size = 'base', 16  # PCR's and MGR's passes use the same model.
  splits = load_splits(c.data)
  batch = {'image': splits.train.images[:16], 'label': splits.train.labels[:16]}
  out = {}
  for dtype in ('float32', 'bfloat16'):
    c.dtype = dtype
    run = build_run(c, splits.num_classes, len(splits.train), devices=jax.devices()[:1])
    start = jax.tree.map(np.asarray, run.state.params)  # The step donates the state.
    args = (run.state, run.shard_batch(batch), jax.random.PRNGKey(0), run.gen_vars)
    lowered = run.jit_step().lower(*args)
    hlo = lowered.as_text()
    state, metrics = lowered.compile()(*args)
    out[dtype] = (hlo, state, jax.device_get(metrics))
  del state
  (hlo32, state32, m32), (hlo16, state16, m16) = out['float32'], out['bfloat16']
  assert 'bf16' not in hlo32 and 'convolution' in hlo16 and 'bf16' in hlo16
  kinds = {x.dtype for x in jax.tree.leaves((state16.params, state16.opt_state,
                                             state16.batch_stats)) if jnp.issubdtype(
                                                 x.dtype, jnp.floating)}
  assert kinds == {jnp.dtype('float32')}
  assert np.isfinite(m16['loss']) and abs(m16['loss'] - m32['loss']) < 0.02 * abs(m32['loss'])
  # The update differs by rounding only: it points the same way as float32's (0.91 seen).
  moved = lambda s: np.concatenate([np.ravel(np.asarray(a) - np.asarray(b)) for a, b in zip(
      jax.tree.leaves(s.params), jax.tree.leaves(start))])
  d32, d16 = moved(state32), moved(state16)
  assert np.dot(d32, d16) / (np.linalg.norm(d32) * np.linalg.norm(d16)) > 0.8
