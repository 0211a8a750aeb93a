"""Generator directories: save / load a frozen generator of any registered kind.

A generator directory holds two files:

  generator.json      {"format_version": 1, "kind": "stylegan2", "kwargs": {...},
                       "source": {...provenance, optional...}}
  variables.msgpack   flax.serialization msgpack of the variables tree
                      ({'params': ..., 'buffers': ...} for stylegan2), float32 numpy arrays.

`load(DIR)` reads `kind`, builds the generator through the KINDS registry below, checks
every array against the shapes that kind expects (missing / unexpected / wrong shape are
named) and that it is finite, and returns a `LoadedGenerator`. DIR may also be a
`train_generator` workdir (its `generator/` is used).

  gen = load('generators/cars_stylegan2')
  images = gen(z, labels, truncation_psi=1.0, noise_mode='const')        # NHWC float32
  images = gen.apply(gen.variables, z, labels)  # pure: jit it, differentiate w.r.t. z
  gen.z_dim, gen.num_classes (0 = unconditional), gen.resolution, gen.channels

Adding a generator kind (e.g. BigGAN): write `mgr_jax/generators/<kind>.py` with a function
`generator_def(kwargs: dict) -> GeneratorDef` and make sure KINDS maps the kind to
'module:function' (the 'biggan' entry is already there), or call
`register_kind('<kind>', 'package.module:function')` before `load`.
"""
import dataclasses
import importlib
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.serialization
import jax
import numpy as np

from mgr_jax.errors import UserError
from mgr_jax.models import conv

FORMAT_VERSION = 1
CONFIG_FILE = 'generator.json'
VARIABLES_FILE = 'variables.msgpack'

# KIND -> 'module:function'; the function maps the kwargs dict to a GeneratorDef.
KINDS: Dict[str, str] = {
    'stylegan2': 'mgr_jax.generators.stylegan2:generator_def',
    'biggan': 'mgr_jax.generators.biggan:generator_def',
}


@dataclasses.dataclass(frozen=True)
class GeneratorDef:
  """What a generator kind provides to the loader.

  apply(variables, z, labels, truncation_psi, noise_mode, rng) -> NHWC float32 images in
  about [-1, 1]; pure and jit-able (noise_mode and truncation_psi may be static).
  abstract_variables() -> tree of jax.ShapeDtypeStruct (e.g. via jax.eval_shape).
  """
  kwargs: Mapping[str, Any]  # JSON-able; written to generator.json as is.
  z_dim: int
  num_classes: int  # 0 = unconditional.
  resolution: int
  channels: int
  apply: Callable[..., Any]
  abstract_variables: Callable[[], Any]
  module: Any = None  # The underlying Flax module, for kind-specific use.
  # Kinds with a W space (StyleGAN2): mapping(variables, z, labels) -> ws [N, num_ws, w_dim]
  # without truncation, synthesis(variables, ws, noise_mode) -> images. None otherwise.
  mapping: Optional[Callable[..., Any]] = None
  synthesis: Optional[Callable[..., Any]] = None


def register_kind(kind: str, target: str):
  """Registers 'package.module:function' (returning a GeneratorDef) for `kind`."""
  KINDS[kind] = target


def generator_def(kind: str, kwargs: Mapping[str, Any]) -> GeneratorDef:
  if kind not in KINDS:
    raise UserError(f'Unknown generator kind {kind!r}; known kinds: {sorted(KINDS)}. '
                    'Write the generator directory with a known kind, or register the new '
                    'kind (mgr_jax.generators.io.register_kind).')
  module_name, fn_name = KINDS[kind].split(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f'Generator kind {kind!r} is registered as {KINDS[kind]!r}, but its module '
                    f'cannot be imported ({e}). Install/add that module or use another '
                    'generator directory.') from e
  return getattr(module, fn_name)(dict(kwargs))


# ----------------------------------------------------------------------------------------
# Shape checks shared with the converters.


def flatten(tree, sep='/') -> Dict[str, Any]:
  """Nested dicts → {'a/b/c': leaf}."""
  out = {}

  def rec(prefix, node):
    if isinstance(node, Mapping):
      for k, v in node.items():
        rec(prefix + (str(k),), v)
    else:
      out[sep.join(prefix)] = node

  rec((), tree)
  return out


def unflatten(flat: Mapping[str, Any], sep='/') -> dict:
  out: dict = {}
  for key, value in flat.items():
    parts = key.split(sep)
    node = out
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return out


