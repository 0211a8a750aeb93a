"""pytorch-pretrained-BigGAN checkpoint -> generator directory (kind "biggan").

  python -m converters.biggan --src pytorch_model.bin --config config.json --out DIR

`--src` is the package's `pytorch_model.bin` (a state_dict, read with
`torch.load(weights_only=True)`: nothing in it is executed), `--config` its `config.json`.
Spectral norm is folded here exactly as the package's eval forward does it
(W / (u . W v) with the stored u and v, no power iteration); conv_to_rgb keeps only the
3 output channels the package uses. Then `mgr_jax.generators.load(DIR)` gives the generator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from converters.torch_state_dict import check_total_size, listing, mismatches, read_state_dict
from mgr_jax.errors import UserError
from mgr_jax import generators
from mgr_jax.generators import biggan

def _torch_prefix(path):
  """('layers_3', 'bn_1', 'scale') -> 'generator.layers.3.bn_1.scale'."""
  parts = [('layers.' + p[len('layers_'):]) if p.startswith('layers_') else p for p in path]
  if parts[0] != 'embeddings':
    parts = ['generator'] + parts
  return '.'.join(parts)


def _template(kwargs):
  """Shapes of the Flax variables, without allocating them."""
  from flax import traverse_util
  return traverse_util.flatten_dict(biggan.abstract_variables(biggan.BigGAN(**kwargs)))


def _plan(kwargs):
  """For each Flax leaf: (its key tuple, {torch key: torch shape}, how to build it)."""
  ch = kwargs['channel_width']
  plan = []
  for key, leaf in _template(kwargs).items():
    collection, path, name = key[0], key[1:-1], key[-1]
    prefix = _torch_prefix(path)
    shape = tuple(leaf.shape)
    rgb = path[-1] == 'conv_to_rgb'
    if collection == 'params' and name == 'kernel':
      if len(shape) == 4:  # HWIO <- OIHW
        kh, kw, cin, cout = shape
        torch_shape = (ch if rgb else cout, cin, kh, kw)
      else:  # (in, out) <- (out, in)
        torch_shape = (shape[1], shape[0])
      if path == ('embeddings',):
        plan.append((key, {prefix + '.weight': torch_shape}, ('linear', prefix + '.weight')))
      else:
        wanted = {prefix + '.weight_orig': torch_shape, prefix + '.weight_u': (torch_shape[0],),
                  prefix + '.weight_v': (int(np.prod(torch_shape[1:])),)}
        plan.append((key, wanted, ('spectral', prefix, shape[-1])))
    elif collection == 'params' and name == 'bias' and rgb:
      plan.append((key, {prefix + '.bias': (ch,)}, ('slice', prefix + '.bias', shape[0])))
    elif (collection, name) in (('params', 'bias'), ('params', 'weight'), ('params', 'gamma'),
                                ('batch_stats', 'running_means'),
                                ('batch_stats', 'running_vars')):
      plan.append((key, {f'{prefix}.{name}': shape}, ('copy', f'{prefix}.{name}')))
    else:
      raise AssertionError(f'unmapped BigGAN variable {key}')
  return plan


def _fold(w, u, v, key):
  """The package's eval-mode spectral norm: W / (u . (W_mat v)) with the stored u, v."""
  sigma = float(np.dot(u.astype(np.float64), w.reshape(w.shape[0], -1).astype(np.float64)
                       @ v.astype(np.float64)))
  if not np.isfinite(sigma) or sigma == 0.0:
    raise UserError(f'Spectral norm of {key} is {sigma} (u . W v with the stored u and v), so the '
                    'weight cannot be normalised. The checkpoint is damaged or not a '
                    'pytorch-pretrained-BigGAN state_dict.')
  return (w / sigma).astype(np.float32)


def convert(state_dict, config: dict):
  """(module kwargs, Flax variables) from a state_dict {name: array} and a config dict."""
  from flax import traverse_util
  kwargs = biggan.config_kwargs(config)
  plan = _plan(kwargs)
  sd = {k: np.asarray(v) for k, v in state_dict.items()}  # Views: nothing converted yet.
  check_total_size({k: v.shape for k, v in sd.items()}, 'The state_dict')
  expected = {k: s for _, wanted, _ in plan for k, s in wanted.items()}
  parts, _ = mismatches(expected, sd)
  if parts:
    raise UserError('The BigGAN checkpoint does not match its config: ' + '; '.join(parts)
                    + '. Pass the config.json that belongs to this pytorch_model.bin '
                    '(biggan-deep-128, -256 and -512 each have their own), and a state_dict '
                    'saved by pytorch-pretrained-BigGAN (spectral-norm weights stored as '
                    'weight_orig / weight_u / weight_v).')
  f32 = lambda k: sd[k].astype(np.float32)
  flat = {}
  for key, _, (how, *args) in plan:
    if how == 'linear':
      flat[key] = f32(args[0]).T
    elif how == 'spectral':
      prefix, cout = args
      w = _fold(f32(prefix + '.weight_orig'), f32(prefix + '.weight_u'),
                f32(prefix + '.weight_v'), prefix)
      w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
      flat[key] = np.ascontiguousarray(w[..., :cout])
    elif how == 'slice':
      flat[key] = f32(args[0])[:args[1]]
    else:
      flat[key] = f32(args[0])
  bad = [k for k, v in flat.items() if not np.all(np.isfinite(v))]
  if bad:
    raise UserError('The BigGAN checkpoint holds non-finite values in: '
                    + listing('/'.join(k) for k in bad) + '. Re-download the checkpoint.')
  return kwargs, traverse_util.unflatten_dict(flat)


def read_checkpoint(path: str):
  """{name: numpy array} from pytorch-pretrained-BigGAN's pytorch_model.bin."""
  return read_state_dict(path, 'Pass the pytorch_model.bin of a pytorch-pretrained-BigGAN model '
                         '(e.g. biggan-deep-128-pytorch_model.bin).')


def read_config(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f'Could not read the BigGAN config {path}: {e}. Pass the config.json that '
                    'came with the checkpoint (pytorch-pretrained-BigGAN format).') from e
  if not isinstance(config, dict):
    raise UserError(f'{path} must hold a JSON object (pytorch-pretrained-BigGAN config.json).')
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m converters.biggan', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True, help='pytorch_model.bin (state_dict)')
  parser.add_argument('--config', required=True, help='config.json of the same model')
  parser.add_argument('--out', required=True, help='generator directory to write')
  args = parser.parse_args(argv)
  try:
    config = read_config(args.config)
    biggan.config_kwargs(config)  # Fail on a bad config before reading a large checkpoint.
    kwargs, variables = convert(read_checkpoint(args.src), config)
    generators.save(args.out, biggan.KIND, kwargs, variables,
                    source={'converter': 'converters.biggan',
                            'src': os.path.abspath(args.src),
                            'config': os.path.abspath(args.config)})
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  res = biggan.BigGAN(**kwargs).resolution
  print(f'wrote BigGAN {res}x{res} ({kwargs["num_classes"]} classes, z_dim {kwargs["z_dim"]}) '
        f'to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
