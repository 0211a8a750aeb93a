"""`base`: cross-entropy on real data only; never touches a generator."""
import jax

from mgr_jax.methods.common import (StepContext, accuracy, apply_classifier_update,
                                    classifier_forward, cross_entropy)


def base_step(state, batch, rng, gen_vars=None, *, ctx: StepContext):
  del gen_vars
  x01, targets = ctx.real_train_inputs01(batch['image'], batch['label'],
                                        jax.random.fold_in(rng, state.step), state.params,
                                        state.batch_stats)
  x = ctx.normalize(x01)

  def loss_fn(params):
    logits, batch_stats = classifier_forward(ctx.classifier.model, params, state.batch_stats, x)
    return cross_entropy(logits, targets), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = apply_classifier_update(state, grads, ctx)
  new_state = new_state.replace(step=state.step + 1, batch_stats=batch_stats)
  return new_state, {'loss': loss, 'accuracy': accuracy(logits, batch['label'])}
