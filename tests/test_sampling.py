"""Sampling variants: multi-modal truncation (B.7) and PCR's consistency pairs (Table 9)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_generator import TinyGenerator
from mgr_jax.config import validate
from mgr_jax.errors import UserError
from mgr_jax.generators import multimodal
from mgr_jax.methods import terms
from mgr_jax.methods.steps import draw_synthetic
from mgr_jax.methods.views import pcr_views


def test_truncation_pulls_w_towards_its_nearest_centre():
  k_w, k_c = jax.random.split(jax.random.PRNGKey(0))
  ws = jnp.repeat(jax.random.normal(k_w, (32, 1, 6)), 3, axis=1)  # 3 layers, one w each
  centres = 2.0 * jax.random.normal(k_c, (5, 6))
  w, c = np.asarray(ws[:, 0]), np.asarray(centres)
  nearest = c[np.argmin(((w[:, None] - c[None]) ** 2).sum(-1), axis=1)]  # numpy reference
  for psi in (0.0, 0.3, 1.0):
    out = np.asarray(multimodal.truncate_to_nearest_centre(ws, centres, psi))
    np.testing.assert_allclose(out, nearest[:, None] + psi * (np.asarray(ws)
                                                               - nearest[:, None]), atol=1e-5)
    # The distance to the centre shrinks by exactly ψ; the centre stays the nearest one.
    np.testing.assert_allclose(np.linalg.norm(out[:, 0] - nearest, axis=-1),
                               psi * np.linalg.norm(w - nearest, axis=-1), atol=1e-5)
  np.testing.assert_allclose(multimodal.truncate_to_nearest_centre(ws, centres, 1.0), ws, atol=1e-6)


def test_kmeans_finds_well_separated_clusters():
  means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
  rng = np.random.default_rng(0)
  points = np.concatenate([m + 0.1 * rng.standard_normal((50, 2)) for m in means])
  found = None
  for seed in range(3):  # Lloyd's from random points can merge two blobs; one start suffices.
    c = np.asarray(multimodal.kmeans(jax.random.PRNGKey(seed), jnp.asarray(points), 3))
    if np.allclose(np.sort(c[:, 0] + 3 * c[:, 1]), np.sort(means[:, 0] + 3 * means[:, 1]),
                   atol=0.1):
      found = c
      break
  assert found is not None


def _run(tiny_config, method='pcr', **synth):
  from configs.digits import get_config
  from mgr_jax.data import load_splits
  from mgr_jax.train.setup import build_run
  c = tiny_config
  c.method, c.batch_size, c.synth.batch_size = method, 16, 8
  for k, v in synth.items():
    c.synth[k] = v
  splits = load_splits(c.data)
  gen = TinyGenerator()
  run = build_run(c, splits.num_classes, len(splits.train), gen, devices=jax.devices()[:1])
  batch = {'image': splits.train.images[:16], 'label': splits.train.labels[:16]}
  return run, gen, batch


def test_multimodal_truncation_at_psi_0_gives_the_centres_images(tiny_config):
  """ψ = 0 maps every w to its nearest centre: at most k distinct samples; and the pcr
  step trains with the truncated samples."""
  run, gen, batch = _run(tiny_config, truncation='multimodal', truncation_psi=0.0,
                         truncation_clusters=3, truncation_samples=200)
  centres = run.ctx.synthetic.w_centres
  assert centres.shape == (3, 64)
  z = jax.random.normal(jax.random.PRNGKey(1), (40, gen.z_dim))
  images = np.asarray(run.ctx.generate(run.gen_vars, z, jnp.arange(40) % 10))
  centre_images = np.asarray(gen.synthesis(gen.variables, jnp.asarray(centres)[:, None]))
  dist = ((images[:, None] - centre_images[None]) ** 2).reshape(40, 3, -1).sum(-1)
  np.testing.assert_allclose(dist.min(1), 0.0, atol=1e-8)
  _, metrics = run.jit_step()(run.state, batch, jax.random.PRNGKey(0), run.gen_vars)
  assert np.isfinite(float(metrics['synthetic'])) and float(metrics['synthetic']) > 0


def test_consistency_pairs(tiny_config):
  """synth.consistency: 'latent' is LatentAugment's term, 'both' compares G(z + s) with
  T(G(z)), 'randaugment' is PCR's (G(z), T(G(z)))."""
  run, gen, batch = _run(tiny_config)
  ctx, c = run.ctx, run.ctx.classifier
  real01 = ctx.real_inputs01(batch['image'], None)
  draws = draw_synthetic(ctx, jax.random.PRNGKey(2), real01)
  args = (run.state.params, run.state.batch_stats, draws['z'], draws, run.gen_vars)

  def pcr_with(consistency):
    import dataclasses
    synth = dataclasses.replace(ctx.synthetic, consistency=consistency)
    return float(terms.pcr(dataclasses.replace(ctx, synthetic=synth), *args))

  images = ctx.generate(run.gen_vars, draws['z'], draws['y'])
  shifted = ctx.generate(run.gen_vars, draws['z'] + draws['latent_noise'], draws['y'])
  clean, strong = pcr_views(draws['ra'], images, c.image_size, c.mean, c.std)
  gap = lambda a, b: float(terms.feature_gap(ctx, run.state.params, run.state.batch_stats,
                                             a, b))
  np.testing.assert_allclose(pcr_with('randaugment'), gap(clean, strong), rtol=1e-5)
  np.testing.assert_allclose(pcr_with('latent'), float(terms.latent_augment(ctx, *args)),
                             rtol=1e-5)
  np.testing.assert_allclose(pcr_with('both'), gap(ctx.to_classifier_input(shifted), strong),
                             rtol=1e-5)
  assert len({pcr_with(m) for m in ('randaugment', 'latent', 'both')}) == 3


@pytest.mark.parametrize('key,value', [('synth.consistency', 'mixup'),
                                       ('synth.truncation', 'kmeans'),
                                       ('meta.target', 'classifier')])
def test_bad_sampling_settings_are_user_errors(tiny_config, key, value):
  section, name = key.split('.')
  tiny_config[section][name] = value
  with pytest.raises(UserError, match=name):
    validate(tiny_config)


def test_stylegan2_w_space_split_and_multimodal_centres(tmp_path):
  """A StyleGAN2's mapping then synthesis is its apply; at ψ = 0 multi-modal truncation
  leaves at most k distinct samples, one per k-means centre."""
  from test_cli import _tiny_stylegan2_dir
  from mgr_jax import generators
  gen = generators.load(str(_tiny_stylegan2_dir(tmp_path / 'gen')))
  z = jax.random.normal(jax.random.PRNGKey(0), (12, gen.z_dim))
  labels = jnp.arange(12) % max(gen.num_classes, 1) if gen.num_classes else None
  ws = jax.jit(gen.mapping)(gen.variables, z, labels)
  synth = jax.jit(gen.synthesis)
  np.testing.assert_allclose(synth(gen.variables, ws), gen(z, labels), atol=1e-5)
  centres = multimodal.w_centres(gen, jax.random.PRNGKey(1), 64, 3)
  images = np.asarray(synth(gen.variables,
                            multimodal.truncate_to_nearest_centre(ws, centres, 0.0)))
  distinct = []
  for im in images:
    if not any(np.allclose(im, d, atol=1e-5) for d in distinct):
      distinct.append(im)
  assert 1 <= len(distinct) <= 3
