"""Every config file loads, passes validation and points at its dataset."""
import glob
import importlib
import os

import pytest

from conftest import REPO
from mgr_jax.config import base_config, validate
from mgr_jax.errors import UserError

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_and_validates(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  validate(config)
  assert config.data.source.split(':')[0] in ('digits', 'tfds', 'folder')
  assert importlib.import_module(f'configs.{name}').__doc__.count('python -m') >= 1


def test_paper_configs_use_paper_hyperparameters():
  for name in ('cars', 'aircraft', 'birds', 'dtd', 'flowers', 'pets'):
    c = importlib.import_module(f'configs.{name}').get_config()
    assert (c.num_epochs, c.batch_size, c.learning_rate, c.momentum) == (200, 64, 0.01, 0.9)
    assert c.nesterov and tuple(c.lr_decay_at) == (0.3, 0.6, 0.8)
    assert c.data.image_size == 224 and c.model.width == 1.0 and not c.model.small_stem


@pytest.mark.parametrize('key,new', [('hypergrad', 'meta.hypergrad'),
                                     ('synth.lam_kl', 'meta.lam_kl')])
def test_moved_key_in_a_config_file_names_its_new_place(key, new):
  config = base_config()
  parent, _, leaf = key.rpartition('.')
  (config[parent] if parent else config)[leaf] = 0  # What an old config file would set.
  with pytest.raises(UserError, match=f'{key} is now {new}'):
    validate(config)


def test_keys_added_since_a_run_are_no_difference_at_their_default():
  from mgr_jax.workdir import config_differences
  defaults = {'lr': 0.1, 'data': {'size': 16, 'augment': 'none'}}
  old = {'lr': 0.1, 'data': {'size': 16}}  # Written before data.augment existed.
  assert config_differences(old, {'lr': 0.1, 'data': {'size': 16, 'augment': 'none'}},
                            defaults=defaults) == []
  assert config_differences(old, {'lr': 0.1, 'data': {'size': 16, 'augment': 'cutmix'}},
                            defaults=defaults) == ["data.augment: None -> 'cutmix'"]
  assert config_differences(old, {'lr': 0.1, 'data': {'size': 16, 'augment': 'none'}}) != []
