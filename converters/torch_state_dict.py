"""Reading PyTorch state_dict files safely: `torch.load(weights_only=True)` only."""
import os
from typing import Dict, Mapping, Optional

import numpy as np

from mgr_jax.errors import UserError


def read_state_dict(path: str, how_to_save: str, key: Optional[str] = None
                    ) -> Dict[str, np.ndarray]:
  """{name: float32 numpy array} of a torch.save'd state_dict; nothing pickled is executed.

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
    raise UserError(f'{path} cannot be read with torch.load(weights_only=True) '
                    f'({type(e).__name__}: {str(e)[:500]}); pickles that need code to load are '
                    f'refused. {how_to_save}') from e
  if key is not None and isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
    obj = obj[key]
  if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise UserError(f'{path} is not a state_dict (a mapping from names to tensors), got '
                    f'{type(obj).__name__}. {how_to_save}')
  return {k: v.detach().cpu().to(torch.float32).numpy() for k, v in obj.items()}


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
