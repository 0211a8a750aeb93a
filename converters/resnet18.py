"""torchvision resnet18 state_dict -> classifier directory for `load_classifier` / pretraining.

  python -m converters.resnet18 --src resnet18.pth --out DIR [--num-classes K] [--image-size 224]

`--src` is a torchvision `resnet18` state_dict (e.g. resnet18-f37072fd.pth), read with
`torch.load(weights_only=True)`: nothing in it is executed. Convolutions OIHW -> HWIO, fc
weight transposed, BatchNorm weight/bias -> scale/bias and running_mean/var -> batch_stats
mean/var (num_batches_tracked is dropped). The class count is the checkpoint's fc rows;
`--num-classes K` with another K keeps the backbone and re-initialises fc (seeded, `--seed`).
DIR gets config.json (base config, width 1.0, 7x7 stem, ImageNet mean/std, `--image-size`),
classes.json (class_0 ... class_{K-1}) and a checkpoint: `mgr_jax.models.load_classifier(DIR)`
opens it and `python -m mgr_jax.main ... --config.model.pretrained=DIR` starts from it.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from converters.torch_state_dict import check_total_size, listing, mismatches, read_state_dict
from mgr_jax.errors import UserError

_IMAGENET_CLASSES = 1000
# Flax name -> torch name inside a block / the stem.
_MODULES = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
# (collection, Flax leaf) -> torch tensor suffix.
_LEAVES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
           ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}


def _torch_key(key):
  """E.g. ('params', 'backbone', 'layer2_0', 'downsample_conv', 'kernel') ->
  'layer2.0.downsample.0.weight' ('backbone' has no torchvision level); fc -> 'fc.weight'."""
  collection, *path, leaf = key
  if path[0] == 'backbone':
    path = path[1:]
  parts = []
  for name in path:
    if name.startswith('layer'):
      parts.append(name.replace('_', '.'))
    else:
      parts.append(_MODULES.get(name, name))
  return '.'.join(parts + [_LEAVES[(collection, leaf)]])


def _torch_shape(flax_shape):
  if len(flax_shape) == 4:  # HWIO <- OIHW
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:  # (in, out) <- (out, in)
    return (flax_shape[1], flax_shape[0])
  return tuple(flax_shape)


def _template(num_classes: int):
  """{Flax key tuple: shape} of a width-1.0, 7x7-stem ResNet18 (nothing allocated)."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util
  from mgr_jax.models.resnet import ResNet18
  model = ResNet18(num_classes=num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 32, 32, 3), jnp.float32)))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def source_classes(state_dict) -> int:
  """The checkpoint's class count (rows of fc.weight); 1000 when it cannot tell."""
  w = state_dict.get('fc.weight')
  return int(w.shape[0]) if w is not None and np.ndim(w) == 2 else _IMAGENET_CLASSES


