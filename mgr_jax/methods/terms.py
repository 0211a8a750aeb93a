"""The synthetic-data terms of each method: `term(ctx, params, batch_stats, latents, draws,
gen_vars) -> scalar`, added to the real cross-entropy with weight λ.

`latents` are z (no finder) or F_φ(z) (meta-learning methods); `draws` holds this step's
fixed random draws (z, y_p, RandAugment ops, latent noise, the real batch in [0, 1]), so a
term is a deterministic function of (params, latents): the inner step and θ± of the
hypergradient see the same randomness (docs/method.md, "Shared randomness").
"""
import jax
import jax.numpy as jnp

from mgr_jax.methods.common import (classifier_forward, cross_entropy, features_forward,
                                    head_forward)
from mgr_jax.methods.views import pcr_views
from mgr_jax.randaugment import apply_rand_augment


def feature_gap(ctx, params, batch_stats, a, b, stop_grad_a: bool = False):
  """mean_i ||g(b_i) − g(a_i)||²: one g pass over [a; b] (batch statistics over both).

  `stop_grad_a`: g(a) is a fixed target, as the clean view is in UDA / FixMatch.
  """
  feats = features_forward(ctx.classifier.model, params, batch_stats,
                           jnp.concatenate([a, b]))
  fa, fb = jnp.split(feats, 2)
  if stop_grad_a:
    fa = jax.lax.stop_gradient(fa)
  return jnp.mean(jnp.sum(jnp.square(fb - fa), axis=-1))


def pcr(ctx, params, batch_stats, latents, draws, gen_vars):
  """Eq. 5-6: ||g(T(x_p)) − g(x_p)||² — only g, so ω gets exactly zero gradient.

  `synth.consistency` picks the pair (Table 9): 'randaugment' (x_p, T(x_p)), the paper's
  PCR; 'latent' (G(z), G(z + s)), LatentAugment; 'both' (G(z + s), T(G(z))): each view
  carries one of the two perturbations, so g must be invariant to both at once, and the
  pair reduces to PCR at s = 0 and to LatentAugment at T = identity.
  """
  consistency, c = ctx.synthetic.consistency, ctx.classifier
  if consistency == 'latent':
    return latent_augment(ctx, params, batch_stats, latents, draws, gen_vars)
  if consistency == 'both':
    images, shifted = jnp.split(_generate_shifted(ctx, latents, draws, gen_vars), 2)
    _, strong = pcr_views(draws['ra'], images, c.image_size, c.mean, c.std)
    clean = ctx.to_classifier_input(shifted)
  else:
    images = ctx.generate(gen_vars, latents, draws['y'])
    clean, strong = pcr_views(draws['ra'], images, c.image_size, c.mean, c.std)
  return feature_gap(ctx, params, batch_stats, clean, strong, ctx.synthetic.pcr_stop_grad)


def _generate_shifted(ctx, latents, draws, gen_vars):
  """[G(z); G(z + s)] in one generator pass (s: the step's LatentAugment noise)."""
  return ctx.generate(gen_vars, jnp.concatenate([latents, latents + draws['latent_noise']]),
                      jnp.concatenate([draws['y'], draws['y']]))


def gda(ctx, params, batch_stats, latents, draws, gen_vars):
  """Eq. 2: cross-entropy on (x_p, y_p) through the whole classifier."""
  x = ctx.to_classifier_input(ctx.generate(gen_vars, latents, draws['y']))
  logits, _ = classifier_forward(ctx.classifier.model, params, batch_stats, x)
  return cross_entropy(logits, draws['y'])


def gda_multi_head(ctx, params, batch_stats, latents, draws, gen_vars):
  """GDA through a second head ω_p: g is shared, the main head ω gets no gradient."""
  x = ctx.to_classifier_input(ctx.generate(gen_vars, latents, draws['y']))
  feats = features_forward(ctx.classifier.model, params, batch_stats, x)
  return cross_entropy(head_forward(ctx.classifier.model, params, feats, 'fc_p'), draws['y'])


def uda(ctx, params, batch_stats, latents, draws, gen_vars):
  """GDA+SSL (UDA): KL(p(y|x_p) || p(y|T(x_p))) on logits, target not back-propagated."""
  images, c = ctx.generate(gen_vars, latents, draws['y']), ctx.classifier
  clean, strong = pcr_views(draws['ra'], images, c.image_size, c.mean, c.std)
  logits, _ = classifier_forward(ctx.classifier.model, params, batch_stats,
                                 jnp.concatenate([clean, strong]))
  clean_logits, strong_logits = jnp.split(logits, 2)
  target = jax.lax.stop_gradient(jax.nn.log_softmax(clean_logits))
  return jnp.mean(jnp.sum(jnp.exp(target) * (target - jax.nn.log_softmax(strong_logits)), -1))


def latent_augment(ctx, params, batch_stats, latents, draws, gen_vars):
  """LatentAugment (appendix): ||g(G(z + s)) − g(G(z))||², s ~ N(0, var), no T."""
  a, b = jnp.split(ctx.to_classifier_input(_generate_shifted(ctx, latents, draws, gen_vars)), 2)
  return feature_gap(ctx, params, batch_stats, a, b)


def real_consistency(ctx, params, batch_stats, latents, draws, gen_vars):
  """Real CR (Table 2): PCR's loss on the real batch, ||g(T(x)) − g(x)||²."""
  del latents, gen_vars
  x01 = draws['real01']
  strong = apply_rand_augment(x01, draws['ra_real'])
  return feature_gap(ctx, params, batch_stats, ctx.normalize(x01), ctx.normalize(strong))
