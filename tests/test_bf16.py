"""config.dtype=bfloat16: bf16 activations, float32 parameters, optimiser state and loss."""
import jax
import jax.numpy as jnp
import numpy as np

from mgr_jax.data import load_splits
from mgr_jax.methods.common import classifier_forward, cross_entropy
from mgr_jax.train.setup import build_run


def test_bfloat16_step_runs_in_bf16_keeps_f32_state_and_matches_f32_loss(tiny_config):
  c = tiny_config
  c.method, c.batch_size, c.dtype = 'base', 16, 'bfloat16'  # PCR / MGR use the same model.
  c.data.crop_pad, c.data.flip = 0, False  # The step's input is then the batch itself.
  splits = load_splits(c.data)
  batch = {'image': splits.train.images[:16], 'label': splits.train.labels[:16]}
  run = build_run(c, splits.num_classes, len(splits.train), devices=jax.devices()[:1])
  start = jax.tree.map(np.asarray, run.state.params)  # The step donates the state.
  ctx = run.ctx

  @jax.jit
  def f32_loss(params, batch_stats, images, labels):  # The same model in float32.
    model = ctx.classifier.model.clone(dtype=jnp.float32)
    logits, _ = classifier_forward(model, params, batch_stats, ctx.real_inputs(images, None))
    return cross_entropy(logits, labels)
  reference = float(f32_loss(run.state.params, run.state.batch_stats, batch['image'],
                             batch['label']))

  args = (run.state, run.shard_batch(batch), jax.random.PRNGKey(0), run.gen_vars)
  lowered = run.jit_step().lower(*args)
  assert 'bf16' in lowered.as_text() and 'bf16' not in f32_loss.lower(
      start, run.state.batch_stats, batch['image'], batch['label']).as_text()
  state, metrics = lowered.compile()(*args)
  kinds = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
           if jnp.issubdtype(x.dtype, jnp.floating)}
  assert kinds == {jnp.dtype('float32')}
  loss = float(metrics['loss'])  # CE at the parameters the step started from, in bf16.
  assert loss != reference and abs(loss - reference) < 0.02 * reference
  moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(state.params),
                                                           jax.tree.leaves(start))]
  assert all(np.isfinite(moved)) and min(moved) > 0
