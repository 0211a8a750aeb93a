"""Step functions: `step(state, batch, rng, gen_vars, *, ctx, term) -> (state, metrics)`.

- `regularized_step`: CE(real) + λ·term with z ~ N(0, I) (gda, gda_mh, gda_ssl, pcr, ...).
- `meta_step`: the same loss with latents F_φ(z), and φ meta-learned first (MPS, Eq. 7-9):
  φ ← Adam(∇_φ L_val(θ') + λ_KL ∇_φ KL), θ' = θ − η ∇_θ L_train(θ, φ); then θ is updated on
  L_train(θ, φ_new). The real-batch CE gradient at θ is computed once and shared by the
  inner step and the real update (`theta_grad_fixed`); BatchNorm uses batch statistics
  everywhere and only the real batch of the real update writes the running statistics.
  With `meta.target=generator` φ is G's own parameters instead (z stays uniform, no KL):
  the appendix's "meta-learning G" ablation.
- `finder_ascent_step`: no bilevel problem. φ ← Adam(−∇_φ objective(θ, F_φ(z)) + λ_KL ∇_φ KL),
  the finder *maximising* a training loss of the synthetic samples (CE or PCR, Table 7); then
  θ on CE(real) + λ·term(θ, F_φnew(z)) as in `regularized_step`.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mgr_jax import finder as finder_lib
from mgr_jax.meta import hypergradient_with_aux
from mgr_jax.methods.common import (StepContext, accuracy, apply_classifier_update,
                                    classifier_forward, cross_entropy)
from mgr_jax.randaugment import sample_rand_augment


def draw_synthetic(ctx: StepContext, rng, real01):
  """This step's random draws, fixed for every evaluation of the loss inside the step; split
  over the data axis like the real batch, so the synthetic work is shared by the devices."""
  k_z, k_y, k_ra, k_s, k_rr = jax.random.split(rng, 5)
  synth, split = ctx.synthetic, ctx.split_over_data
  n = synth.batch_size
  z_dim = synth.generator.z_dim if synth.generator is not None else 1
  # RandAugmentParams leaves are [num_ops, batch].
  split_ra = lambda ra: jax.tree.map(lambda a: split(a, batch_axis=1), ra)
  return {
      'z': split(jax.random.normal(k_z, (n, z_dim))),
      'y': split(jax.random.randint(k_y, (n,), 0, max(synth.generator_classes, 1))),
      'ra': split_ra(sample_rand_augment(k_ra, n, synth.ra_num_ops, synth.ra_magnitude)),
      'latent_noise': split(jnp.sqrt(synth.latent_noise_var) * jax.random.normal(k_s, (n, z_dim))),
      'real01': real01,
      'ra_real': split_ra(sample_rand_augment(k_rr, real01.shape[0], synth.ra_num_ops,
                                              synth.ra_magnitude)),
  }


def _real_batch(state, batch, rng, ctx):
  k_aug, k_draw = jax.random.split(jax.random.fold_in(rng, state.step))
  real01, targets = ctx.real_train_inputs01(batch['image'], batch['label'], k_aug,
                                            state.params, state.batch_stats)
  return ctx.normalize(real01), targets, draw_synthetic(ctx, k_draw, real01)


def _real_ce(params, state, x, labels, ctx):
  logits, batch_stats = classifier_forward(ctx.classifier.model, params, state.batch_stats, x)
  return cross_entropy(logits, labels), (logits, batch_stats)


def _classifier_update(state, x, targets, batch, latents, draws, gen_vars, ctx, term, lam):
  """θ ← optimiser step on CE(real) + λ·term(θ, latents); the real batch writes BN stats."""
  def loss_fn(params):
    ce, (logits, batch_stats) = _real_ce(params, state, x, targets, ctx)
    reg = term(ctx, params, state.batch_stats, latents, draws, gen_vars)
    return ce + lam * reg, (ce, reg, logits, batch_stats)

  (_, (ce, reg, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  new_state = apply_classifier_update(state, grads, ctx)
  new_state = new_state.replace(step=state.step + 1, batch_stats=batch_stats)
  return new_state, {'loss': ce, 'accuracy': accuracy(logits, batch['label']), 'synthetic': reg}


def regularized_step(state, batch, rng, gen_vars, *, ctx: StepContext, term):
  x, targets, draws = _real_batch(state, batch, rng, ctx)
  return _classifier_update(state, x, targets, batch, draws['z'], draws, gen_vars, ctx, term,
                            ctx.synthetic.lam_at(state.step))


def finder_ascent_step(state, batch, rng, gen_vars, *, ctx: StepContext, term, objective):
  """Table 7's non-meta strategies: F_φ ascends `objective` (the synthetic CE or PCR loss at
  the current θ, same draws), then θ steps on CE + λ·term with the updated finder."""
  x, targets, draws = _real_batch(state, batch, rng, ctx)
  mc = ctx.meta
  find = lambda phi: mc.finder.apply({'params': phi}, draws['z'])

  def finder_loss(phi):  # Minimised: −objective + λ_KL·KL (the KL as in MPS).
    fz = find(phi)
    value = objective(ctx, state.params, state.batch_stats, fz, draws, gen_vars)
    kl = finder_lib.kl_penalty(fz)
    return -value + mc.lam_kl * kl, (value, kl)

  (_, (value, kl)), finder_grad = jax.value_and_grad(finder_loss, has_aux=True)(
      state.finder_params)
  updates, finder_opt_state = mc.finder_tx.update(finder_grad, state.finder_opt_state,
                                                  state.finder_params)
  finder_params = optax.apply_updates(state.finder_params, updates)
  new_state, metrics = _classifier_update(state, x, targets, batch, find(finder_params), draws,
                                          gen_vars, ctx, term, ctx.synthetic.lam_at(state.step))
  new_state = new_state.replace(finder_params=finder_params, finder_opt_state=finder_opt_state)
  return new_state, dict(metrics, finder_objective=value, kl=kl)


def synthetic_sampler(ctx: StepContext, draws, gen_vars):
  """φ -> (latents, generator variables) of the step's synthetic batch: (F_φ(z), G) for
  `meta.target=finder`, (z, G with parameters φ) for `meta.target=generator`."""
  mc = ctx.meta
  if mc.target == 'generator':
    return lambda phi: (draws['z'], dict(gen_vars, params=phi))
  return lambda phi: (mc.finder.apply({'params': phi}, draws['z']), gen_vars)


class MetaProblem(NamedTuple):
  """One meta step's bilevel problem at `state` (fixed draws): what the hypergradient needs."""
  synthetic_loss: Callable  # (θ, φ) -> λ·term, the φ-dependent part of L_train.
  term_value: Callable  # (θ, φ) -> term (unweighted).
  val_loss: Callable  # θ -> L_val on the step's D_val batch.
  ce_grad: Any  # ∇_θ CE on the real batch at θ (shared by the inner step and the update).
  ce: Any
  logits: Any
  batch_stats: Any  # Running statistics after the real batch.
  inner_lr: Any  # η of the inner step.
  lam: Any
  find: Callable  # φ -> the step's latents: F_φ(z) (z itself for meta.target=generator).


