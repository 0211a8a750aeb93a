"""experiments.bench_gan, our side only: what it times is the GAN loop's own iteration."""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import bench_gan
from mgr_jax.gan import loop
from mgr_jax.models import conv
from ynn_fusions import ynn_convolutions

# A GAN that compiles in seconds: 8 px, a handful of channels, no augmentation (test_ada.py
# covers it); R1 every 2 iterations.
TINY = {'resolution': 8, 'z_dim': 8, 'w_dim': 8, 'mapping_layers': 1, 'd_mapping_layers': 1,
        'channel_base': 64, 'channel_max': 16, 'batch_size': 8, 'r1_interval': 2,
        'r1_gamma': 1.0, 'augment': ''}


def test_timed_iterations_are_the_loops_step_and_change_g_d_and_g_ema(monkeypatch):
  from configs.digits import get_config
  gcfg = get_config().generator
  for k, v in TINY.items():
    gcfg[k] = v
  built = []
  monkeypatch.setattr(loop, 'jit_train_step',
                      lambda *a, _f=loop.jit_train_step: built.append(_f(*a)) or built[-1])
  images, labels = bench_gan.random_data(gcfg, num_classes=3, num_images=20)
  ours = bench_gan.Ours(gcfg, images, labels, num_classes=3, devices=jax.devices()[:1])
  assert built == [ours.step_fn] and ours.setup.batch_size == 8  # The loop's jitted step.
  start = jax.device_get(ours.state)  # The step donates the state: a host copy.

  times = bench_gan.measure([ours], steps=1, warmup=2, r1_steps=1, r1_interval=2)['ours']
  assert times['first_s'] > 0 and len(times['iter_s']) == len(times['r1_s']) == 1
  assert all(np.isfinite(t) and t > 0 for t in times['iter_s'] + times['r1_s'])
  assert bench_gan.summarise(times, 2)['amortised_s'] > 0
  # Iterations 0, 1, 2, then one at index 4 (the next multiple of r1_interval): an R1 one.
  assert int(ours.state.step) == 5 and float(ours.metrics['r1_done']) == 1.0
  # Two programs (with and without R1); setting the index compiled nothing new.
  assert ours.step_fn._cache_size() == 2

  # The same four calls of the loop's step from the same state, outside the benchmark.
  replicated = NamedSharding(ours.mesh, P())
  state = start
  for index in (0, 1, 2, 4):
    state = jax.device_put(state.replace(step=np.int32(index)), replicated)
    state, metrics = ours.step_fn(state, ours.data, ours.rng, r1=index % 2 == 0)
  assert ours.step_fn._cache_size() == 2 and float(metrics['r1_done']) == 1.0
  for name in ('g_params', 'd_params', 'ema_params'):
    got, want, first = (jax.tree.leaves(getattr(s, name)) for s in (ours.state, state, start))
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert any(not np.array_equal(np.asarray(g), f) for g, f in zip(got, first)), name
  # On CPU the loop's step runs its convolutions on Eigen, not YNNPACK (conv.compiler_options;
  # XLA's default puts six of this tiny GAN's convolutions into YNNPACK fusions).
  text = ours.step_fn.lower(ours.state, ours.data, ours.rng, r1=False).compile().as_text()
  assert conv.compiler_options() and ynn_convolutions(text) == 0
