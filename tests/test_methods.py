"""Every method's step: what it changes, what gets gradient, generator use, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_generator import TinyGenerator
from mgr_jax.data import load_splits
from mgr_jax.methods import METHODS, terms
from mgr_jax.methods.steps import draw_synthetic
from mgr_jax.train.setup import build_run, check_generator, val_batch

META = {'gda_mps', 'mgr'}
ASCENT = {'finder_max_ce', 'finder_max_pcr'}  # A finder without meta-learning (Table 7).


def _config(tiny_config, method):
  c = tiny_config
  c.method = method
  c.batch_size, c.eval_batch_size = 16, 16
  c.synth.batch_size, c.meta.val_batch_size = 8, 8
  c.synth.lam_warmup = 0.0  # Full λ at step 0: one step shows each term's effect.
  return c


def test_lam_warmup_scales_the_synthetic_term(tiny_config, splits):
  """With warm-up, λ is 0 at step 0: the pcr step equals one with λ = 0."""
  def first_step(lam, warmup):
    c = _config(tiny_config.copy_and_resolve_references(), 'pcr')
    c.synth.lam, c.synth.lam_warmup = lam, warmup
    run = build_run(c, splits.num_classes, len(splits.train), TinyGenerator(),
                    devices=jax.devices()[:1])
    state, _ = run.jit_step()(run.state, run.shard_batch(_batch(run, splits)),
                              jax.random.PRNGKey(0), run.gen_vars)
    return jax.tree.map(np.asarray, state.params)
  ramped, zero, full = first_step(0.5, 0.5), first_step(0.0, 0.0), first_step(0.5, 0.0)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, ramped, zero)))
  assert any(jax.tree.leaves(_changed(ramped, full)))


@pytest.fixture(scope='module')
def splits():
  from configs.digits import get_config
  c = get_config()
  c.data.image_size, c.data.fraction = 16, 0.25
  return load_splits(c.data)


def _batch(run, splits, n=16):
  b = {'image': splits.train.images[:n], 'label': splits.train.labels[:n]}
  if run.method.meta:
    b.update(val_batch(splits.val, 8, 0, 0, 0))
  return b


def _changed(a, b):
  return jax.tree.map(lambda x, y: not np.array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope='module')
def one_step_per_method(splits):
  """method -> (state before, state after, metrics, generator calls)."""
  from configs.digits import get_config
  out = {}
  for method in METHODS:
    c = get_config()
    c.data.image_size, c.data.fraction, c.model.width = 16, 0.25, 0.125
    c = _config(c, method)
    gen = TinyGenerator()
    run = build_run(c, splits.num_classes, len(splits.train), gen, devices=jax.devices()[:1])
    before = jax.tree.map(np.asarray, run.state)
    after, metrics = run.jit_step()(run.state, run.shard_batch(_batch(run, splits)),
                                    jax.random.PRNGKey(0), run.gen_vars)
    out[method] = (before, jax.tree.map(np.asarray, after), jax.device_get(metrics), gen.calls)
  return out


@pytest.mark.parametrize('method', sorted(METHODS))
def test_one_step_changes_what_it_should(one_step_per_method, method):
  before, after, metrics, calls = one_step_per_method[method]
  assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
  # Every updated array is finite: NaN would pass `_changed`, and metrics can be finite while
  # the parameters are not (the digits mgr step compiled at XLA's -O0, docs/performance.md).
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after)
             if np.issubdtype(x.dtype, np.floating))
  assert int(after.step) == 1
  # The classifier always learns from the real batch: every ψ and ω tensor moves.
  assert all(jax.tree.leaves(_changed(before.params['backbone'], after.params['backbone'])))
  assert all(jax.tree.leaves(_changed(before.params['fc'], after.params['fc'])))
  assert all(jax.tree.leaves(_changed(before.batch_stats, after.batch_stats)))
  # ω_p exists (and learns) only in gda_mh.
  assert ('fc_p' in after.params) == (method == 'gda_mh')
  if method == 'gda_mh':
    assert all(jax.tree.leaves(_changed(before.params['fc_p'], after.params['fc_p'])))
  # The finder exists and changes only in the methods that have one.
  if method in META | ASCENT:
    # The finder starts as the identity (zero last layer): on the first step only that
    # layer can receive gradient, and it must.
    assert jax.tree.leaves(after.finder_params)
    assert any(jax.tree.leaves(_changed(before.finder_params, after.finder_params)))
    assert metrics['kl'] >= 0
    if method in META:
      assert np.isfinite(metrics['val_loss_inner'])
    else:  # No bilevel problem: no D_val loss, the finder's own objective instead.
      assert 'val_loss_inner' not in metrics and np.isfinite(metrics['finder_objective'])
  else:
    assert not jax.tree.leaves(after.finder_params)
  # base and real_cr never call the generator; every other method does.
  assert (calls > 0) == (method not in ('base', 'real_cr'))


def _term_grads(term, splits, tiny_config, method):
  c = _config(tiny_config, method)
  gen = TinyGenerator()
  run = build_run(c, splits.num_classes, len(splits.train), gen, devices=jax.devices()[:1])
  real01 = run.ctx.real_inputs01(splits.train.images[:16], None)
  draws = draw_synthetic(run.ctx, jax.random.PRNGKey(1), real01)
  fn = lambda p: term(run.ctx, p, run.state.batch_stats, draws['z'], draws, run.gen_vars)
  return jax.grad(fn)(run.state.params)


def _all_zero(tree):
  return all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(tree))


def test_pcr_sends_exactly_zero_gradient_to_head(splits, tiny_config):
  grads = _term_grads(terms.pcr, splits, tiny_config, 'pcr')
  assert _all_zero(grads['fc'])
  assert not _all_zero(grads['backbone'])


def test_gda_mh_synthetic_loss_skips_main_head(splits, tiny_config):
  grads = _term_grads(terms.gda_multi_head, splits, tiny_config, 'gda_mh')
  assert _all_zero(grads['fc'])
  assert not _all_zero(grads['fc_p']) and not _all_zero(grads['backbone'])


def test_gda_trains_head_on_synthetic_labels(splits, tiny_config):
  grads = _term_grads(terms.gda, splits, tiny_config, 'gda')
  assert not _all_zero(grads['fc']) and not _all_zero(grads['backbone'])


def test_methods_with_labels_need_a_generator_over_the_data_classes():
  from mgr_jax.errors import UserError
  for classes in (0, 5):  # Unconditional, or conditional over other classes.
    with pytest.raises(UserError, match='conditional generator'):
      check_generator('gda', TinyGenerator(num_classes=classes), 10)
  check_generator('pcr', TinyGenerator(num_classes=0), 10)  # PCR needs no labels.
  with pytest.raises(UserError, match='needs a generator'):
    check_generator('pcr', None, 10)


def _flops_per_device(compiled):
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)['flops']


@pytest.mark.parametrize('method', ['base', 'pcr', 'mgr'])
def test_sharded_step_equals_single_device_and_splits_the_work(splits, tiny_config, method):
  """On 8 devices the step computes what it computes on one, and each device does an eighth
  of the work: the synthetic batch (z, y_p, T, G(z), the PCR and meta passes) is split over
  the data axis like the real one, not replicated (XLA's FLOPs of the compiled step, per
  device; the replicated optimiser update of the tiny model is the few % above 1/8)."""
  assert len(jax.devices()) == 8
  results, flops = [], []
  for devices in (jax.devices()[:1], jax.devices()):
    c = _config(tiny_config.copy_and_resolve_references(), method)
    c.batch_size = c.eval_batch_size = 32
    run = build_run(c, splits.num_classes, len(splits.train), TinyGenerator(), devices=devices)
    batch = run.shard_batch(_batch(run, splits, n=32))
    assert len(batch['image'].sharding.device_set) == len(devices)
    args = (run.state, batch, jax.random.PRNGKey(0), run.gen_vars)
    compiled = run.jit_step().lower(*args).compile()
    flops.append(_flops_per_device(compiled))
    state, metrics = compiled(*args)
    results.append((jax.tree.map(np.asarray, state), jax.device_get(metrics)))
  assert flops[1] <= 1.1 * flops[0] / 8, (method, flops)
  (single, m1), (sharded, m8) = results
  # Everything the step writes agrees to 1e-5 ...
  for a, b in zip(jax.tree.leaves(single.replace(finder_opt_state=None)),
                  jax.tree.leaves(sharded.replace(finder_opt_state=None))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # ... and Adam's moments hold the raw hypergradient (|g| ~ 40 here), a float32 difference
  # divided by 2ε: the other reduction order moves it by ~1e-6 relative.
  for a, b in zip(jax.tree.leaves(single.finder_opt_state),
                  jax.tree.leaves(sharded.finder_opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-5)


def test_meta_target_generator_learns_g_and_no_finder(splits, tiny_config):
  """meta.target=generator: φ is a copy of G's parameters and MPS moves it; there is no
  finder, and the frozen generator variables the step receives stay as they were."""
  c = _config(tiny_config, 'mgr')
  c.meta.target = 'generator'
  gen = TinyGenerator()
  run = build_run(c, splits.num_classes, len(splits.train), gen, devices=jax.devices()[:1])
  assert run.ctx.meta.finder is None
  g_params = jax.tree.map(np.asarray, gen.variables['params'])
  assert jax.tree.structure(run.state.finder_params) == jax.tree.structure(g_params)
  state, metrics = run.jit_step()(run.state, run.shard_batch(_batch(run, splits)),
                                  jax.random.PRNGKey(0), run.gen_vars)
  moved = jax.tree.leaves(_changed(g_params, state.finder_params))
  assert sum(moved) >= len(moved) - 1 and np.isfinite(metrics['val_loss_inner'])
  assert not any(jax.tree.leaves(_changed(g_params, run.gen_vars['params'])))
  assert float(metrics['kl']) == 0.0


def test_meta_target_generator_needs_a_meta_method(splits, tiny_config):
  from mgr_jax.errors import UserError
  c = _config(tiny_config, 'finder_max_pcr')
  c.meta.target = 'generator'
  with pytest.raises(UserError, match='needs a meta-learning method'):
    build_run(c, splits.num_classes, len(splits.train), TinyGenerator(),
              devices=jax.devices()[:1])


@pytest.mark.parametrize('method,objective', [('finder_max_ce', 'gda'),
                                              ('finder_max_pcr', 'pcr')])
def test_finder_ascent_moves_up_the_loss_it_maximises(splits, tiny_config, method, objective):
  """One step: the objective at the old θ and the same draws is larger with the new φ, and
  the classifier's synthetic term is PCR with the new φ."""
  from mgr_jax.methods.steps import _real_batch
  c = _config(tiny_config, method)
  c.meta.finder.lr = 1e-3
  run = build_run(c, splits.num_classes, len(splits.train), TinyGenerator(),
                  devices=jax.devices()[:1])
  batch, rng, ctx = run.shard_batch(_batch(run, splits)), jax.random.PRNGKey(0), run.ctx
  before = run.state
  after, metrics = run.jit_step()(jax.tree.map(jnp.copy, before), batch, rng, run.gen_vars)

  @jax.jit
  def evaluate(phi_old, phi_new):
    _, _, draws = _real_batch(before, batch, rng, ctx)
    find = lambda phi: ctx.meta.finder.apply({'params': phi}, draws['z'])
    value = lambda fn, phi: fn(ctx, before.params, before.batch_stats, find(phi), draws,
                               run.gen_vars)
    fn = getattr(terms, objective)
    return value(fn, phi_old), value(fn, phi_new), value(terms.pcr, phi_new)

  old, new, pcr_new = map(float, evaluate(before.finder_params, after.finder_params))
  np.testing.assert_allclose(float(metrics['finder_objective']), old, rtol=1e-5)
  assert new > old
  np.testing.assert_allclose(float(metrics['synthetic']), pcr_new, rtol=1e-4)
