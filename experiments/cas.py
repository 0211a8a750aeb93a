"""Classification accuracy score (CAS) of a conditional generator.

  python -m experiments.cas --generator runs/digits_gan/generator \
      --classifier runs/digits_base [--n 1000] [--truncation 1.0] [--seed 0]

Samples n images spread evenly over the classes (z ~ N(0, I), noise_mode 'const'), maps them
from [-1, 1] to [0, 1], and lets a trained classifier (`mgr_jax.models.load_classifier`,
which resizes and normalises exactly as its training data were) label them. CAS is the
share labelled as the class they were generated for; per-class scores are printed too.
"""
import argparse
import json

import jax
import numpy as np

from mgr_jax import generators
from mgr_jax.cli import exit_on_user_error
from mgr_jax.errors import UserError
from mgr_jax.models import load_classifier


def classification_accuracy_score(gen, clf, n: int = 1000, seed: int = 0,
                                  truncation_psi: float = 1.0, batch_size: int = 250):
  """(CAS, per-class accuracy [num_classes]) of `gen` judged by `clf`."""
  if gen.num_classes == 0:
    raise UserError('CAS needs a conditional generator; this one is unconditional.')
  if gen.num_classes != len(clf.class_names):
    raise UserError(f'The generator has {gen.num_classes} classes but the classifier '
                    f'{len(clf.class_names)}: they were trained on different data.')
  labels = np.arange(n) % gen.num_classes
  key = jax.random.PRNGKey(seed)
  preds = []
  for start in range(0, n, batch_size):
    lab = labels[start:start + batch_size]
    z = jax.random.normal(jax.random.fold_in(key, start), (len(lab), gen.z_dim))
    images = np.asarray(gen(z, lab, truncation_psi=truncation_psi, noise_mode='const'))
    images01 = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
    preds.append(np.argmax(np.asarray(clf(images01)), axis=-1))
  correct = np.concatenate(preds) == labels
  per_class = np.array([correct[labels == c].mean() for c in range(gen.num_classes)])
  return float(correct.mean()), per_class


@exit_on_user_error
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
  parser.add_argument('--generator', required=True, help='Generator directory.')
  parser.add_argument('--classifier', required=True,
                      help='Workdir of `python -m mgr_jax.main` (or a converted classifier).')
  parser.add_argument('--n', type=int, default=1000, help='Number of samples.')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--truncation', type=float, default=1.0)
  args = parser.parse_args(argv)
  gen = generators.load(args.generator)
  clf = load_classifier(args.classifier)
  score, per_class = classification_accuracy_score(gen, clf, args.n, args.seed,
                                                   args.truncation)
  for name, acc in zip(clf.class_names, per_class):
    print(f'class {name}: {acc:.3f}')
  print(f'CAS {score:.4f} ({args.n} samples, truncation {args.truncation})')
  print(json.dumps({'cas': score, 'n': args.n, 'generator': args.generator,
                    'classifier': args.classifier}))


if __name__ == '__main__':
  main()
