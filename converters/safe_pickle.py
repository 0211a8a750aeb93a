"""Read official StyleGAN2-ADA snapshot pickles without running anything from them.

`network-snapshot-*.pkl` is a plain `pickle.dump` of a dict {'G', 'D', 'G_ema',
'augment_pipe', 'training_set_kwargs'}. Each network is stored by
`torch_utils.persistence` as a call `_reconstruct_persistent_obj(meta)`, where meta =
{type, version, module_src, class_name, state} and state is the torch module's `__dict__`
(`_parameters`, `_buffers`, `_modules` OrderedDicts, `_init_kwargs`, ...). Unpickling it
normally imports dnnlib/torch_utils and `exec`s module_src.

Here `find_class` returns stand-ins for an allow-list only; every other global is refused
(UnsafePickleError naming it) before anything is called:

  torch_utils.persistence._reconstruct_persistent_obj -> PersistentObject (meta as data;
                                                         module_src is never executed)
  torch._utils._rebuild_tensor_v2 / _rebuild_parameter(_with_state) -> numpy arrays
  torch.storage._load_from_bytes   -> parses the legacy torch.save storage record itself
                                      (a restricted unpickler again; no torch.load, no torch)
  torch.<X>Storage, torch.<dtype>, torch.device      -> inert markers / strings
  collections.OrderedDict, builtins set/frozenset, dnnlib EasyDict -> dicts/sets
  _codecs.encode (protocol-2 bytes)  -> only str.encode('latin1')
  numpy scalar/dtype/ndarray reconstruction          -> numeric data only (no object dtype)

Only the Python standard library and numpy (ml_dtypes for bfloat16) are needed.
"""
import _compat_pickle
import collections
import io
import pickle
import sys
from typing import Any, Dict, Tuple

import numpy as np

from mgr_jax.errors import UserError


class UnsafePickleError(UserError):
  """The pickle references something outside the allow-list; nothing from it was run."""


class PersistentObject(dict):
  """A `torch_utils.persistence` object kept as data: the meta dict (type, version,
  module_src, class_name, state). module_src is a string here and never executed."""

  @property
  def class_name(self):
    return self.get('class_name')

  @property
  def state(self):
    return self.get('state') or {}

  def __repr__(self):
    return f'PersistentObject(class_name={self.class_name!r})'