def convert(state_dict, num_classes: int | None = None, seed: int = 0):
  """(num_classes, {'params', 'batch_stats'}) from a torchvision resnet18 state_dict.

  `state_dict`: {name: array}. fc is kept when `num_classes` is None or the checkpoint's own
  class count, else re-initialised (Flax Dense init, PRNGKey(seed)) for `num_classes`.
  """
  from flax import traverse_util
  sd = {k: np.asarray(v) for k, v in state_dict.items()  # Views: nothing converted yet.
        if not k.endswith('.num_batches_tracked')}
  check_total_size({k: v.shape for k, v in sd.items()}, 'The state_dict')
  src_classes = source_classes(state_dict)
  plan = {key: (_torch_key(key), _torch_shape(shape))
          for key, shape in _template(src_classes).items()}
  expected = dict(plan.values())
  parts, unexpected = mismatches(expected, sd)
  if parts:
    hint = ''
    if any(k.startswith('module.') for k in unexpected):
      hint = ' Keys start with "module.": strip that prefix (a DataParallel state_dict).'
    raise UserError('The checkpoint is not a torchvision resnet18 state_dict: '
                    + '; '.join(parts) + '.' + hint + ' Pass the state_dict of '
                    '`torchvision.models.resnet18(...)` (e.g. resnet18-f37072fd.pth); other '
                    'depths (resnet34/50) and widths are not supported.')
  flat = {}
  for key, (torch_key, _) in plan.items():
    v = sd[torch_key].astype(np.float32)
    if v.ndim == 4:
      v = v.transpose(2, 3, 1, 0)
    elif v.ndim == 2:
      v = v.T
    flat[key] = np.ascontiguousarray(v)
  bad = [torch_key for key, (torch_key, _) in plan.items() if not np.all(np.isfinite(flat[key]))]
  if bad:
    raise UserError('The checkpoint holds non-finite values in: ' + listing(bad)
                    + '. Re-download or re-export it.')
  bad_var = [torch_key for key, (torch_key, _) in plan.items()
             if key[-1] == 'var' and np.any(flat[key] < 0)]
  if bad_var:
    raise UserError('Negative BatchNorm running variances in: ' + listing(bad_var)
                    + '. The checkpoint is damaged.')
  variables = traverse_util.unflatten_dict(flat)
  if num_classes is not None and num_classes != src_classes:
    variables['params']['fc'] = fresh_fc(num_classes, seed)
  else:
    num_classes = src_classes
  return num_classes, variables


def fresh_fc(num_classes: int, seed: int):
  """A randomly initialised fc (the same initialiser a fresh ResNet18 uses) as numpy."""
  import jax
  import jax.numpy as jnp
  from mgr_jax.models.resnet import ResNet18, feature_dim
  model = ResNet18(num_classes=num_classes)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, feature_dim(1.0)), jnp.float32),
                      method=ResNet18.head)['params']['fc']
  return jax.tree.map(np.asarray, params)


def read_checkpoint(path: str):
  """{name: numpy array} from a torchvision resnet18 state_dict file."""
  return read_state_dict(path, 'Pass a torchvision resnet18 state_dict saved with '
                         'torch.save(model.state_dict(), ...) (e.g. resnet18-f37072fd.pth).')


def classifier_config(image_size: int):
  from mgr_jax.config import base_config
  from mgr_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
  config = base_config()
  config.model.width = 1.0
  config.model.small_stem = False
  config.data.image_size = image_size
  config.data.mean = IMAGENET_MEAN
  config.data.std = IMAGENET_STD
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m converters.resnet18', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True, help='torchvision resnet18 state_dict (.pth)')
  parser.add_argument('--out', required=True, help='classifier directory to write')
  parser.add_argument('--num-classes', type=int, default=None,
                      help="class count (default: the checkpoint's); another count keeps the "
                           'backbone and re-initialises fc')
  parser.add_argument('--image-size', type=int, default=224,
                      help='input size recorded in config.json (what clf(images) resizes to)')
  parser.add_argument('--seed', type=int, default=0, help='seed of a re-initialised fc')
  args = parser.parse_args(argv)
  try:
    if args.num_classes is not None and args.num_classes < 1:
      raise UserError(f'--num-classes {args.num_classes} must be at least 1.')
    if args.image_size < 8:
      raise UserError(f'--image-size {args.image_size} is too small; use at least 8 '
                      '(224 for ImageNet weights).')
    state_dict = read_checkpoint(args.src)
    num_classes, variables = convert(state_dict, args.num_classes, args.seed)
    from mgr_jax.models.classifier import save_classifier
    save_classifier(args.out, classifier_config(args.image_size),
                    [f'class_{i}' for i in range(num_classes)], variables)
  except UserError as e:
    print(f'Error: {e}', file=sys.stderr)
    return 2
  reinit = num_classes != source_classes(state_dict)
  print(f'wrote ResNet-18 ({num_classes} classes{", fc re-initialised" if reinit else ""}, '
        f'{args.image_size} px) to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
