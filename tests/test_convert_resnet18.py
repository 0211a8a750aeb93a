"""converters.resnet18: torchvision resnet18 state_dict -> classifier dir, vs torchvision.

torchvision's resnet18 with random weights and random (non-trivial) BatchNorm weight, bias and
running statistics, in eval mode, is saved as a state_dict, converted with
`python -m converters.resnet18`, opened with `load_classifier` and compared on the same input
(NCHW for torch, NHWC for Flax): logits and pooled features, at 224 and at small sizes.
"""

import inspect
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch (requirements-test.txt) is not installed')
torchvision = pytest.importorskip('torchvision',
                                  reason='torchvision (requirements-test.txt) is not installed')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from converters import resnet18 as converter  # noqa: E402 pylint: disable=wrong-import-position
from mgr_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402 pylint: disable=wrong-import-position
from mgr_jax.errors import UserError  # noqa: E402 pylint: disable=wrong-import-position
from mgr_jax.models import load_classifier  # noqa: E402 pylint: disable=wrong-import-position

TOL = 1e-4
K = 10


def _reference(num_classes, seed):
  """torchvision resnet18, eval mode, every BatchNorm tensor randomised."""
  torch.manual_seed(seed)
  model = torchvision.models.resnet18(num_classes=num_classes)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
        m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
        m.num_batches_tracked.fill_(1234)
    model.fc.bias.copy_(torch.randn(num_classes, generator=g) * 0.1)
  return model.eval()


def _torch_out(model, x_nhwc):
  """(logits, pooled features) of torchvision for NHWC input."""
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
  feats = {}
  hook = model.avgpool.register_forward_hook(lambda m, i, o: feats.setdefault('f', o))
  try:
    with torch.no_grad():
      logits = model(x).numpy()
  finally:
    hook.remove()
  return logits, torch.flatten(feats['f'], 1).numpy()


def _input(size, seed=0):
  return np.random.RandomState(seed).randn(2, size, size, 3).astype(np.float32)


def _maxdiff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.fixture(scope='module')
def refs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('resnet18')
  out = {}
  for classes, seed in ((1000, 0), (K, 10)):
    model = _reference(classes, seed)
    src = tmp / f'resnet18_{classes}.pth'
    torch.save(model.state_dict(), src)
    out[classes] = (model, str(src))
  return tmp, out