class EasyDict(dict):
  """Stand-in for dnnlib.util.EasyDict (a dict with attribute access)."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


def _reconstruct_persistent_obj(meta):
  if not isinstance(meta, dict):
    raise UnsafePickleError('torch_utils.persistence._reconstruct_persistent_obj got a '
                            f'{type(meta).__name__}, expected the meta dict.')
  return PersistentObject(meta)


# ----------------------------------------------------------------------------------------
# Tensors and storages.


def _bfloat16():
  import ml_dtypes  # pylint: disable=import-outside-toplevel  (a dependency of jax)
  return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_TORCH_DTYPES = ('float32', 'float64', 'float16', 'bfloat16', 'int64', 'int32', 'int16',
                 'int8', 'uint8', 'bool', 'float', 'double', 'half', 'long', 'int')


class StorageType:
  """Marker for torch.<X>Storage (a class reference inside storage records)."""

  def __init__(self, name):
    self.name = name
    dt = _STORAGE_DTYPES[name]
    self.dtype = _bfloat16() if dt == 'bfloat16' else np.dtype(dt)

  def __repr__(self):
    return f'StorageType({self.name})'


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _StorageRecordUnpickler(pickle.Unpickler):
  """For the legacy `torch.save` record inside `_load_from_bytes`: only storage types."""

  def find_class(self, module, name):
    if module == 'torch' and name in _STORAGE_DTYPES:
      return StorageType(name)
    raise UnsafePickleError(f'refusing {module}.{name} inside a tensor storage record; only '
                            'torch.<Type>Storage is expected there.')

  def persistent_load(self, pid):
    return pid


def _load_from_bytes(data):
  """A storage saved by `torch.save(storage, _use_new_zipfile_serialization=False)`:
  pickles of magic, protocol, sys_info, the storage's persistent id, the key list, then
  per key an int64 element count and the raw little-endian bytes."""
  if not isinstance(data, (bytes, bytearray)):
    raise UnsafePickleError('torch.storage._load_from_bytes expects bytes.')
  if bytes(data[:4]) == b'PK\x03\x04':
    raise UnsafePickleError('a tensor storage is in zip format, which torch does not write '
                            'when pickling tensors; export a state_dict with torch.save and '
                            'convert that with --kwargs instead.')
  f = io.BytesIO(data)
  try:
    magic = _StorageRecordUnpickler(f).load()
    if magic != _LEGACY_MAGIC:
      raise UnsafePickleError('a tensor storage record has a wrong magic number.')
    _StorageRecordUnpickler(f).load()  # protocol version
    sys_info = _StorageRecordUnpickler(f).load()
    pid = _StorageRecordUnpickler(f).load()
    keys = _StorageRecordUnpickler(f).load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise UnsafePickleError(f'a tensor storage record is malformed ({e}).') from e
  if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'
          and isinstance(pid[1], StorageType)):
    raise UnsafePickleError(f'unexpected tensor storage record {pid!r:.200}.')
  storage_type, root_key, numel = pid[1], pid[2], pid[4]
  view = pid[5] if len(pid) > 5 else None
  order = '<' if (not isinstance(sys_info, dict) or sys_info.get('little_endian', True)) else '>'
  dtype = storage_type.dtype
  if dtype.itemsize > 1:
    dtype = dtype.newbyteorder(order)
  arrays = {}
  for key in keys:
    n = int.from_bytes(f.read(8), 'little' if order == '<' else 'big', signed=True)
    raw = f.read(n * dtype.itemsize)
    if n < 0 or len(raw) != n * dtype.itemsize:
      raise UnsafePickleError('a tensor storage record is truncated.')
    arrays[key] = np.frombuffer(raw, dtype=dtype).astype(storage_type.dtype)
  if root_key not in arrays:
    raise UnsafePickleError('a tensor storage record lacks its data.')
  out = arrays[root_key]
  if view is not None:  # (view_key, offset, size): torch < 0.4 storage views.
    _, offset, size = view
    out = out[offset:offset + size]
  elif isinstance(numel, int) and numel != out.size:
    raise UnsafePickleError('a tensor storage record has an inconsistent size.')
  return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise UnsafePickleError('torch._utils._rebuild_tensor_v2 got no storage.')
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise UnsafePickleError('a tensor has an invalid size/stride.')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or last >= storage.size:  # as_strided must never read out of bounds.
    raise UnsafePickleError('a tensor reaches beyond its storage.')
  base = storage[offset:]
  # A view, not a copy: a stride-0 tensor of a few bytes may claim any shape; converters
  # check shapes and the total size before converting (converters.torch_state_dict).
  return np.lib.stride_tricks.as_strided(
      base, size, [s * storage.itemsize for s in stride], writeable=False)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


# ----------------------------------------------------------------------------------------
# numpy scalars / arrays (official modules hold numpy float64 gains, e.g. weight_gain).


class NumpyDType:
  """numpy.dtype(name, align, copy) + BUILD state; numeric dtypes only."""

  def __init__(self, name, align=False, copy=True):
    del align, copy
    dt = np.dtype(str(name)) if isinstance(name, str) and len(name) <= 8 else None
    if dt is None or dt.kind not in 'biufc' or dt.fields is not None:
      raise UnsafePickleError(f'refusing numpy dtype {name!r:.40} (only numeric dtypes).')
    self.dtype = dt

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ('<', '>'):
      self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, NumpyDType) or not isinstance(data, (bytes, bytearray)) or \
      len(data) != dtype.dtype.itemsize:
    raise UnsafePickleError('numpy scalar with unexpected arguments refused.')
  return np.frombuffer(data, dtype.dtype)[0].item()


class _NDArrayType:
  """Marker for numpy.ndarray as the class argument of _reconstruct."""


class NumpyArray:
  """An unpickled numeric numpy array; the data is in `.value`."""

  def __init__(self):
    self.value = None

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], NumpyDType)
            and isinstance(state[4], (bytes, bytearray))):
      raise UnsafePickleError('numpy array with unexpected state refused.')
    _, shape, dt, fortran, raw = state
    n = int(np.prod(shape)) if shape else 1
    if len(raw) != n * dt.dtype.itemsize:
      raise UnsafePickleError('numpy array with inconsistent size refused.')
    a = np.frombuffer(raw, dt.dtype).reshape(shape, order='F' if fortran else 'C')
    self.value = a.copy()


def _numpy_reconstruct(cls, shape, typecode):
  del shape, typecode
  if cls is not _NDArrayType:
    raise UnsafePickleError('numpy _reconstruct of a non-ndarray class refused.')
  return NumpyArray()


def _codecs_encode(text, encoding='utf-8'):
  """Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise UnsafePickleError('_codecs.encode is allowed only as bytes(str, "latin1").')
  return text.encode('latin1')


