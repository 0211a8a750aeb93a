"""Accuracy of a finished run's best model under the 15 common corruptions × 5 severities
(the paper's B.9, Table 12 on CIFAR-10-C), on the run's own test split.

  python -m experiments.robustness --run=runs/digits/mgr_seed0 [--seed 0] [--limit N]

Writes <run>/robustness.json (clean accuracy, accuracy per corruption and severity, the mean
over severities per corruption, and the mean corruption accuracy over all 75) and
<run>/robustness.md (the Table 12 layout: one row, a column per corruption). The corruptions
are `mgr_jax.corruptions` (CIFAR-10-C's definitions and parameters); their random draws depend
only on --seed, so every run evaluated with the same seed sees the same corrupted images.
"""
import argparse
import json
import os

import ml_collections
import numpy as np

from mgr_jax import corruptions
from mgr_jax.cli import exit_on_user_error
from mgr_jax.data import load_splits
from mgr_jax.errors import UserError
from mgr_jax.models import load_classifier
from mgr_jax.workdir import atomic_write_json, read_json


def accuracy(clf, images01, labels, batch_size: int = 256) -> float:
  preds = [np.argmax(np.asarray(clf(images01[i:i + batch_size])), -1)
           for i in range(0, len(images01), batch_size)]
  return float(np.mean(np.concatenate(preds) == labels))


def evaluate(clf, images_uint8, labels, seed: int = 0):
  """{'clean', 'per_severity': {name: [5 accs]}, 'per_corruption': {name: mean}, 'mean'}."""
  result = {'clean': accuracy(clf, images_uint8.astype(np.float32) / 255.0, labels),
            'per_severity': {}, 'per_corruption': {}}
  for ci, name in enumerate(corruptions.CORRUPTIONS):
    accs = []
    for severity in corruptions.SEVERITIES:
      rng = np.random.default_rng([seed, ci, severity])
      corrupted = np.stack([corruptions.corrupt(im, name, severity, rng)
                            for im in images_uint8])
      accs.append(accuracy(clf, corrupted, labels))
    result['per_severity'][name] = accs
    result['per_corruption'][name] = float(np.mean(accs))
  result['mean'] = float(np.mean(list(result['per_corruption'].values())))
  return result


def markdown(result, title: str) -> str:
  names = list(result['per_corruption'])
  head = '| run | clean | ' + ' | '.join(names) + ' | mean |'
  row = (f'| {title} | {100 * result["clean"]:.2f} | '
         + ' | '.join(f'{100 * result["per_corruption"][n]:.2f}' for n in names)
         + f' | {100 * result["mean"]:.2f} |')
  return '\n'.join([head, '|' + '---|' * (len(names) + 3), row]) + '\n'


@exit_on_user_error
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--run', required=True, help='Workdir of a finished `mgr_jax.main` run.')
  parser.add_argument('--seed', type=int, default=0, help='Seed of the corruption draws.')
  parser.add_argument('--limit', type=int, default=0,
                      help='Evaluate only the first N test images (0 = all).')
  args = parser.parse_args(argv)
  run = args.run
  if not os.path.exists(os.path.join(run, 'results.json')):
    raise UserError(f'{run!r} is not a finished run (no results.json): pass the workdir of a '
                    '`python -m mgr_jax.main` run that has finished.')
  config = ml_collections.ConfigDict(read_json(os.path.join(run, 'config.json'),
                                               'the run directory is damaged.'))
  clf = load_classifier(run)
  test = load_splits(config.data).test
  images, labels = test.images, test.labels
  if args.limit > 0:
    images, labels = images[:args.limit], labels[:args.limit]
  result = evaluate(clf, images, labels, args.seed)
  result.update(run=os.path.abspath(run), method=config.method, seed=args.seed,
                test_images=int(len(labels)))
  atomic_write_json(os.path.join(run, 'robustness.json'), result)
  table = markdown(result, config.method)
  with open(os.path.join(run, 'robustness.md'), 'w') as f:
    f.write(f'Test accuracy (%) under corruption, mean over severities 1-5 '
            f'({len(labels)} test images, corruption seed {args.seed}):\n\n' + table)
  print(table, end='')
  print(f'Mean corruption accuracy {result["mean"]:.4f} (clean {result["clean"]:.4f}); '
        f'wrote {os.path.join(run, "robustness.json")} and robustness.md')


if __name__ == '__main__':
  main()