def meta_problem(state, batch, rng, gen_vars, *, ctx: StepContext, term) -> MetaProblem:
  """The losses and shared pieces of the meta step at `state`: `meta_step` uses them, and
  so can a measurement of the hypergradient on the same state, batch and draws
  (experiments.hypergrad)."""
  x, targets, draws = _real_batch(state, batch, rng, ctx)
  x_val = ctx.real_inputs(batch['val_image'], None, train=False)
  mc, lam = ctx.meta, ctx.synthetic.lam_at(state.step)
  sample = synthetic_sampler(ctx, draws, gen_vars)
  find = lambda phi: sample(phi)[0]

  # ∇_θ CE(f_θ(x), y) once: the inner step and the real update share it.
  (ce, (logits, batch_stats)), ce_grad = jax.value_and_grad(_real_ce, has_aux=True)(
      state.params, state, x, targets, ctx)

  def term_value(params, phi):
    latents, generator_vars = sample(phi)
    return term(ctx, params, state.batch_stats, latents, draws, generator_vars)

  def synthetic_loss(params, phi):  # The φ-dependent part of L_train: λ·term.
    return lam * term_value(params, phi)

  def val_loss(params):  # L_val on a D_val batch, batch statistics, nothing written.
    val_logits, _ = classifier_forward(ctx.classifier.model, params, state.batch_stats, x_val)
    return cross_entropy(val_logits, batch['val_label'])

  inner_lr = mc.inner_lr if mc.inner_lr > 0 else ctx.classifier.lr_schedule(state.step)
  return MetaProblem(synthetic_loss, term_value, val_loss, ce_grad, ce, logits, batch_stats,
                     inner_lr, lam, find)


def meta_step(state, batch, rng, gen_vars, *, ctx: StepContext, term):
  p = meta_problem(state, batch, rng, gen_vars, ctx=ctx, term=term)
  mc, lam, find = ctx.meta, p.lam, p.find
  meta = hypergradient_with_aux(p.synthetic_loss, p.val_loss, state.params, state.finder_params,
                                p.inner_lr, mc.hypergrad, theta_grad_fixed=p.ce_grad,
                                fd_radius=mc.fd_radius)
  if mc.target == 'finder':
    kl, kl_grad = jax.value_and_grad(lambda phi: finder_lib.kl_penalty(find(phi)))(
        state.finder_params)
    finder_grad = jax.tree.map(lambda h, k: h + mc.lam_kl * k, meta.hypergrad, kl_grad)
  else:  # G's parameters: z is not moved, so the KL of the latents is constant.
    kl, finder_grad = jnp.zeros(()), meta.hypergrad
  updates, finder_opt_state = mc.finder_tx.update(finder_grad, state.finder_opt_state,
                                                  state.finder_params)
  finder_params = optax.apply_updates(state.finder_params, updates)

  # The real update: x_p regenerated with the updated finder (same z, y_p and T draws).
  reg, reg_grad = jax.value_and_grad(p.term_value)(state.params, finder_params)
  grads = jax.tree.map(lambda c, r: c + lam * r, p.ce_grad, reg_grad)
  new_state = apply_classifier_update(state, grads, ctx)
  new_state = new_state.replace(step=state.step + 1, batch_stats=p.batch_stats,
                                finder_params=finder_params, finder_opt_state=finder_opt_state)
  return new_state, {'loss': p.ce, 'accuracy': accuracy(p.logits, batch['label']),
                     'synthetic': reg, 'val_loss_inner': meta.val_loss, 'kl': kl}
