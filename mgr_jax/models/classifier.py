"""Build the classifier from config, and open any trained or converted one for inference."""
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mgr_jax import checkpoints
from mgr_jax.data.transforms import normalize, resize_image, to_uint8
from mgr_jax.errors import UserError
from mgr_jax.models import conv
from mgr_jax.models.resnet import ResNet18
from mgr_jax.workdir import atomic_write_json, read_json

# The items of a classifier workdir's checkpoints: the train state, the best-validation
# model (what `load_classifier` restores) and the loop's progress.
CHECKPOINT_ITEMS = ('state', 'best', 'progress')


def build_model(model_config, num_classes: int, dtype: str = 'float32') -> ResNet18:
  """`dtype`: the activations' (config.dtype); the variables are float32 either way."""
  return ResNet18(num_classes=num_classes, width=model_config.width,
                  small_stem=model_config.small_stem, dtype=jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_variables(model, image_size: int, rng):
  """Random variables of ``model``: one compiled program, bit-identical to eager init, which
  compiles every initialiser of every layer separately (slower, and too small to cache)."""
  return model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)


def variables_template(model, image_size: int):
  """Shapes/dtypes of {'params', 'batch_stats'} without allocating (restore target)."""
  return jax.eval_shape(lambda: init_variables(model, image_size, jax.random.PRNGKey(0)))


class Classifier:
  """A trained classifier in eval mode (BatchNorm running statistics).

  `clf(images)`: NHWC float32 in [0, 1], any size -> logits, resized, rounded to 8 bits and
  normalised exactly as the training data were. `clf.logits(x)` / `clf.features(x)` take
  already-normalised NHWC input at any size the network accepts.
  """

  def __init__(self, model, variables, image_size, mean, std, class_names):
    self.model, self.variables = model, variables
    self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
    self.class_names = tuple(class_names)
    options = conv.compiler_options()
    self._logits = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=options)
    self._features = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                      method=ResNet18.features),
                             compiler_options=options)

  def preprocess(self, images01) -> np.ndarray:
    images01 = np.asarray(images01, np.float32)
    if images01.ndim != 4 or images01.shape[-1] not in (1, 3):
      raise ValueError(f'Expected NHWC images with 1 or 3 channels, got shape {images01.shape}.')
    if images01.shape[-1] == 1:
      images01 = np.repeat(images01, 3, axis=-1)
    stored = np.stack([to_uint8(resize_image(im, self.image_size)) for im in images01])
    return normalize(stored.astype(np.float32) / 255.0, self.mean, self.std)

  def __call__(self, images01):
    return self.logits(self.preprocess(images01))

  def logits(self, x):
    return self._logits(self.variables, jnp.asarray(x, jnp.float32))

  def features(self, x):
    return self._features(self.variables, jnp.asarray(x, jnp.float32))


def write_classifier_info(directory: str, config, class_names) -> None:
  """`config.json` + `classes.json`: what `load_classifier` needs besides the weights."""
  os.makedirs(directory, exist_ok=True)
  atomic_write_json(os.path.join(directory, 'config.json'), config.to_dict())
  atomic_write_json(os.path.join(directory, 'classes.json'), list(class_names))


def save_classifier(directory: str, config, class_names, variables) -> None:
  """A directory `load_classifier` opens: config/classes JSON + a checkpoint with only 'best'.

  `variables` = {'params', 'batch_stats'} of `build_model(config.model, len(class_names))`.
  """
  manager = checkpoints.open_manager(directory, CHECKPOINT_ITEMS, max_to_keep=1)
  if manager.latest_step() is not None:
    raise UserError(f'{directory!r} already holds a checkpoint; delete it or choose another '
                    'directory.')
  write_classifier_info(directory, config, class_names)
  checkpoints.save(manager, 0, best=jax.tree.map(np.asarray, variables))


def _classifier_info(directory: str, hint: str):
  """(config, class_names) of a classifier directory, each field checked."""
  config_path = os.path.join(directory, 'config.json')
  raw = read_json(config_path, hint)
  class_names = read_json(os.path.join(directory, 'classes.json'), hint)
  if not (isinstance(class_names, list) and class_names
          and all(isinstance(c, str) for c in class_names)):
    raise UserError(f'{os.path.join(directory, "classes.json")} must be a JSON list of class '
                    'names (strings); it was edited or damaged. ' + hint)
  try:  # Coerced in the plain dict: a ConfigDict keeps each field's JSON type.
    model, data = dict(raw['model']), dict(raw['data'])
    model['width'], data['image_size'] = float(model['width']), int(data['image_size'])
    data['mean'], data['std'] = (tuple(map(float, data[k])) for k in ('mean', 'std'))
    if not isinstance(model['small_stem'], bool):
      raise TypeError(f'model.small_stem must be true or false, not {model["small_stem"]!r}')
    if (len(data['mean']) != 3 or len(data['std']) != 3 or data['image_size'] < 1
        or model['width'] <= 0 or min(data['std']) <= 0):
      raise ValueError('data.mean/std need 3 values (std > 0), image_size and width > 0')
    config = ml_collections.ConfigDict(dict(raw, model=model, data=data))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise UserError(f'{config_path} lacks a field load_classifier needs or has one of the '
                    f'wrong type ({type(e).__name__}: {e}); it was edited or damaged. '
                    + hint) from None
  return config, class_names


def load_classifier(directory: str) -> Classifier:
  """Opens a workdir of `mgr_jax.main` or a `converters.resnet18` output (best checkpoint)."""
  hint = (f'{directory!r} is not a classifier directory: pass a workdir of '
          '`python -m mgr_jax.main` (after at least one epoch) or the --out of '
          '`python -m converters.resnet18`.')
  config, class_names = _classifier_info(directory, hint)
  model = build_model(config.model, len(class_names))
  manager = checkpoints.open_manager(directory, CHECKPOINT_ITEMS)
  if manager.latest_step() is None:
    raise UserError(f'{directory!r} has no checkpoint yet. ' + hint)
  template = variables_template(model, config.data.image_size)
  best = checkpoints.restore(
      manager, best=template, remedy=f'The checkpoint files are damaged or incomplete, or '
      f'config.json / classes.json do not describe this model. Copy {directory!r} again '
      'from its source, or re-run the training or converter that wrote it.')['best']
  return Classifier(model, best, config.data.image_size, config.data.mean, config.data.std,
                    class_names)