# ----------------------------------------------------------------------------------------

_ALLOWED: Dict[Tuple[str, str], Any] = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _reconstruct_persistent_obj,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter_with_state,
    ('torch.storage', '_load_from_bytes'): _load_from_bytes,
    ('torch', 'device'): lambda *a: 'torch.device(' + ', '.join(map(str, a)) + ')',
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('_codecs', 'encode'): _codecs_encode,
    ('dnnlib.util', 'EasyDict'): EasyDict,
    ('dnnlib', 'EasyDict'): EasyDict,
    ('numpy', 'dtype'): NumpyDType,
    ('numpy', 'ndarray'): _NDArrayType,
}
for _np_mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
  _ALLOWED[(_np_mod, 'scalar')] = _numpy_scalar
  _ALLOWED[(_np_mod, '_reconstruct')] = _numpy_reconstruct
for _name in _STORAGE_DTYPES:
  _ALLOWED[('torch', _name)] = StorageType(_name)
for _name in _TORCH_DTYPES:
  _ALLOWED[('torch', _name)] = 'torch.' + _name


class SafeUnpickler(pickle.Unpickler):
  """pickle.Unpickler whose find_class only hands out the allow-list above."""

  def find_class(self, module, name):
    # Python-2 names in protocol < 3 pickles (__builtin__.set), as pickle's own find_class.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
      module = _compat_pickle.IMPORT_MAPPING[module]
    try:
      return _ALLOWED[(module, name)]
    except (KeyError, TypeError):
      pass
    if module.startswith('dnnlib.tflib'):
      raise UnsafePickleError(
          f'this is a TensorFlow-era StyleGAN2 pickle (it references {module}.{name}); it '
          'cannot be read here. Convert it to a PyTorch snapshot with the official '
          'stylegan2-ada-pytorch legacy.py first, then convert that.')
    raise UnsafePickleError(
        f'refusing to load {module}.{name}: the pickle references a global outside the '
        'allow-list of an official StyleGAN2-ADA snapshot (torch tensors, '
        'torch_utils.persistence objects, dicts, numpy scalars). Nothing from the pickle was '
        'executed. If this is a genuine snapshot from a different code base, export '
        'G_ema.state_dict() with torch.save and convert that with --kwargs.')

  def persistent_load(self, pid):
    raise UnsafePickleError('the pickle uses persistent ids (is it a torch.save file? then '
                            'pass it as a .pt/.pth file).')


def load_pickle(path_or_file) -> Any:
  """Unpickles with the allow-list. Raises UnsafePickleError / UserError."""
  if hasattr(path_or_file, 'read'):
    return _load(path_or_file, getattr(path_or_file, 'name', '<file>'))
  try:
    with open(path_or_file, 'rb') as f:
      return _load(f, path_or_file)
  except OSError as e:
    raise UserError(f'Cannot read {path_or_file!r}: {e}') from e


