"""`base`: cross-entropy on real data only."""
import jax
import jax.numpy as jnp
import optax

from mgr_jax.methods.common import StepContext, classifier_forward, cross_entropy


def base_step(state, batch, rng, *, ctx: StepContext):
  rng = jax.random.fold_in(rng, state.step)
  x = ctx.real_inputs(batch['image'], rng)

  def loss_fn(params):
    logits, batch_stats = classifier_forward(ctx.model, params, state.batch_stats, x)
    return cross_entropy(logits, batch['label']), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return new_state, {'loss': loss, 'accuracy': accuracy}
