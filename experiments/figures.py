"""Figures of the paper from finished runs (best-validation checkpoint and metrics.jsonl).

  python -m experiments.figures --run=runs/study/f0.1/mgr_seed0 \
      [--baseline=runs/study/f0.1/pcr_seed0] [--out=DIR] [--figures=val_loss,samples,umap]

- val_loss.png (Fig. 7a): validation loss per epoch of the run (MPS when it meta-learns a
  finder) and of the baseline (uniform sampling, e.g. pcr).
- samples.png (Fig. 8): the same z and y_p through G(z, y) (uniform) and G(F_φ(z), y) (MPS,
  the finder of the best epoch), one row per class; needs a meta-learning run (mgr, gda_mps).
- umap.png (Fig. 5/6): UMAP (umap-learn, default hyperparameters as in the paper) of the
  features g(x) of the best model, in eval mode, for real test images, uniform synthetic
  samples and (for a meta-learning run) MPS samples; a second panel for the baseline.
  `--embedding=pca` draws the same with a PCA (no umap-learn, instant).

Default --out: <run>/figures.
"""
import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np
from absl import flags

from experiments import plots
from mgr_jax.errors import UserError

FIGURES = ('val_loss', 'samples', 'umap')

FLAGS = flags.FLAGS


def _define_flags():
  """Only when run as a program: tests import this module's functions."""
  flags.DEFINE_string('run', None, 'Workdir of a finished (or at least one epoch) run.')
  flags.DEFINE_string('baseline', '', 'Workdir of a uniform-sampling run (pcr).')
  flags.DEFINE_string('out', '', 'Output directory (default <run>/figures).')
  flags.DEFINE_list('figures', list(FIGURES), f'Which of {FIGURES}.')
  flags.DEFINE_enum('embedding', 'umap', ['umap', 'pca'], '2-D embedding.')
  flags.DEFINE_integer('num_real', 1000, 'Real test images in the embedding (at most).')
  flags.DEFINE_integer('num_synthetic', 500, 'Synthetic samples per kind in the embedding.')
  flags.DEFINE_integer('per_class', 8, 'Samples per class row of samples.png.')
  flags.DEFINE_integer('seed', 0, 'Seed of z and y_p.')
  flags.mark_flags_as_required(['run'])


@dataclasses.dataclass
class Run:
  path: str
  config: Any
  rows: list  # metrics.jsonl
  classifier: Any  # mgr_jax.models.Classifier (best epoch, eval mode)
  generator: Optional[Any] = None
  finder: Optional[Any] = None  # Flax module
  finder_params: Optional[Any] = None  # φ of the best epoch

  @property
  def name(self):
    return f'{self.config.method} ({os.path.basename(os.path.normpath(self.path))})'


def load_run(path: str, need_finder: bool = False) -> Run:
  import jax
  import jax.numpy as jnp
  import ml_collections
  from mgr_jax import checkpoints, generators
  from mgr_jax import finder as finder_lib
  from mgr_jax.methods import METHODS
  from mgr_jax.models import load_classifier
  from mgr_jax.models.classifier import CHECKPOINT_ITEMS
  from mgr_jax.train.loop import BEST_FINDER
  from mgr_jax.workdir import read_json
  path = os.path.abspath(path)
  hint = 'pass the workdir of a run of mgr_jax.main / experiments.* (after one epoch at least).'
  config = ml_collections.ConfigDict(read_json(os.path.join(path, 'config.json'), hint))
  metrics = os.path.join(path, 'metrics.jsonl')
  if not os.path.exists(metrics):
    raise UserError(f'{metrics} is missing: {hint}')
  with open(metrics) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  run = Run(path, config, rows, load_classifier(path))
  method = METHODS.get(config.method)
  if method is None or not method.uses_generator:
    return run
  gen_dir = config.generator.checkpoint or os.path.join(path, 'generator')
  run.generator = generators.load(gen_dir)
  # A finder to show (meta.target=generator meta-learns G's parameters: no finder).
  if method.finder and config.meta.get('target', 'finder') == 'finder':
    fcfg = config.meta.finder
    run.finder = finder_lib.make_finder(fcfg.arch, run.generator.z_dim, fcfg.hidden or None,
                                        zero_init_last=fcfg.identity_init)
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
        run.finder.init, jax.random.PRNGKey(0), jnp.zeros((1, run.generator.z_dim)))['params'])
    path_item = os.path.join(path, 'checkpoints')
    manager = checkpoints.open_manager(path, CHECKPOINT_ITEMS + (BEST_FINDER,))
    step = manager.latest_step()
    if step is not None and os.path.isdir(os.path.join(path_item, str(step), BEST_FINDER)):
      run.finder_params = checkpoints.restore(manager, **{BEST_FINDER: template})[BEST_FINDER]
  if need_finder and run.finder_params is None:
    raise UserError(f'{path}: no finder parameters in its best checkpoint. samples.png needs '
                    'a meta-learning run (mgr, gda_mps) saved by this version.')
  return run