def _load(f, name):
  try:
    return SafeUnpickler(f).load()
  except UserError as e:
    raise type(e)(f'{name}: {e}') from e
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          IndexError, KeyError, MemoryError) as e:
    raise UserError(f'{name} is not a readable StyleGAN2-ADA snapshot pickle '
                    f'({type(e).__name__}: {e}).') from e


# ----------------------------------------------------------------------------------------
# Module trees.


def _plain(v):
  """EasyDicts/OrderedDicts → dicts, tuples → lists, numpy values → Python (JSON-able)."""
  if isinstance(v, dict):
    return {str(k): _plain(u) for k, u in v.items()}
  if isinstance(v, (list, tuple)):
    return [_plain(u) for u in v]
  if isinstance(v, np.generic):
    return v.item()
  if isinstance(v, NumpyArray):
    return v.value.tolist()
  return v


def state_dict(obj: PersistentObject, prefix='') -> Dict[str, np.ndarray]:
  """The torch `state_dict()` of a persistent module: parameters, persistent buffers and
  submodules, recursively, in torch's order."""
  state = obj.state
  out: Dict[str, np.ndarray] = collections.OrderedDict()
  non_persistent = set(state.get('_non_persistent_buffers_set') or ())
  for name, v in (state.get('_parameters') or {}).items():
    if v is not None:
      out[prefix + name] = v
  for name, v in (state.get('_buffers') or {}).items():
    if v is not None and name not in non_persistent:
      out[prefix + name] = v
  for name, child in (state.get('_modules') or {}).items():
    if child is None:
      continue
    if not isinstance(child, PersistentObject):
      raise UserError(f'submodule {prefix + name} is not a torch_utils.persistence object '
                      f'({type(child).__name__}); unexpected in an official snapshot.')
    out.update(state_dict(child, prefix + name + '.'))
  for k, v in out.items():
    if not isinstance(v, np.ndarray):
      raise UserError(f'{k} is not a tensor in the pickle ({type(v).__name__}).')
  return out


_GENERATOR_ARGS = ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels',
                   'mapping_kwargs', 'synthesis_kwargs')


def init_kwargs(obj: PersistentObject) -> Dict[str, Any]:
  """The constructor arguments recorded by persistence (positional ones named)."""
  state = obj.state
  kwargs = _plain(state.get('_init_kwargs') or {})
  args = list(state.get('_init_args') or ())
  if args:
    if obj.class_name != 'Generator' or len(args) > len(_GENERATOR_ARGS):
      raise UserError(f'cannot name the positional init args of {obj.class_name}.')
    kwargs.update(dict(zip(_GENERATOR_ARGS, _plain(args))))
  return kwargs


def generator_from_snapshot(data, key='G_ema') -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """(init_kwargs, state_dict) of snapshot[key]; the snapshot as returned by load_pickle."""
  if isinstance(data, PersistentObject):
    net = data
  else:
    if not isinstance(data, dict):
      raise UserError(f'the pickle holds a {type(data).__name__}, not a snapshot dict.')
    if key not in data:
      raise UserError(f'the snapshot has no {key!r}; it has {sorted(map(str, data))}. Pick '
                      'one with --key.')
    net = data[key]
  if not isinstance(net, PersistentObject):
    raise UserError(f'snapshot[{key!r}] is a {type(net).__name__}, not a persistent network.')
  if net.get('type') != 'class' or net.class_name != 'Generator':
    raise UserError(f'snapshot[{key!r}] is a {net.class_name!r}, not a Generator. Use '
                    '--key G_ema (or G).')
  return init_kwargs(net), state_dict(net)


if __name__ == '__main__':  # Debug aid: list what a pickle holds, safely.
  snap = load_pickle(sys.argv[1])
  for k, v in (snap.items() if isinstance(snap, dict) else [('', snap)]):
    print(k, repr(v)[:120])
