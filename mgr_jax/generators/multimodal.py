"""Multi-modal truncation (the paper's B.7, after Mokady et al. 2022, "Self-Distilled StyleGAN").

The usual truncation pulls every w towards the one global mean w_avg, which for a multi-modal
W space (several classes, poses, ...) drags samples towards a blurry average. Instead: map many
z to W, cluster them with k-means, and pull each w towards its *nearest* centre c by ψ:
w' = c + ψ (w − c). Needs a generator with a W space (StyleGAN2: `mapping` / `synthesis`).
"""
import jax
import jax.numpy as jnp

from mgr_jax.errors import UserError


def kmeans(rng, points, k: int, iterations: int = 50):
  """Lloyd's k-means of points [N, D] -> centres [k, D]; starts from k distinct random points,
  a centre that loses all its points stays where it was. Pure, jit-able (k static)."""
  n = points.shape[0]
  centres = points[jax.random.choice(rng, n, (k,), replace=False)]

  def step(_, centres):
    assign = nearest_centre(points, centres)
    one_hot = jax.nn.one_hot(assign, k, dtype=points.dtype)  # [N, k]
    counts = one_hot.sum(0)
    sums = one_hot.T @ points
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres)

  return jax.lax.fori_loop(0, iterations, step, centres)


def nearest_centre(points, centres):
  """Index [N] of the nearest centre (Euclidean) of each point [N, D]."""
  d2 = (jnp.sum(points ** 2, -1, keepdims=True) - 2 * points @ centres.T
        + jnp.sum(centres ** 2, -1)[None])
  return jnp.argmin(d2, -1)


def truncate_to_nearest_centre(ws, centres, psi):
  """ws [N, num_ws, w_dim] (or [N, w_dim]) -> c + ψ (w − c), c the centre nearest to w[:, 0].

  Every layer's w is pulled towards the same centre (StyleGAN2's ws repeat one w before
  truncation).
  """
  first = ws[:, 0] if ws.ndim == 3 else ws
  c = centres[nearest_centre(first, centres)]
  if ws.ndim == 3:
    c = c[:, None]
  return c + psi * (ws - c)


def w_centres(generator, rng, num_samples: int, k: int):
  """k-means centres [k, w_dim] of the W space: num_samples z ~ N(0, I) with labels uniform
  over the generator's classes, mapped without truncation."""
  if getattr(generator, 'mapping', None) is None:
    raise UserError(f'synth.truncation=multimodal needs a generator with a W space '
                    f'(StyleGAN2); {generator!r} has none. Use synth.truncation=global.')
  if num_samples < k:
    raise UserError(f'synth.truncation_samples={num_samples} must be at least '
                    f'synth.truncation_clusters={k}.')
  k_z, k_y, k_means = jax.random.split(rng, 3)
  z = jax.random.normal(k_z, (num_samples, generator.z_dim))
  labels = (jax.random.randint(k_y, (num_samples,), 0, generator.num_classes)
            if generator.num_classes else None)
  ws = jax.jit(generator.mapping)(generator.variables, z, labels)
  return jax.jit(kmeans, static_argnums=2)(k_means, ws[:, 0] if ws.ndim == 3 else ws, k)
