"""Reading PyTorch state_dict files safely: `torch.load(weights_only=True)` only, and no
tensor materialised before its name, shape and the total size have been checked."""
import os
import re
from typing import Dict, Mapping, Optional

import numpy as np

from mgr_jax.errors import UserError

# More float32 elements than any model the converters handle (BigGAN-deep-512: 56 M; a
# StyleGAN2 1024 px G: 30 M): a file declaring more is crafted or damaged, since a stride-0
# tensor of a few bytes can claim any shape.
MAX_ELEMENTS = 2 ** 28


def check_total_size(shapes: Mapping[str, tuple], what: str, limit: int = MAX_ELEMENTS):
  """Refuses `shapes` (name -> shape) that add up to more than `limit` elements."""
  total = sum(int(np.prod(s, dtype=np.float64)) for s in shapes.values())
  if total > limit:
    largest = max(shapes, key=lambda k: np.prod(shapes[k], dtype=np.float64))
    raise UserError(f'{what} declares {total:,} values ({total * 4 / 2**30:,.1f} GiB as float32; '
                    f'largest: {largest} {tuple(shapes[largest])}), more than any supported '
                    f'model ({limit:,}). Refusing to read it: the file is damaged or crafted '
                    '(a tensor of a few bytes can claim any shape). Nothing was allocated.')


def _numpy_view(tensor):
  """The tensor's data as a read-only numpy view (no copy: a stride-0 view stays small)."""
  import torch  # pylint: disable=import-outside-toplevel
  if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; ml_dtypes (jax's) has.
    import ml_dtypes  # pylint: disable=import-outside-toplevel
    array = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  else:
    array = tensor.numpy()
  array.flags.writeable = False
  return array


def _torch_load_error(path: str, e: Exception, how_to_save: str) -> UserError:
  """Our own message: torch's advice (rerun with weights_only=False) runs the file's code."""
  text = str(e)
  if 'Weights only load failed' in text:
    found = re.search(r'Unsupported global: GLOBAL (\S+)', text) or re.search(
        r'WeightsUnpickler error: ([^\n.]+)', text)
    what = f' (it references {found.group(1)})' if found else ''
    return UserError(
        f'Refusing {path}: it is a pickle that needs Python objects besides tensors to '
        f'load{what}, and loading such a pickle can run any code hidden in it. Nothing from it '
        'was run. Get the weights from their original source (e.g. the official release) and '
        'convert those, or, where you trust the file, re-save only its tensors (a plain '
        'state_dict: {name: tensor}) with torch.save. ' + how_to_save)
  first = next((line for line in text.splitlines() if 'weights_only' not in line), '')
  return UserError(f'{path} cannot be read as a PyTorch state_dict ({type(e).__name__}: '
                   f'{first[:300]}). {how_to_save}')


def read_state_dict(path: str, how_to_save: str, key: Optional[str] = None
                    ) -> Dict[str, np.ndarray]:
  """{name: read-only numpy view} of a torch.save'd state_dict; nothing pickled is executed.

  The views keep the file's dtypes and strides: converters check names and shapes, then
  convert only what they use (`np.asarray(v, np.float32)`). The declared total size is
  checked here, before anything is converted.
  `how_to_save` completes the error messages (what the user should pass instead); `key`
  picks a nested state_dict (e.g. {'G_ema': {...}}) when the file holds several.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError('Reading a .pt/.pth/.bin state_dict needs torch (pip install torch).') from e
  if not os.path.isfile(path):
    raise UserError(f'--src {path} is not a file. {how_to_save}')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for unreadable / unsafe files.
    raise _torch_load_error(path, e, how_to_save) from None
  if key is not None and isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
    obj = obj[key]
  if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise UserError(f'{path} is not a state_dict (a mapping from names to tensors), got '
                    f'{type(obj).__name__}. {how_to_save}')
  check_total_size({k: tuple(v.shape) for k, v in obj.items()},
                   f'{path} ({os.path.getsize(path):,} bytes)')
  try:
    return {k: _numpy_view(v.detach()) for k, v in obj.items()}
  except (TypeError, RuntimeError) as e:  # Sparse, quantized, complex32, ... tensors.
    raise UserError(f'{path} holds a tensor numpy cannot represent ({e}). {how_to_save}') from e


MAX_LISTED = 25


def listing(keys) -> str:
  """Sorted keys, the first MAX_LISTED of them, then how many more."""
  keys = sorted(keys)
  shown = ', '.join(keys[:MAX_LISTED])
  return shown + (f', ... and {len(keys) - MAX_LISTED} more' if len(keys) > MAX_LISTED else '')


def mismatches(expected: Mapping[str, tuple], state_dict: Mapping[str, np.ndarray]):
  """(parts, unexpected): the missing / unexpected / wrong-shape keys, described for an
  error message (parts is empty when the state_dict fits)."""
  missing = set(expected) - set(state_dict)
  unexpected = set(state_dict) - set(expected)
  wrong = [f'{k}: {tuple(state_dict[k].shape)} in the checkpoint, {expected[k]} expected'
           for k in sorted(set(expected) & set(state_dict))
           if tuple(state_dict[k].shape) != tuple(expected[k])]
  parts = []
  if missing:
    parts.append(f'missing keys ({len(missing)}): {listing(missing)}')
  if unexpected:
    parts.append(f'unexpected keys ({len(unexpected)}): {listing(unexpected)}')
  if wrong:
    parts.append(f'shape mismatches ({len(wrong)}): ' + '; '.join(wrong[:MAX_LISTED])
                 + (f'; ... and {len(wrong) - MAX_LISTED} more' if len(wrong) > MAX_LISTED
                    else ''))
  return parts, unexpected
