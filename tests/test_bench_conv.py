"""experiments.bench_conv: it finds the classifier's convolutions and times equal math."""
import collections

import jax
import pytest

from configs.digits import get_config
from experiments.bench_conv import Layer, conv_layers
from mgr_jax.models import conv, native_conv


def test_conv_layers_are_resnet18s_twenty_convolutions():
  config = get_config()  # 16 px, width 0.25, small stem, batch 64.
  layers = conv_layers(config)
  assert sum(layers.values()) == 20  # Stem + 8 blocks x 2 + 3 downsampling 1x1.
  b = config.batch_size
  stem = Layer((b, 16, 16, 3), 16, (3, 3), (1, 1), ((1, 1), (1, 1)))
  assert layers[stem] == 1
  assert layers[Layer((b, 16, 16, 16), 16, (3, 3), (1, 1), ((1, 1), (1, 1)))] == 4
  assert layers[Layer((b, 2, 2, 128), 128, (3, 3), (1, 1), ((1, 1), (1, 1)))] == 3
  downsampling = [l for l in layers if l.kernel == (1, 1)]
  assert [(l.in_shape[1:], l.features, l.stride) for l in sorted(downsampling)] == [
      ((4, 4, 64), 128, (2, 2)), ((8, 8, 32), 64, (2, 2)), ((16, 16, 16), 32, (2, 2))]
  per_kernel = collections.Counter((l.kernel, l.stride) for l, n in layers.items()
                                   for _ in range(n))
  assert per_kernel == {((3, 3), (1, 1)): 14, ((3, 3), (2, 2)): 3, ((1, 1), (2, 2)): 3}


def test_time_layer_checks_both_gradients_against_torch(monkeypatch):
  pytest.importorskip('torch', reason='torch (requirements-test.txt) is not installed')
  from experiments.bench_conv import time_layer
  monkeypatch.setattr(jax, 'device_count', lambda: 1)  # conftest's 8 devices: never chunked.
  monkeypatch.setattr(conv, 'KERNEL_GRAD_MIN_PIXELS', 36)  # Chunked from 6x6 outputs up.
  for layer, expected in (
      (Layer((4, 2, 2, 8), 8, (3, 3), (1, 1), ((1, 1), (1, 1))), 'im2col'),
      (Layer((2, 16, 16, 4), 8, (3, 3), (2, 2), ((1, 1), (1, 1))), 'lax.conv'),
      (Layer((2, 16, 16, 4), 8, (1, 1), (2, 2), ((0, 0), (0, 0))), 'lax.conv'),
      (Layer((16, 6, 6, 4), 8, (3, 3), (1, 1), ((1, 1), (1, 1))), 'chunked'),  # 2 x 8 images.
      (Layer((16, 4, 4, 4), 8, (3, 3), (1, 1), ((1, 1), (1, 1))), 'lax.conv'),  # < 6x6.
      (Layer((2, 4, 4, 16), 16, (3, 3), (1, 1), ((1, 1), (1, 1))), 'native')):
    if expected == 'native' and not native_conv.available():
      continue  # No C++ compiler here (native_conv warns).
    ms, path = time_layer(layer, steps=1, warmup=0)  # Raises if a gradient differs.
    columns = {'lax.conv', 'chunked', 'im2col', 'torch'} | ({'native'} & {path})
    assert set(ms) == columns and min(ms.values()) > 0
    assert path == expected
