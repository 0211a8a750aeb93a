"""Named study rows: a row of one of the paper's tables is a method plus config overrides.

`experiments.study --methods=` takes method names (`mgr_jax.methods.METHODS`) and the named
rows below; `--augment=` crosses them with `data.augment` values (Table 3). A row's runs go to
<fraction dir>/<row>[_<augment>]_seed<k>, its line in the table is `<row>[+<augment>]`.
"""
import dataclasses
from typing import Dict, List, Tuple

from mgr_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Row:
  method: str
  overrides: Tuple[Tuple[str, object], ...] = ()  # (dotted config key, value)
  what: str = ''


ROWS: Dict[str, Row] = {
    # Table 5 / B.4: MPS ablations.
    'mgr_nokl': Row('mgr', (('meta.lam_kl', 0.0),), 'MGR without the KL term (λ_KL = 0)'),
    'mgr_generator': Row('mgr', (('meta.target', 'generator'),),
                         'MPS on the generator\'s own parameters, no finder'),
    # B.2: finder architectures (the paper's is residual).
    'mgr_linear': Row('mgr', (('meta.finder.arch', 'linear'),), 'finder F(z) = Wz + b'),
    'mgr_mlp': Row('mgr', (('meta.finder.arch', 'mlp'),), 'finder F(z) = MLP(z)'),
    'mgr_residual_shallow': Row('mgr', (('meta.finder.arch', 'residual_shallow'),),
                                'finder F(z) = z + tanh(Wz + b)'),
    # Table 9: the consistency pair of MGR (mgr itself is "with RandAugment").
    'mgr_latent': Row('mgr', (('synth.consistency', 'latent'),),
                      'MGR with LatentAugment: (G(z), G(z + s))'),
    'mgr_latent_ra': Row('mgr', (('synth.consistency', 'both'),),
                         'MGR with LatentAugment and RandAugment: (G(z + s), T(G(z)))'),
    # B.7: truncation with PCR (ψ = 0.7, our choice; the global one for comparison).
    'pcr_truncation': Row('pcr', (('synth.truncation_psi', 0.7),),
                          'PCR, z truncated towards w_avg (ψ = 0.7)'),
    'pcr_multimodal': Row('pcr', (('synth.truncation', 'multimodal'),
                                  ('synth.truncation_psi', 0.7)),
                          'PCR, multi-modal truncation (ψ = 0.7, 16 k-means centres)'),
}


@dataclasses.dataclass(frozen=True)
class StudyRow:
  label: str  # The table's row: 'mgr_nokl', 'base+cutmix'.
  dirname: str  # Run directory prefix: 'mgr_nokl', 'base_cutmix'.
  method: str
  overrides: Tuple[Tuple[str, object], ...]


def expand(names, augments=('none',)) -> List[StudyRow]:
  """--methods × --augment -> StudyRows (UserError for unknown or repeated names)."""
  from mgr_jax.data.augment import check_augment
  from mgr_jax.methods import METHODS
  names = [n.strip() for n in names if n.strip()]
  augments = [check_augment(a.strip()) for a in augments if a.strip()] or ['none']
  unknown = [n for n in names if n not in METHODS and n not in ROWS]
  if unknown:
    raise UserError(f'Unknown methods or rows {unknown}; methods: {", ".join(sorted(METHODS))}; '
                    f'rows: {", ".join(ROWS)}.')
  if not names:
    raise UserError('No methods given (e.g. --methods=base,mgr).')
  for flag, values in (('methods', names), ('augment', augments)):
    if len(set(values)) != len(values):
      raise UserError(f'--{flag} lists a value twice: {values}.')
  rows = []
  for name in names:
    row = ROWS.get(name, Row(name))
    for aug in augments:
      extra = () if aug == 'none' else (('data.augment', aug),)
      rows.append(StudyRow(name if aug == 'none' else f'{name}+{aug}',
                           name if aug == 'none' else f'{name}_{aug}', row.method,
                           row.overrides + extra))
  return rows


def apply_overrides(config, overrides) -> None:
  """Sets each (dotted key, value) on `config`; every key must exist already."""
  for key, value in overrides:
    *path, name = key.split('.')
    node = config
    for part in path:
      node = node[part]
    if name not in node:
      raise UserError(f'Row override {key!r} is not a config key.')
    node[name] = value
