"""The epoch loop: train, validate every epoch, keep the best-validation model, test it.

Everything a run writes lives in its workdir: config.json, classes.json, metrics.jsonl,
checkpoints/ and, only at the very end, results.json. Running again on the same workdir
resumes from the last finished epoch and ends with the same results.
"""
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mgr_jax import checkpoints
from mgr_jax import config as config_lib
from mgr_jax.data import feed as feed_lib
from mgr_jax.errors import UserError
from mgr_jax.methods import eval_step
from mgr_jax.models import conv
from mgr_jax.models.classifier import (CHECKPOINT_ITEMS, build_model, load_classifier,
                                       write_classifier_info)
from mgr_jax.train.setup import build_run, obtain_generator
from mgr_jax.train.state import train_epochs
from mgr_jax.workdir import (append_jsonl, atomic_write_json, check_config, check_finite,
                             read_json, workdir_lock, write_jsonl)


def evaluate(eval_fn, variables, split, batch_size, feed):
  """(mean loss, accuracy) over a whole split."""
  sums = [eval_fn(variables['params'], variables['batch_stats'], b)
          for b in feed.evaluate(split, batch_size)]
  total = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *sums))
  return float(total['loss_sum'] / total['count']), float(total['correct'] / total['count'])


def _all_agree(decision: bool) -> bool:
  """Process 0's decision, on every process: Orbax saves are collective, and clocks differ."""
  if jax.process_count() == 1:
    return decision
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.bool_(decision)))


def load_pretrained(config, model, num_classes):
  """Backbone (and fc when the class count matches) from a converted classifier dir."""
  if not config.model.pretrained:
    return None
  source = load_classifier(config.model.pretrained).variables
  fresh = jax.tree.map(jnp.asarray, jax.jit(model.init)(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 5),
      jnp.zeros((1, config.data.image_size, config.data.image_size, 3))))
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  if shapes(source['params']['backbone']) != shapes(fresh['params']['backbone']):
    raise UserError(f'The pretrained backbone in {config.model.pretrained!r} does not fit '
                    f'model.width={config.model.width}, model.small_stem='
                    f'{config.model.small_stem}; set them to the converted model\'s values '
                    '(torchvision ResNet-18: width 1.0, small_stem False).')
  params = dict(fresh['params'], backbone=source['params']['backbone'])
  if shapes(source['params']['fc']) == shapes(fresh['params']['fc']):
    params['fc'] = source['params']['fc']
  return {'params': params, 'batch_stats': source['batch_stats']}


# For meta-learning methods the checkpoint also holds the finder φ of the best epoch (figures
# show F_φ of the kept model); an item of its own, so that classifier loaders need not know it.
BEST_FINDER = 'best_finder'


def train_and_evaluate(config, workdir: str, on_step=None) -> dict:
  """Trains (or resumes, or reads a finished) run in `workdir`; returns its results.

  `on_step(step, state, batch, rng, run)`, if given, is called before every train step
  with the global step number, the state the step starts from, the host batch and the
  step's rng (e.g. to measure something on the same state and batch); it must not keep
  `state`, which the step then consumes.
  """
  # One run per workdir; in multi-process runs process 0 holds it for all.
  with workdir_lock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, on_step)