@pytest.fixture(scope='module')
def imagenet(refs):
  """The 1000-class checkpoint through the real CLI (a subprocess)."""
  tmp, models = refs
  model, src = models[1000]
  out = tmp / 'imagenet'
  proc = subprocess.run([sys.executable, '-m', 'converters.resnet18', '--src', src,
                         '--out', str(out)], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  return model, str(out), load_classifier(str(out))


@pytest.fixture(scope='module')
def small(refs):
  """The K-class checkpoint at --image-size 32 (in-process main)."""
  tmp, models = refs
  model, src = models[K]
  out = tmp / 'small'
  assert converter.main(['--src', src, '--out', str(out), '--image-size', '32']) == 0
  return model, str(out), load_classifier(str(out))


@pytest.mark.parametrize('size', [224, 64, 32])
def test_logits_match_torchvision_1000(imagenet, size):
  model, _, clf = imagenet
  assert len(clf.class_names) == 1000 and clf.class_names[:2] == ('class_0', 'class_1')
  assert clf.image_size == 224 and clf.mean == IMAGENET_MEAN and clf.std == IMAGENET_STD
  x = _input(size)
  want, _ = _torch_out(model, x)
  got = clf.logits(x)
  assert got.shape == (2, 1000)
  diff = _maxdiff(got, want)
  print(f'1000 classes, {size} px: max |logits diff| {diff:.2e} (|logits| <= '
        f'{np.abs(want).max():.1f})')
  assert diff <= TOL


def test_features_match_torchvision(imagenet):
  model, _, clf = imagenet
  x = _input(32, seed=1)
  _, want = _torch_out(model, x)
  got = clf.features(x)
  assert got.shape == (2, 512)
  diff = _maxdiff(got, want)
  print(f'features, 32 px: max |diff| {diff:.2e}')
  assert diff <= TOL


def test_other_class_count_and_image_size(refs, small):
  model, directory, clf = small
  src = refs[1][K][1]
  assert len(clf.class_names) == K and clf.image_size == 32
  # 8-bit values at the recorded size: clf(images01) only normalises (ImageNet mean/std).
  images01 = np.random.RandomState(2).randint(0, 256, (2, 32, 32, 3)).astype(np.float32) / 255
  x = ((images01 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)
  want, _ = _torch_out(model, x)
  for got in (clf.logits(x), clf(images01)):
    diff = _maxdiff(got, want)
    print(f'{K} classes, 32 px: max |logits diff| {diff:.2e}')
    assert got.shape == (2, K) and diff <= TOL
  # An existing classifier dir is not overwritten (config.json untouched).
  before = open(os.path.join(directory, 'config.json')).read()
  assert converter.main(['--src', src, '--out', directory, '--image-size', '64']) == 2
  assert open(os.path.join(directory, 'config.json')).read() == before


def test_num_classes_reinitialises_fc_keeps_backbone(refs, imagenet, tmp_path):
  _, src = refs[1][1000]
  _, _, clf = imagenet
  out = tmp_path / 'reinit'
  assert converter.main(['--src', src, '--out', str(out), '--num-classes', '7',
                         '--seed', '3']) == 0
  new = load_classifier(str(out))
  assert len(new.class_names) == 7 and new.variables['params']['fc']['kernel'].shape == (512, 7)
  same = jax.tree.map(np.array_equal, new.variables['params']['backbone'],
                      clf.variables['params']['backbone'])
  assert all(jax.tree.leaves(same))
  same = jax.tree.map(np.array_equal, new.variables['batch_stats'], clf.variables['batch_stats'])
  assert all(jax.tree.leaves(same))
  x = _input(32, seed=1)
  np.testing.assert_array_equal(np.asarray(new.features(x)), np.asarray(clf.features(x)))
  # Seeded: the same seed gives the same fc, another seed another one.
  fc3 = converter.fresh_fc(7, 3)
  np.testing.assert_array_equal(fc3['kernel'], new.variables['params']['fc']['kernel'])
  assert not np.array_equal(converter.fresh_fc(7, 4)['kernel'], fc3['kernel'])


def test_mismatch_lists_keys(refs, tmp_path, capsys):
  model, _ = refs[1][K]
  sd = dict(model.state_dict())
  del sd['layer3.1.bn2.running_var']
  sd['layer4.0.extra.weight'] = torch.zeros(3)
  sd['layer2.0.conv1.weight'] = torch.zeros(128, 64, 5, 5)
  torch.save(sd, tmp_path / 'bad.pth')
  rc = converter.main(['--src', str(tmp_path / 'bad.pth'), '--out', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith('Error: ')
  for key in ('layer3.1.bn2.running_var', 'layer4.0.extra.weight', 'layer2.0.conv1.weight',
              '(128, 64, 5, 5)', '(128, 64, 3, 3)'):
    assert key in err
  assert not (tmp_path / 'out').exists()
  # DataParallel prefix: every key unexpected, with a hint.
  with pytest.raises(UserError, match='module.'):
    converter.convert({'module.' + k: v.numpy() for k, v in model.state_dict().items()})
  # Not a state_dict / not a file.
  torch.save([torch.zeros(1)], tmp_path / 'list.pth')
  for path in (tmp_path / 'list.pth', tmp_path / 'missing.pth'):
    assert converter.main(['--src', str(path), '--out', str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err.startswith('Error: ')


def _load_pretrained(config, model, num_classes):
  """mgr_jax.train.loop.load_pretrained, whichever of its two signatures is present."""
  from mgr_jax.train.loop import load_pretrained  # pylint: disable=import-outside-toplevel
  if next(iter(inspect.signature(load_pretrained).parameters)) == 'config':
    return load_pretrained(config, model, num_classes)
  return load_pretrained(config.model, model, config.data.image_size, num_classes)


def test_load_pretrained_starts_from_converted(small):
  """What `--config.model.pretrained=DIR` of `python -m mgr_jax.main` starts from (K classes:
  backbone, batch_stats and fc all come from the converted dir)."""
  from configs.digits import get_config  # pylint: disable=import-outside-toplevel
  from mgr_jax.models import build_model  # pylint: disable=import-outside-toplevel
  _, directory, clf = small
  config = get_config()
  config.model.width = 1.0
  config.model.small_stem = False
  config.model.pretrained = directory
  got = _load_pretrained(config, build_model(config.model, K), K)
  for tree, want in ((got['params'], clf.variables['params']),
                     (got['batch_stats'], clf.variables['batch_stats'])):
    assert jax.tree.structure(tree) == jax.tree.structure(want)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, tree, want)))
