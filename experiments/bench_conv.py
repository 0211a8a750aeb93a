"""Each convolution of the classifier alone, ours next to PyTorch eager's, interleaved.

  python -m experiments.bench_conv --config=configs/digits.py [--steps=40] [--json]

Where `base`'s convolution time goes against PyTorch on a CPU (docs/performance.md): this
times, for every distinct convolution of the config's ResNet-18 (found by running the model,
so it follows the config's width, stem and image size), one forward and both gradients (input
and kernel) at the training batch: ours as the model runs it (`mgr_jax/models/conv.py`: XLA's
convolution, with its kernel gradient summed over chunks of 8 images ('chunked') or by the C++
kernel ('native'), or im2col, jitted alone) and `torch.nn.functional.conv2d` with autograd
(oneDNN on a CPU). The paths take turns in blocks of consecutive calls (an untimed call
first, then `block` timed ones; medians), as in a network, where each framework's threads are
awake from the previous op: alternating call by call made every call pay its thread pool's
wake-up, torch's most (session 18: torch's 64x16x16x16 layer 2.29 ms call by call, 1.73 in
blocks; ours 2.59 and 2.31). The totals weight each layer by how often the network has it, so
they compare the convolution work of one classifier pass (forward + backward) in the two
frameworks. torch needs requirements-test.txt.
"""
import collections
import json
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from absl import app, flags
from ml_collections import config_flags

from experiments import interleave
from mgr_jax import host_memory
from mgr_jax.models import classifier, conv, native_conv

Layer = collections.namedtuple('Layer', 'in_shape features kernel stride padding')


def _pair(strides):
  """nn.Conv's strides (None, an int or a pair) as a pair."""
  strides = 1 if strides is None else strides
  return (strides, strides) if isinstance(strides, int) else tuple(strides)


def _padding(padding):
  """((top, bottom), (left, right)) of a ResNet convolution's 'VALID' or explicit padding."""
  return ((0, 0), (0, 0)) if padding == 'VALID' else tuple(map(tuple, padding))


def conv_layers(config, num_classes: int = 10):
  """{Layer: count} of the classifier's convolutions at the config's batch and image size."""
  model = classifier.build_model(config.model, num_classes)
  size = config.data.image_size
  x = jnp.zeros((config.batch_size, size, size, 3), jnp.float32)
  variables = classifier.init_variables(model, size, jax.random.PRNGKey(0))
  found = collections.Counter()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Conv) and context.method_name == '__call__':
      found[Layer(tuple(args[0].shape), module.features, tuple(module.kernel_size),
                  _pair(module.strides), _padding(module.padding))] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']), variables)
  return dict(found)