def shape_mismatches(expected: Mapping[str, Tuple[int, ...]],
                     got: Mapping[str, Tuple[int, ...]]) -> Optional[str]:
  """None if the key sets and shapes agree, else a message naming every offending key."""
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  wrong = sorted(k for k in set(expected) & set(got)
                 if tuple(expected[k]) != tuple(got[k]))
  if not (missing or unexpected or wrong):
    return None
  lines = []
  if missing:
    lines.append(f'missing ({len(missing)}): ' + ', '.join(missing))
  if unexpected:
    lines.append(f'unexpected ({len(unexpected)}): ' + ', '.join(unexpected))
  if wrong:
    lines.append(f'wrong shape ({len(wrong)}): ' + ', '.join(
        f'{k} {tuple(got[k])} (expected {tuple(expected[k])})' for k in wrong))
  return '\n  '.join([''] + lines)


def _shapes(tree) -> Dict[str, Tuple[int, ...]]:
  return {k: tuple(np.shape(v)) for k, v in flatten(tree).items()}


# ----------------------------------------------------------------------------------------
# Save / load.


def save(directory: str, kind: str, kwargs: Mapping[str, Any], variables,
         source: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `directory`/generator.json and variables.msgpack; returns the directory."""
  gdef = generator_def(kind, kwargs)
  host = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32),
                                jax.device_get(variables))
  problem = shape_mismatches(_shapes(gdef.abstract_variables()), _shapes(host))
  if problem:
    raise UserError(f'The variables do not fit a {kind!r} generator with these kwargs:{problem}')
  os.makedirs(directory, exist_ok=True)
  config = {'format_version': FORMAT_VERSION, 'kind': kind, 'kwargs': gdef.kwargs}
  if source:
    config['source'] = dict(source)
  tmp = os.path.join(directory, VARIABLES_FILE + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(host))
  os.replace(tmp, os.path.join(directory, VARIABLES_FILE))
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump(config, f, indent=1, sort_keys=True)
    f.write('\n')
  return directory


_HOW_TO_MAKE = ('A generator directory is made by a converter, e.g. `python -m '
                'converters.stylegan2_ada --src network-snapshot.pkl --out DIR`, or by '
                'mgr_jax.generators.save(DIR, kind, kwargs, variables).')


def resolve_directory(directory: str) -> str:
  """`directory`, or its `generator/` sub-folder when `directory` is a workdir of
  `python -m mgr_jax.train_generator` (which writes the generator there)."""
  inner = os.path.join(directory, 'generator')
  if (not os.path.isfile(os.path.join(directory, CONFIG_FILE))
      and os.path.isfile(os.path.join(inner, CONFIG_FILE))):
    return inner
  return directory


def _read_config(directory: str) -> dict:
  if not os.path.isdir(directory):
    raise UserError(f'Generator directory {directory!r} does not exist. Check the path. '
                    + _HOW_TO_MAKE)
  path = os.path.join(directory, CONFIG_FILE)
  if (not os.path.isfile(path) and os.path.isdir(os.path.join(directory, 'checkpoints'))
      and os.path.isfile(os.path.join(directory, 'gan_config.json'))):
    raise UserError(f'{directory!r} is a train_generator workdir whose training has not '
                    'finished (no generator/ yet). Run the same train_generator command again '
                    'to finish it, then pass this directory.')
  if not os.path.isfile(path):
    raise UserError(f'{directory!r} is not a generator directory: it has no {CONFIG_FILE}. '
                    + _HOW_TO_MAKE)
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} is unreadable or not valid JSON ({e}). The directory is '
                    'corrupt or was not written completely; convert the generator again. '
                    + _HOW_TO_MAKE) from e
  if not isinstance(config, dict) or 'kind' not in config or 'kwargs' not in config:
    raise UserError(f'{path} lacks "kind" or "kwargs"; it was not written by '
                    'mgr_jax.generators.save. ' + _HOW_TO_MAKE)
  if not (isinstance(config['kind'], str) and isinstance(config['kwargs'], dict)
          and isinstance(config.get('format_version', FORMAT_VERSION), int)
          and isinstance(config.get('source', {}), dict)):
    raise UserError(f'{path} has fields of the wrong type: "kind" must be a string, "kwargs" '
                    'and "source" JSON objects, "format_version" an integer. The file was '
                    'edited or damaged; convert the generator again. ' + _HOW_TO_MAKE)
  if config.get('format_version', FORMAT_VERSION) > FORMAT_VERSION:
    raise UserError(f'{path} has format_version {config["format_version"]}, newer than this '
                    f'code understands ({FORMAT_VERSION}). Update mgr-jax.')
  return config


class LoadedGenerator:
  """A frozen generator: `gen(z, labels, ...)` or the pure `gen.apply(variables, z, ...)`."""

  def __init__(self, kind: str, gdef: GeneratorDef, variables, path: Optional[str] = None,
               source: Optional[Mapping[str, Any]] = None):
    self.kind = kind
    self.definition = gdef
    self.kwargs = gdef.kwargs
    self.module = gdef.module
    self.variables = variables
    self.path = path
    self.source = dict(source or {})
    self.z_dim = gdef.z_dim
    self.num_classes = gdef.num_classes
    self.resolution = gdef.resolution
    self.channels = gdef.channels
    # As the training programs: convolutions on Eigen, not YNNPACK, on CPU (conv.compiler_options;
    # 256 images of a random digits-config StyleGAN2 took 0.96x XLA's default's time at 16 px,
    # 0.85x at 32 px, on our 2-core AMD EPYC).
    self._jitted = jax.jit(gdef.apply, static_argnames=('truncation_psi', 'noise_mode'),
                           compiler_options=conv.compiler_options())
    self.mapping, self.synthesis = gdef.mapping, gdef.synthesis  # None: no W space.

  def apply(self, variables, z, labels=None, truncation_psi=1.0, noise_mode='const', rng=None):
    """Pure: NHWC float32 images in about [-1, 1]; differentiable w.r.t. z."""
    return self.definition.apply(variables, z, labels, truncation_psi=truncation_psi,
                                 noise_mode=noise_mode, rng=rng)

  def __call__(self, z, labels=None, truncation_psi=1.0, noise_mode='const', rng=None, *,
               truncation=None):
    """Jitted apply with the loaded variables (recompiles per truncation_psi/noise_mode).

    `truncation` is BigGAN's name for the same knob; it overrides `truncation_psi`.
    """
    if truncation is not None:
      truncation_psi = truncation
    return self._jitted(self.variables, z, labels, truncation_psi=float(truncation_psi),
                        noise_mode=noise_mode, rng=rng)

  def __repr__(self):
    return (f'LoadedGenerator(kind={self.kind!r}, z_dim={self.z_dim}, '
            f'num_classes={self.num_classes}, resolution={self.resolution}, '
            f'channels={self.channels}, path={self.path!r})')


def load(directory: str) -> LoadedGenerator:
  """Loads a generator directory (see the module docstring). Raises UserError if the
  directory is missing, incomplete, corrupt or does not fit its kind."""
  directory = resolve_directory(os.fspath(directory))
  config = _read_config(directory)
  kind = config['kind']
  try:
    gdef = generator_def(kind, config['kwargs'])
    expected = _shapes(gdef.abstract_variables())
  except UserError as e:
    raise UserError(f'{os.path.join(directory, CONFIG_FILE)}: {e}') from e
  except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
    raise UserError(f'{os.path.join(directory, CONFIG_FILE)}: its "kwargs" do not describe a '
                    f'{kind!r} generator ({type(e).__name__}: {e}); a field has the wrong type '
                    'or value. Convert the generator again. ' + _HOW_TO_MAKE) from e
  path = os.path.join(directory, VARIABLES_FILE)
  if not os.path.isfile(path):
    raise UserError(f'{directory!r} has {CONFIG_FILE} but no {VARIABLES_FILE}: the weights are '
                    'missing (copy incomplete?). Copy the whole directory or convert again. '
                    + _HOW_TO_MAKE)
  try:
    with open(path, 'rb') as f:
      host = flax.serialization.msgpack_restore(f.read())
  except Exception as e:  # msgpack raises several unrelated types on corrupt input.
    raise UserError(f'{path} is corrupt or truncated ({type(e).__name__}: {e}). Copy the '
                    'directory again or re-run the converter. ' + _HOW_TO_MAKE) from e
  if not isinstance(host, dict):
    raise UserError(f'{path} does not hold a variables tree. Re-run the converter. '
                    + _HOW_TO_MAKE)
  problem = shape_mismatches(expected, _shapes(host))
  if problem:
    raise UserError(f'{path} does not match the {kind!r} architecture in {CONFIG_FILE} (was '
                    f'one of the two files replaced?):{problem}\nRe-run the converter. '
                    + _HOW_TO_MAKE)
  bad = [k for k, a in flatten(host).items()
         if np.asarray(a).dtype.kind not in 'fiub' or not np.all(np.isfinite(a))]
  if bad:  # A NaN generator would make every synthetic loss NaN, far from here.
    raise UserError(f'{path} holds NaN, infinite or non-numeric values in {len(bad)} arrays '
                    f'({", ".join(sorted(bad)[:5])}{", ..." if len(bad) > 5 else ""}): the '
                    'generator diverged while training or the file is damaged. Train or '
                    'convert it again. ' + _HOW_TO_MAKE)
  variables = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), host)
  return LoadedGenerator(kind, gdef, variables, path=directory, source=config.get('source'))
