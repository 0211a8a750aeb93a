"""experiments.bench_torch's ratio interval: paired over the interleaved rounds."""
import numpy as np

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