def _train_and_evaluate(config, workdir: str, on_step=None) -> dict:
  workdir = os.path.abspath(workdir)
  results_path = os.path.join(workdir, 'results.json')
  config_lib.validate(config)
  check_config(workdir, 'config.json', config.to_dict(), 'a run',  # Finished runs too.
               'Use a new --workdir for a new experiment, or the same overrides to resume '
               'this one.', defaults=config_lib.base_config().to_dict())
  if os.path.exists(results_path):
    results = read_json(results_path, 'delete it to train again.')
    print(f'This run has already finished ({results_path}): test accuracy '
          f'{results["test_acc"]:.4f}. Nothing to do; use a new --workdir to train again.')
    return results
  splits = feed_lib.load_splits(config.data)  # Fails on bad data before anything is written.
  print(f'Data {config.data.source}: D {len(splits.train)}, D_val {len(splits.val)}, '
        f'test {len(splits.test)} images, {splits.num_classes} classes.')

  model = build_model(config.model, splits.num_classes)
  pretrained = load_pretrained(config, model, splits.num_classes)
  generator = obtain_generator(config, workdir, splits.num_classes)
  started = time.time()  # Time to first step: build the state, restore, compile, one step.
  run = build_run(config, splits.num_classes, len(splits.train), generator, pretrained)
  feed = feed_lib.Feed(config, splits, run)
  state, steps, schedule = run.state, run.steps_per_epoch, run.ctx.classifier.lr_schedule
  num_epochs = train_epochs(config, steps)
  if num_epochs > config.num_epochs:
    print(f'{steps} steps per epoch: training {num_epochs} epochs for at least '
          f'{config.min_train_steps} steps (min_train_steps).')
  best = {'params': state.params, 'batch_stats': state.batch_stats}
  meta = run.method.finder  # The state holds φ: keep the best epoch's.
  best_finder = state.finder_params if meta else None
  progress = {'epoch': 0, 'best_epoch': 0, 'best_val_acc': -1.0, 'history': [],
              'train_seconds': 0.0}

  os.makedirs(workdir, exist_ok=True)
  lead = jax.process_index() == 0  # In multi-process runs one process writes the files.
  if lead:
    atomic_write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    write_classifier_info(workdir, config, splits.class_names)
  manager = checkpoints.open_manager(workdir, CHECKPOINT_ITEMS + (BEST_FINDER,),
                                     config.checkpoints_to_keep)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if manager.latest_step() is not None:
    # Checkpoints written before the finder was kept have no BEST_FINDER: not restored then.
    extra = ({BEST_FINDER: best_finder} if meta and os.path.isdir(os.path.join(
        str(manager.directory), str(manager.latest_step()), BEST_FINDER)) else {})
    restored = checkpoints.restore(manager, resuming=True, state=state, best=best,
                                   progress=None, **extra)
    state, best, progress = restored['state'], restored['best'], restored['progress']
    best_finder = restored.get(BEST_FINDER)
    print(f'Resuming from epoch {progress["epoch"]} of {num_epochs}.')
  if lead:
    write_jsonl(metrics_path, progress['history'])  # Drops lines of an unsaved epoch.

  train_step = run.jit_step()
  eval_fn = jax.jit(functools.partial(eval_step, ctx=run.ctx),
                    compiler_options=conv.compiler_options())
  step_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)

  last_save = time.time()
  for epoch in range(progress['epoch'], num_epochs):
    start = time.time()
    lr = float(schedule(epoch * steps))
    sums, count = None, 0
    bar = tqdm(feed.train(epoch), total=steps, desc=f'epoch {epoch + 1}/{num_epochs}',
               leave=False, disable=not config.progress_bar, dynamic_ncols=True)
    for i, (batch, device_batch) in enumerate(bar):
      if on_step is not None:
        on_step(epoch * steps + i, state, batch, step_rng, run)
      state, metrics = train_step(state, device_batch, step_rng, run.gen_vars)
      if started is not None:  # Setup + compilation (see mgr_jax/compile_cache.py).
        jax.block_until_ready(state)
        print(f'Time to first step: {time.time() - started:.1f} s.', flush=True)
        started = None
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      count += 1
      if count % 10 == 0 or count == steps:
        shown = jax.device_get(sums)
        bar.set_postfix(loss=f'{shown["loss"] / count:.3f}',
                        acc=f'{shown["accuracy"] / count:.3f}')
    train = {k: float(v) / count for k, v in jax.device_get(sums).items()}
    check_finite(train, f'Training in epoch {epoch + 1}',
                 'Lower --config.learning_rate (or the method\'s loss weights)')
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    val_loss, val_acc = evaluate(eval_fn, variables, splits.val, config.eval_batch_size, feed)
    if val_acc > progress['best_val_acc']:
      best = jax.tree.map(jnp.copy, variables)
      best_finder = jax.tree.map(jnp.copy, state.finder_params) if meta else None
      progress['best_val_acc'], progress['best_epoch'] = val_acc, epoch + 1
    row = {'epoch': epoch + 1, 'train_loss': train['loss'], 'train_acc': train['accuracy'],
           **{f'train_{k}': v for k, v in train.items() if k not in ('loss', 'accuracy')},
           'val_loss': val_loss, 'val_acc': val_acc, 'lr': lr,
           'seconds': round(time.time() - start, 3)}
    progress['history'].append(row)
    progress['epoch'] = epoch + 1
    progress['train_seconds'] += row['seconds']
    if epoch + 1 == num_epochs or _all_agree(
        time.time() - last_save >= config.checkpoint_every_seconds):
      checkpoints.save(manager, epoch + 1, state=state, best=best, progress=progress,
                       **({BEST_FINDER: best_finder} if best_finder is not None else {}))
      last_save = time.time()
    if lead:
      append_jsonl(metrics_path, row)
    print(f'epoch {epoch + 1:3d}/{num_epochs}  train loss {train["loss"]:.4f} '
          f'acc {train["accuracy"]:.4f}  val loss {val_loss:.4f} acc {val_acc:.4f}  '
          f'lr {lr:.2g}  {row["seconds"]:.1f}s', flush=True)

  _, test_acc = evaluate(eval_fn, best, splits.test, config.eval_batch_size, feed)
  results = {'method': config.method, 'seed': config.seed, 'data_source': config.data.source,
             'data_fraction': config.data.fraction, 'data_seed': config.data.seed,
             'best_epoch': progress['best_epoch'], 'best_val_acc': progress['best_val_acc'],
             'test_acc': test_acc, 'num_epochs': num_epochs, 'num_steps': num_epochs * steps,
             'wall_seconds': round(progress['train_seconds'], 2)}
  if lead:
    atomic_write_json(results_path, results)
  print(f'Test accuracy {test_acc:.4f} (best val acc {progress["best_val_acc"]:.4f} at epoch '
        f'{progress["best_epoch"]}). Results: {results_path}')
  return results
