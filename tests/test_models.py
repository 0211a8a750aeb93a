"""ResNet-18: torchvision's shapes, g/h composition."""
import jax
import jax.numpy as jnp
import numpy as np

from mgr_jax.models import ResNet18, feature_dim
from mgr_jax.models.resnet import Backbone


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_resnet18_matches_torchvision_shapes():
  model = ResNet18(num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  # torchvision.models.resnet18(): 11,689,512 parameters.
  assert _count(variables['params']) == 11_689_512
  p = variables['params']
  assert p['backbone']['conv1']['kernel'].shape == (7, 7, 3, 64)
  assert p['backbone']['layer2_0']['downsample_conv']['kernel'].shape == (1, 1, 64, 128)
  assert 'downsample_conv' not in p['backbone']['layer1_0']
  assert p['fc']['kernel'].shape == (512, 1000)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((2, 224, 224, 3)))
  assert out.shape == (2, 1000)
  # 7x7/2 stem + 3x3/2 max-pool + three stride-2 stages: 224 -> 7 before pooling.
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=ResNet18.features), variables,
                         jnp.zeros((2, 224, 224, 3)))
  assert feats.shape == (2, 512) == (2, feature_dim(1.0))
  inner = jax.eval_shape(
      lambda x: Backbone().init_with_output(jax.random.PRNGKey(0), x)[0], jnp.zeros((1, 64, 64, 3)))
  assert inner.shape == (1, 512)


def test_small_stem_and_width():
  model = ResNet18(num_classes=10, width=0.25, small_stem=True)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert variables['params']['backbone']['conv1']['kernel'].shape == (3, 3, 3, 16)
  assert model.apply(variables, x).shape == (3, 10)
  assert model.apply(variables, x, method=ResNet18.features).shape == (3, feature_dim(0.25))


def test_features_then_head_is_the_classifier():
  model = ResNet18(num_classes=7, width=0.125, small_stem=True)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  for train in (False, True):
    kw = {'mutable': ['batch_stats']} if train else {}
    logits = model.apply(variables, x, train=train, **kw)
    feats = model.apply(variables, x, train=train, method=ResNet18.features, **kw)
    if train:
      logits, feats = logits[0], feats[0]
    composed = model.apply(variables, feats, method=ResNet18.head)
    np.testing.assert_allclose(composed, logits, rtol=1e-5, atol=1e-5)
    # h is exactly linear: logits = feats @ W + b.
    fc = variables['params']['fc']
    np.testing.assert_allclose(feats @ fc['kernel'] + fc['bias'], logits, rtol=1e-5, atol=1e-5)
