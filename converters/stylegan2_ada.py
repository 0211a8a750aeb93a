"""Convert an official StyleGAN2-ADA generator (NVlabs/stylegan2-ada-pytorch) to a
generator directory for mgr_jax.generators.load.

  python -m converters.stylegan2_ada --src network-snapshot-001000.pkl --out gens/cars
  python -m converters.stylegan2_ada --src G_ema.pt --kwargs G_kwargs.json --out gens/cars

--src is either an official snapshot pickle (read by converters.safe_pickle: nothing in it is
executed, no dnnlib/torch_utils/torch needed; the architecture comes from the pickled
init_kwargs of --key, default G_ema) or a `G.state_dict()` saved with torch.save (read with
torch.load(weights_only=True); then --kwargs names a JSON file with the Generator's
constructor kwargs: z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs,
synthesis_kwargs). Tensors keep their torch layout; only names change
(`synthesis.b8.conv0.weight` → variables['params']['synthesis']['b8']['conv0']['weight'],
`w_avg`/`noise_const` → variables['buffers'][...]; `resample_filter` buffers are checked
and dropped). Any missing / unexpected / wrong-shape key is an error naming the keys.
"""
import argparse
import hashlib
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from converters import safe_pickle
from converters.torch_state_dict import check_total_size, read_state_dict
from mgr_jax.errors import UserError
from mgr_jax.generators import io as gen_io
from mgr_jax.generators import stylegan2

KIND = 'stylegan2'
_FILTER = '.resample_filter'


def expected_shapes(kwargs: Mapping[str, Any]) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
  """official state_dict key -> (Flax variable path 'collection/a/b', shape)."""
  G = stylegan2.Generator.from_kwargs(kwargs)
  out = {}
  for path, leaf in gen_io.flatten(stylegan2.abstract_variables(G)).items():
    out['.'.join(path.split('/')[1:])] = (path, tuple(leaf.shape))
  return out


def state_dict_to_variables(state_dict: Mapping[str, Any], kwargs: Mapping[str, Any]):
  """Official G state_dict (numpy/torch arrays) → Flax variables {'params', 'buffers'}."""
  sd = {k: np.asarray(v) for k, v in state_dict.items()}  # Views: nothing converted yet.
  check_total_size({k: v.shape for k, v in sd.items()}, 'The state_dict')
  kwargs = stylegan2.validate_kwargs(kwargs)
  expected = expected_shapes(kwargs)
  module_prefixes = {k.rsplit('.', i)[0] for k in expected for i in range(1, k.count('.') + 1)}
  filt = stylegan2.setup_filter(kwargs['synthesis_kwargs'].get('resample_filter', [1, 3, 3, 1]))
  bad_filters = []
  got = {}
  for k, v in sd.items():
    if k.endswith(_FILTER) and k[:-len(_FILTER)] in module_prefixes:
      if v.shape != filt.shape or not np.allclose(v, filt, atol=1e-6):
        bad_filters.append(k)
      continue
    got[k] = v
  problem = gen_io.shape_mismatches({k: s for k, (_, s) in expected.items()},
                                    {k: v.shape for k, v in got.items()})
  if bad_filters:
    problem = (problem or '') + '\n  resample_filter differs from synthesis_kwargs ' \
        f'(resample_filter={kwargs["synthesis_kwargs"].get("resample_filter", [1, 3, 3, 1])}): ' \
        + ', '.join(sorted(bad_filters))
  if problem:
    raise UserError('The state_dict does not match a StyleGAN2-ADA Generator with kwargs '
                    f'{json.dumps(kwargs)}:{problem}\nCheck that --kwargs describes this '
                    'network (resolution, channel_base/channel_max, mapping num_layers, c_dim) '
                    'and that --src is a Generator (G or G_ema), not D.')
  flat = {expected[k][0]: np.asarray(v, dtype=np.float32) for k, v in got.items()}
  return gen_io.unflatten(flat)


def _sha256(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _read_torch_state_dict(path: str, key: str) -> Dict[str, np.ndarray]:
  return read_state_dict(path, 'Save the generator with torch.save(G_ema.state_dict(), path).',
                         key=key)


def read_source(src: str, key: str = 'G_ema', kwargs_path: Optional[str] = None):
  """(kwargs, state_dict, source-info) from a snapshot .pkl or a .pt/.pth state_dict."""
  if not os.path.isfile(src):
    raise UserError(f'--src {src!r} does not exist or is not a file.')
  kwargs = None
  if kwargs_path is not None:
    try:
      with open(kwargs_path) as f:
        kwargs = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f'--kwargs {kwargs_path!r} is not a readable JSON file: {e}') from e
  with open(src, 'rb') as f:
    head = f.read(4)
  if head == b'PK\x03\x04' or src.endswith(('.pt', '.pth')):
    if kwargs is None:
      raise UserError(f'{src} is a torch.save file: its architecture is not recorded in it; '
                      'pass --kwargs kwargs.json with the Generator constructor kwargs '
                      '(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, '
                      'synthesis_kwargs).')
    state_dict = _read_torch_state_dict(src, key)
  else:
    pickled_kwargs, state_dict = safe_pickle.generator_from_snapshot(
        safe_pickle.load_pickle(src), key)
    if kwargs is None:
      kwargs = pickled_kwargs
  source = {'converter': 'converters.stylegan2_ada', 'file': os.path.basename(src),
            'sha256': _sha256(src), 'key': key}
  return kwargs, state_dict, source


def convert(src: str, out: str, key: str = 'G_ema', kwargs_path: Optional[str] = None) -> str:
  kwargs, state_dict, source = read_source(src, key, kwargs_path)
  kwargs = stylegan2.validate_kwargs(kwargs)
  variables = state_dict_to_variables(state_dict, kwargs)
  return gen_io.save(out, KIND, kwargs, variables, source=source)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m converters.stylegan2_ada',
      description='Convert an official StyleGAN2-ADA generator to a mgr_jax generator '
                  'directory (nothing from a pickle is executed).')
  parser.add_argument('--src', required=True,
                      help='network-snapshot-*.pkl, or a G state_dict .pt/.pth (with --kwargs)')
  parser.add_argument('--out', required=True, help='generator directory to write')
  parser.add_argument('--key', default='G_ema', help='network in the snapshot (default G_ema)')
  parser.add_argument('--kwargs', default=None,
                      help='JSON with the Generator kwargs (required for .pt/.pth; overrides '
                           'the pickled ones for .pkl)')
  args = parser.parse_args(argv)
  try:
    out = convert(args.src, args.out, args.key, args.kwargs)
    gen = gen_io.load(out)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {out}: {gen.kind} {gen.resolution}x{gen.resolution}x{gen.channels}, '
        f'z_dim {gen.z_dim}, {gen.num_classes or "no"} classes')
  return 0


if __name__ == '__main__':
  sys.exit(main())
