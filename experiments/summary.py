"""Statistics and tables over seeds: mean ± std, the paired difference to base with a t
interval, the study's Markdown table (paper style) and its accuracy-vs-fraction plot."""
import math
import statistics
from typing import Dict, List, Optional, Sequence

from experiments import plots


def mean_std(values: Sequence[float]):
  """(mean, sample standard deviation); the deviation of a single value is 0."""
  values = list(values)
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(values: Sequence[float], reference: Sequence[float],
                      confidence: float = 0.95) -> dict:
  """Mean of values[i] − reference[i] and its two-sided Student-t confidence interval.

  The pairs share a seed (same initialisation and batch order), so the difference removes
  the seed's share of the variance. `low`/`high` are None for fewer than two pairs.
  """
  from scipy import stats
  diffs = [a - b for a, b in zip(values, reference, strict=True)]
  n = len(diffs)
  mean = statistics.fmean(diffs)
  if n < 2:
    return {'mean': mean, 'low': None, 'high': None, 'n': n, 'confidence': confidence}
  half = (stats.t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n))
  return {'mean': mean, 'low': mean - half, 'high': mean + half, 'n': n,
          'confidence': confidence}


def study_cells(accs: Dict[str, Dict[str, Dict[int, float]]], base: str = 'base') -> List[dict]:
  """accs[method][fraction_key][seed] = test accuracy (%) -> one cell per (method, fraction)
  with the per-seed values, mean, std and (when `base` ran) the paired difference to base
  over the seeds both have."""
  cells = []
  for method, by_fraction in accs.items():
    for fraction, by_seed in by_fraction.items():
      seeds = sorted(by_seed)
      mean, std = mean_std(by_seed[s] for s in seeds)
      cell = {'method': method, 'fraction': fraction, 'seeds': seeds,
              'test_acc': [by_seed[s] for s in seeds], 'mean': mean, 'std': std,
              'vs_base': None}
      reference = accs.get(base, {}).get(fraction)
      if method != base and reference:
        common = [s for s in seeds if s in reference]
        if common:
          cell['vs_base'] = paired_difference([by_seed[s] for s in common],
                                              [reference[s] for s in common])
          cell['vs_base']['seeds'] = common
      cells.append(cell)
  return cells


def _cell(cells, method, fraction) -> Optional[dict]:
  return next((c for c in cells if c['method'] == method and c['fraction'] == fraction), None)


def markdown(cells: List[dict], methods: List[str], fractions: List[str], title: str,
             base: str = 'base') -> str:
  """Rows = methods, columns = fractions. As in the paper's Table 1: **bold** = best mean of
  the column, <u>underlined</u> = mean above base's. Then the paired differences to base."""
  header = '| method | ' + ' | '.join(f'{float(f) * 100:g} %' for f in fractions) + ' |'
  rule = '|---|' + '---|' * len(fractions)
  lines = [f'# {title}', '', 'Test accuracy (%), mean ± std over seeds. **Bold**: best in '
           f'its column; <u>underlined</u>: above {base}.', '', header, rule]
  for method in methods:
    row = []
    for fraction in fractions:
      cell = _cell(cells, method, fraction)
      if cell is None:
        row.append('—')
        continue
      column = [c['mean'] for c in cells if c['fraction'] == fraction]
      ref = _cell(cells, base, fraction)
      text = f'{cell["mean"]:.2f}'
      # Accuracies are float32 fractions × 100: equal image counts can differ in the 7th
      # digit, and a tie is a tie (both bold).
      if cell['mean'] >= max(column) - 1e-4:
        text = f'**{text}**'
      if method != base and ref is not None and cell['mean'] > ref['mean']:
        text = f'<u>{text}</u>'
      row.append(f'{text} ± {cell["std"]:.2f} (n={len(cell["seeds"])})')
    lines.append(f'| {method} | ' + ' | '.join(row) + ' |')
  others = [m for m in methods if m != base]
  if any(_cell(cells, base, f) for f in fractions) and others:
    lines += ['', f'Paired difference to {base} (percentage points), mean over the seeds both '
              'ran [95 % Student-t interval]:', '', header, rule]
    for method in others:
      row = []
      for fraction in fractions:
        cell = _cell(cells, method, fraction)
        d = cell and cell['vs_base']
        if not d:
          row.append('—')
        elif d['low'] is None:
          row.append(f'{d["mean"]:+.2f} (n={d["n"]}, no interval)')
        else:
          row.append(f'{d["mean"]:+.2f} [{d["low"]:+.2f}, {d["high"]:+.2f}] (n={d["n"]})')
      lines.append(f'| {method} | ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'


def plot_accuracy_vs_fraction(cells: List[dict], methods: List[str], fractions: List[str],
                              path: str, title: str = '') -> str:
  """Mean test accuracy against the share of D (log axis), error bars = std over seeds."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for method in methods:
    points = [(float(f) * 100, c['mean'], c['std']) for f in fractions
              if (c := _cell(cells, method, f)) is not None]
    if points:
      x, y, err = zip(*points)
      ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=method)
  ax.set_xscale('log')
  ticks = [float(f) * 100 for f in fractions]
  ax.set_xticks(ticks)
  ax.set_xticklabels([f'{t:g}' for t in ticks])
  ax.minorticks_off()
  ax.set_xlabel('share of D used (%)')
  ax.set_ylabel('test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  return plots.save(fig, path)
