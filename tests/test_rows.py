"""experiments/rows.py: every named row is a valid config; --methods x --augment expands."""
import pytest

from experiments import rows
from mgr_jax.config import validate
from mgr_jax.errors import UserError
from mgr_jax.methods import METHODS


@pytest.mark.parametrize('name', sorted(rows.ROWS))
def test_every_row_sets_existing_keys_and_validates(tiny_config, name):
  row = rows.ROWS[name]
  assert row.method in METHODS and row.overrides and row.what
  [expanded] = rows.expand([name])
  tiny_config.method = expanded.method
  rows.apply_overrides(tiny_config, expanded.overrides)
  validate(tiny_config)
  for key, value in row.overrides:
    section, *rest = key.split('.')
    node = tiny_config[section]
    for part in rest[:-1]:
      node = node[part]
    assert node[rest[-1]] == value


def test_expand_crosses_methods_and_augmentations():
  out = rows.expand(['base', 'mgr_nokl'], ['none', 'cutmix'])
  assert [r.label for r in out] == ['base', 'base+cutmix', 'mgr_nokl', 'mgr_nokl+cutmix']
  assert [r.dirname for r in out] == ['base', 'base_cutmix', 'mgr_nokl', 'mgr_nokl_cutmix']
  assert out[3].method == 'mgr'
  assert dict(out[3].overrides) == {'meta.lam_kl': 0.0, 'data.augment': 'cutmix'}
  assert out[0].overrides == ()


@pytest.mark.parametrize('names,augments,match', [
    (['base', 'magic'], ['none'], 'Unknown methods or rows'),
    (['base', 'base'], ['none'], 'twice'),
    (['base'], ['none', 'snapmixx'], 'Unknown data.augment'),
    ([], ['none'], 'No methods')])
def test_expand_rejects_bad_input(names, augments, match):
  with pytest.raises(UserError, match=match):
    rows.expand(names, augments)


def test_override_of_a_missing_key_is_an_error(tiny_config):
  with pytest.raises(UserError, match='not a config key'):
    rows.apply_overrides(tiny_config, (('meta.lam_kll', 0.0),))