def draw_latents(generator, n: int, seed: int, num_classes: int):
  import jax
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, generator.z_dim)))
  labels = np.arange(n) % max(num_classes, 1)
  return z, labels


def synthesize(run: Run, z, labels, mps: bool, batch: int = 250):
  """Images in [0, 1] of G(z, y) (mps=False) or G(F_φ(z), y) (mps=True)."""
  out = []
  psi = run.config.synth.truncation_psi
  for i in range(0, len(z), batch):
    zb = z[i:i + batch]
    if mps:
      zb = run.finder.apply({'params': run.finder_params}, zb)
    lab = labels[i:i + batch] if run.generator.num_classes else None
    images = np.asarray(run.generator(zb, lab, truncation_psi=psi, noise_mode='const'))
    out.append(np.clip((images + 1.0) / 2.0, 0.0, 1.0))
  return np.concatenate(out)


def features(run: Run, images01, batch: int = 250):
  clf = run.classifier
  return np.concatenate([np.asarray(clf.features(clf.preprocess(images01[i:i + batch])))
                         for i in range(0, len(images01), batch)])


def plot_val_loss(run: Run, baseline: Optional[Run], path: str) -> str:
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for r, kind in ((run, 'MPS' if run.finder is not None else 'uniform'),
                  (baseline, 'uniform' if baseline and baseline.finder is None else 'MPS')):
    if r is None:
      continue
    ax.plot([row['epoch'] for row in r.rows], [row['val_loss'] for row in r.rows],
            marker='o' if len(r.rows) <= 40 else None, label=f'{kind}: {r.name}')
  # Log scale: the first epochs' losses are 10-50x the late ones the methods differ in.
  ax.set(xlabel='epoch', ylabel='validation loss (D_val)', title='Validation loss',
         yscale='log')
  ax.grid(alpha=0.3)
  ax.legend()
  return plots.save(fig, path)


def _grid(images, rows: int, cols: int):
  n, h, w, c = images.shape
  return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
      rows * h, cols * w, c)


def plot_samples(run: Run, per_class: int, seed: int, path: str) -> str:
  classes = run.generator.num_classes or 1
  rows = min(classes, 20)
  labels = np.repeat(np.arange(rows), per_class)
  z, _ = draw_latents(run.generator, len(labels), seed, classes)
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(2 + 0.9 * per_class * 2, 1 + 0.9 * rows))
  for ax, mps, title in ((axes[0], False, 'uniform: G(z, y)'),
                         (axes[1], True, 'MPS: G(F_φ(z), y)')):
    grid = _grid(synthesize(run, z, labels, mps), rows, per_class)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap='gray',
              interpolation='nearest')
    ax.set_title(title)
    h = grid.shape[0] // rows
    ax.set_yticks(np.arange(rows) * h + h / 2)
    ax.set_yticklabels([str(n) for n in run.classifier.class_names[:rows]])
    ax.set_xticks([])
  fig.suptitle(f'Same z and y_p, {run.name}')
  return plots.save(fig, path)