def time_layer(layer: Layer, steps: int, warmup: int = 1, block: int = interleave.BLOCK):
  """({'lax.conv': ms, 'chunked': ms, 'im2col': ms, ['native': ms,] 'torch': ms}, the model's
  path) for one forward + both gradients of `layer`: XLA's convolution, the same with its kernel
  gradient summed over batch chunks, the im2col matrix product, the same convolution with the
  C++ kernel gradient (`mgr_jax/models/native_conv.py`, where it applies), torch's conv2d;
  `steps` timed calls each (rounded up to whole blocks), in rotating blocks of `block` (module
  docstring)."""
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(0)
  cin = layer.in_shape[-1]
  x = rng.standard_normal(layer.in_shape, dtype=np.float32)
  k = rng.standard_normal(layer.kernel + (cin, layer.features), dtype=np.float32) * 0.1
  convs = {'lax.conv': lambda x, k: lax.conv_general_dilated(
               x, k, layer.stride, layer.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
           'im2col': lambda x, k: conv.im2col_conv(x, k, layer.stride, layer.padding)}
  out_shape = jax.eval_shape(convs['lax.conv'], x, k).shape
  oh, ow = out_shape[1:3]
  parts = conv.kernel_grad_parts(layer.in_shape[0], oh * ow)  # The model's choice, and ...
  chunks = conv.chunk_count(layer.in_shape[0])  # ... the 'chunked' column at every size.
  convs['chunked'] = conv.batch_split_kernel_grad(convs['lax.conv'], chunks)
  native = native_conv.applies(layer.in_shape, k.shape, jnp.float32, layer.stride, layer.padding)
  if native:  # The C++ kernel gradient, where the model takes it.
    convs['native'] = native_conv.conv_with_native_kernel_grad(convs['lax.conv'])
  g = rng.standard_normal(out_shape, dtype=np.float32)
  args = tuple(jnp.asarray(a) for a in (x, k, g))
  xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  kt = torch.tensor(k).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
  gt = torch.tensor(g).permute(0, 3, 1, 2).contiguous()
  (pt, _), (pl, _) = layer.padding  # Symmetric in ResNet-18.

  def torch_step():
    y = F.conv2d(xt, kt, stride=layer.stride, padding=(pt, pl))
    return torch.autograd.grad(y, (xt, kt), gt)

  dx, dk = torch_step()
  ref = (dx.permute(0, 2, 3, 1).numpy(), dk.permute(2, 3, 1, 0).numpy())  # NHWC, HWIO.
  steps_ = {'torch': torch_step}
  for name, fn in convs.items():
    ours = jax.jit(lambda x, k, g, fn=fn: jax.vjp(fn, x, k)[1](g),
                   compiler_options=conv.compiler_options())  # As the model's programs.
    for a, b in zip(ours(*args), ref):  # Equal math, or the timing means nothing.
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-3 * float(np.abs(b).max()))
    steps_[name] = lambda ours=ours: jax.block_until_ready(ours(*args))
  times = interleave.time_in_blocks(steps_, steps, warmup, block)
  path = ('im2col' if conv.uses_im2col(oh * ow, layer.stride) else 'native' if native
          else 'chunked' if parts > 1 else 'lax.conv')
  return {name: 1e3 * statistics.median(t) for name, t in times.items()}, path


def main(argv):
  del argv
  host_memory.reuse_step_buffers()  # As the entry points run steps (mgr_jax.cli).
  import torch
  config = FLAGS.config
  rows = []
  for layer, count in conv_layers(config).items():
    ms, path = time_layer(layer, FLAGS.steps)
    rows.append({'input': 'x'.join(map(str, layer.in_shape)), 'features': layer.features,
                 'kernel': layer.kernel[0], 'stride': layer.stride[0], 'count': count,
                 'path': path, 'ms': ms})
  total = {name: sum(r['ms'][name if name == 'torch' else r['path']] * r['count']
                     for r in rows) for name in ('ours', 'torch')}
  device = f'{jax.devices()[0].device_kind} ({jax.default_backend()})'
  if FLAGS.json:
    print(json.dumps({'layers': rows, 'total_ms': total, 'device': device,
                      'torch_threads': torch.get_num_threads()}))
    return
  print(f'{device}; jax {jax.__version__}, torch {torch.__version__} '
        f'({torch.get_num_threads()} threads); forward + input and kernel gradients, '
        f'median ms of {FLAGS.steps}, in blocks of {interleave.BLOCK} consecutive calls')
  print(f'{"input (NHWC)":<16} {"out":>4} {"k":>2} {"s":>2} {"n":>2} {"lax.conv":>9} '
        f'{"chunked":>8} {"im2col":>7} {"native":>7} {"torch":>7} {"model":>9} '
        f'{"model/torch":>12}')
  for r in rows:
    ms = r['ms']
    native = f'{ms["native"]:.3f}' if 'native' in ms else '-'
    print(f'{r["input"]:<16} {r["features"]:>4} {r["kernel"]:>2} {r["stride"]:>2} '
          f'{r["count"]:>2} {ms["lax.conv"]:>9.3f} {ms["chunked"]:>8.3f} {ms["im2col"]:>7.3f} '
          f'{native:>7} {ms["torch"]:>7.3f} '
          f'{r["path"]:>9} {ms[r["path"]] / ms["torch"]:>12.2f}')
  print(f'all convolutions of one pass, count-weighted, the model\'s paths: ours '
        f'{total["ours"]:.1f} ms, torch {total["torch"]:.1f} ms, ratio '
        f'{total["ours"] / total["torch"]:.2f}')


if __name__ == '__main__':
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', 'configs/digits.py', 'Config file.')
  flags.DEFINE_integer('steps', 40, 'Timed calls per layer and framework.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  app.run(main)
