"""experiments.bench_torch: the ratio interval (paired over the steps) and one tiny comparison."""
import numpy as np
import pytest

from experiments.bench_torch import ratio_interval


def test_shared_load_cancels_in_the_paired_interval():
  # Each round's load scales both frameworks alike: the ratio is exactly 0.9 in every resample.
  load = np.random.default_rng(0).uniform(1.0, 2.0, 30)
  low, high = ratio_interval(0.9 * load, load)
  np.testing.assert_allclose([low, high], [0.9, 0.9], rtol=1e-12)


def test_interval_covers_the_true_ratio_and_narrows_with_rounds():
  """Independent noise, true ratio 0.8: a 95 % interval covers it in most of 40 runs (seen
  39/40 at both sizes), and 16x the rounds make it ~3.6x narrower, far from 1."""
  rng = np.random.default_rng(1)
  for rounds in (12, 192):
    covered, widths, highs = 0, [], []
    for seed in range(40):
      jax_s = 0.8 + 0.1 * rng.standard_normal(rounds)
      torch_s = 1.0 + 0.1 * rng.standard_normal(rounds)
      low, high = ratio_interval(jax_s, torch_s, seed=seed)
      assert low <= np.median(jax_s) / np.median(torch_s) <= high
      covered += low < 0.8 < high
      widths.append(high - low)
      highs.append(high)
    assert covered >= 34, covered
    if rounds == 12:
      width_12 = np.median(widths)
  assert np.median(widths) < width_12 / 2.5
  assert max(highs) < 0.9


def test_compare_times_equal_math_in_both_frameworks(tiny_config):
  """End to end on a tiny base step: the first step's losses agree, and the ratio and its
  interval come from the timed columns."""
  torch = pytest.importorskip('torch', reason='torch (requirements-test.txt) is not installed')
  pytest.importorskip('pytorch_pretrained_biggan', reason='pytorch-pretrained-biggan missing')
  from experiments.bench_torch import compare
  threads = torch.get_num_threads()
  try:
    out, _ = compare(tiny_config, num_classes=10, steps=4, warmup=0, threads=(1,),
                     variants=('base',), block=2)
  finally:
    torch.set_num_threads(threads)
  r = out['base']
  assert r['loss_diffs'] and max(r['loss_diffs'].values()) < 1e-5, r['loss_diffs']
  assert r['torch_best_threads'] == 1 and r['torch_best_s'] == r['torch_s'][1] > 0
  assert r['ratio'] == pytest.approx(r['jax_s'] / r['torch_best_s'])
  low, high = r['ratio_interval']
  assert 0 < low <= high