def embed(feats: np.ndarray, method: str = 'umap', seed: int = 0) -> np.ndarray:
  """[n, d] -> [n, 2]: UMAP with its default hyperparameters (as the paper), or PCA."""
  if method == 'pca':
    from sklearn.decomposition import PCA
    return PCA(2, random_state=seed).fit_transform(feats)
  try:
    import umap
  except ImportError:
    raise UserError('umap-learn is not installed (pip install umap-learn), or use '
                    '--embedding=pca.') from None
  import warnings
  with warnings.catch_warnings():  # random_state forces one thread: reproducible.
    warnings.simplefilter('ignore', UserWarning)
    return umap.UMAP(random_state=seed).fit_transform(feats)


def umap_panel(ax, run: Run, real01, real_labels, n_synth: int, seed: int, method: str):
  groups = [('real', features(run, real01))]
  if run.generator is not None:
    z, labels = draw_latents(run.generator, n_synth, seed, run.generator.num_classes)
    groups.append(('uniform G(z)', features(run, synthesize(run, z, labels, False))))
    if run.finder_params is not None:
      groups.append(('MPS G(F(z))', features(run, synthesize(run, z, labels, True))))
  xy = embed(np.concatenate([f for _, f in groups]), method, seed)
  start = 0
  for name, f in groups:
    part = xy[start:start + len(f)]
    start += len(f)
    if name == 'real':
      sc = ax.scatter(part[:, 0], part[:, 1], c=real_labels, cmap='tab10', s=6, alpha=0.7)
      # A legend of its own: the next ax.legend() call would replace it.
      ax.add_artist(ax.legend(*sc.legend_elements(), title='real, class', fontsize=6,
                              loc='upper right'))
    else:
      marker, color = ('x', 'grey') if name.startswith('uniform') else ('+', 'black')
      ax.scatter(part[:, 0], part[:, 1], marker=marker, c=color, s=12, alpha=0.6, label=name)
  if len(groups) > 1:
    ax.legend(loc='lower left', fontsize=7)
  ax.set_title(f'{run.name}: g(x), {method.upper()}')
  ax.set_xticks([])
  ax.set_yticks([])


def plot_umap(run: Run, baseline: Optional[Run], path: str, num_real: int, num_synthetic: int,
              seed: int, method: str) -> str:
  from mgr_jax.data import load_splits
  test = load_splits(run.config.data).test
  idx = np.random.default_rng(seed).permutation(len(test))[:num_real]
  real01 = test.images[idx].astype(np.float32) / 255.0
  panels = [r for r in (run, baseline) if r is not None]
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
  for ax, r in zip(axes[0], panels):
    umap_panel(ax, r, real01, test.labels[idx], num_synthetic, seed, method)
  return plots.save(fig, path)


def make_figures(run_dir, baseline_dir='', out='', which=FIGURES, embedding='umap',
                 num_real=1000, num_synthetic=500, per_class=8, seed=0):
  unknown = [w for w in which if w not in FIGURES]
  if unknown:
    raise UserError(f'--figures: unknown {unknown}; choose from {FIGURES}.')
  run = load_run(run_dir, need_finder='samples' in which)
  baseline = load_run(baseline_dir) if baseline_dir else None
  out = os.path.abspath(out or os.path.join(run_dir, 'figures'))
  written = []
  if 'val_loss' in which:
    written.append(plot_val_loss(run, baseline, os.path.join(out, 'val_loss.png')))
  if 'samples' in which:
    written.append(plot_samples(run, per_class, seed, os.path.join(out, 'samples.png')))
  if 'umap' in which:
    written.append(plot_umap(run, baseline, os.path.join(out, 'umap.png'), num_real,
                             num_synthetic, seed, embedding))
  for path in written:
    print(f'Written: {path}', flush=True)
  return written


def main():
  make_figures(FLAGS.run, FLAGS.baseline, FLAGS.out, FLAGS.figures, FLAGS.embedding,
               FLAGS.num_real, FLAGS.num_synthetic, FLAGS.per_class, FLAGS.seed)


if __name__ == '__main__':
  _define_flags()
  from mgr_jax import cli
  cli.run(main)
