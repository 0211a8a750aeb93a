"""The im2col convolution (mgr_jax/models/conv.py) is lax.conv up to float32 rounding,
forward and both gradients, alone and inside the ResNet; the materialising wrappers change
nothing."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mgr_jax.models import ResNet18
from mgr_jax.models import conv
from mgr_jax.models.classifier import Classifier, build_model
from mgr_jax.train.setup import build_run
from conftest import assert_close_to_scale
from ynn_fusions import ynn_convolutions

_DN = ('NHWC', 'HWIO', 'NHWC')


# (input size, kernel, stride, padding): ResNet-18's small-map layers and a few odd ones.
CASES = [(2, 3, 1, ((1, 1), (1, 1))), (4, 3, 2, ((1, 1), (1, 1))), (4, 1, 2, 'VALID'),
         (5, 3, 2, ((0, 1), (1, 0))), (8, 3, 2, ((1, 1), (1, 1)))]


@pytest.mark.parametrize('size,k,stride,padding', CASES)
def test_im2col_equals_lax_conv_with_gradients(size, k, stride, padding):
  kx, kw, kc = jax.random.split(jax.random.PRNGKey(size * 10 + k), 3)
  x = jax.random.normal(kx, (3, size, size, 8))
  w = jax.random.normal(kw, (k, k, 8, 16)) / (3 * k)

  def loss(conv_fn, x, w):  # A non-linear read-out, so the cotangent is not constant.
    out = conv_fn(x, w)
    return jnp.sum(jnp.sin(out) * jax.random.normal(kc, out.shape)), out

  ours = lambda x, w: conv.small_map_conv(x, w, (stride, stride), padding, dimension_numbers=_DN)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=_DN)
  both = jax.jit(lambda x, w: [jax.value_and_grad(loss, (1, 2), has_aux=True)(fn, x, w)
                               for fn in (ours, ref)])  # One compilation for both.
  ((_, out), grads), ((_, out_ref), grads_ref) = both(x, w)
  assert_close_to_scale(out, out_ref)
  assert_close_to_scale(grads[0], grads_ref[0])
  assert_close_to_scale(grads[1], grads_ref[1])
  # The matrix-product path really ran (on the CPU backend the tests use).
  jaxpr = str(jax.make_jaxpr(ours)(x, w))
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr


def test_large_maps_and_other_convolutions_stay_lax_conv():
  x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  pad = ((1, 1), (1, 1))
  big = jax.make_jaxpr(lambda x: conv.small_map_conv(x, w, (1, 1), pad, dimension_numbers=_DN))(x)
  assert 'conv_general_dilated' in str(big)  # 64 output pixels: too many for im2col.
  # 4x4 outputs: XLA's convolution at stride 1, im2col when strided (its input gradient).
  mid = jax.make_jaxpr(lambda x: conv.small_map_conv(x[:, :4, :4], w, (1, 1), pad,
                                                     dimension_numbers=_DN))(x)
  assert 'conv_general_dilated' in str(mid)
  strided = jax.make_jaxpr(lambda x: conv.small_map_conv(x, w, (2, 2), pad,
                                                         dimension_numbers=_DN))(x)
  assert 'conv_general_dilated' not in str(strided) and 'dot_general' in str(strided)
  small = x[:, :2, :2]
  for kwargs in ({'rhs_dilation': (2, 2)}, {'padding': 'SAME'}):
    fn = lambda x: conv.small_map_conv(x, w, (1, 1), **{'padding': pad, 'dimension_numbers': _DN,
                                                        **kwargs})
    assert 'conv_general_dilated' in str(jax.make_jaxpr(fn)(small)), kwargs


def test_unfused_wrappers_are_exact_identities_to_second_order():
  """`unfused` and `unfused_cotangent` change only how XLA fuses: values, gradients and the
  forward-over-reverse derivative the exact hypergradient takes are bit-for-bit those
  without them (x / 1 is exact for finite x)."""
  kx, kv, kc = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (4, 3, 3, 5)) * 10.0
  v = jax.random.normal(kv, x.shape)
  c = jax.random.normal(kc, x.shape)

  def derivatives(wrap):
    f = lambda x: jnp.sum(jnp.sin(wrap(x)) * c)
    grad = jax.grad(f)
    _, hvp = jax.jvp(grad, (x,), (v,))  # Forward over reverse, as meta.py's 'exact'.
    return wrap(x), grad(x), hvp

  reference = jax.jit(lambda: derivatives(lambda x: x))()
  for wrap in (conv.unfused, conv.unfused_cotangent,
               lambda x: conv.unfused_cotangent(conv.unfused(x))):
    for a, b in zip(jax.jit(lambda: derivatives(wrap))(), reference):
      np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resnet_with_im2col_equals_lax_conv(monkeypatch):
  """Width-0.125 small-stem ResNet-18 at 8 px (stage 2 at 4x4, stages 3-4 at 2x2 and 1x1),
  train mode: logits and parameter gradients as with XLA's convolution everywhere, the
  larger maps' kernel gradients summed over two batch chunks against over the whole batch."""
  monkeypatch.setattr(jax, 'device_count', lambda: 1)  # conftest's 8 devices turn it off.
  monkeypatch.setattr(conv, 'KERNEL_GRAD_CHUNK', 2)
  monkeypatch.setattr(conv, 'KERNEL_GRAD_MIN_PIXELS', 0)  # Split even these small maps.
  model = ResNet18(num_classes=10, width=0.125, small_stem=True)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))
  variables = model.init(jax.random.PRNGKey(0), x)

  def run():
    """(convolutions left in the program, logits, gradients), traced afresh each call (a new
    function: JAX caches traces per function, and uses_im2col is read at trace time)."""
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), jnp.arange(4)]), logits
    convs = str(jax.make_jaxpr(loss)(variables['params'])).count('conv_general_dilated')
    grad_fn = jax.value_and_grad(loss, has_aux=True)
    grad_convs = str(jax.make_jaxpr(grad_fn)(variables['params'])).count('conv_general_dilated')
    (_, logits), grads = jax.jit(grad_fn)(variables['params'])
    return convs, grad_convs, logits, grads

  convs, grad_convs, logits, grads = run()
  monkeypatch.setattr(conv, 'uses_im2col', lambda *_: False)  # Every layer through lax.conv,
  monkeypatch.setattr(conv, 'KERNEL_GRAD_CHUNK', 4)  # its kernel gradient unsplit.
  convs_ref, grad_convs_ref, logits_ref, grads_ref = run()
  # Stem, layer1 (8x8) and layer2's three stride-1 4x4 convolutions stay convolutions; layer2's
  # strided ones and layer3-4's (12 with 3 downsamples) do not.
  assert (convs, convs_ref) == (8, 20)
  assert grad_convs == grad_convs_ref - 12 * 3 + 8  # Less im2col (12 x 3), plus 8 second chunks.
  assert_close_to_scale(logits, logits_ref)
  for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    assert_close_to_scale(g, g_ref, rtol=1e-4)  # Through BN and 8 blocks: rounding compounds a little.


def test_kernel_grad_parts_rule(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 1)  # conftest's 8 devices turn it off.
  assert conv.chunk_count(64) == 8  # Chunks of 8 images.
  assert conv.chunk_count(96) == 12
  assert conv.chunk_count(100) == 10  # Equal chunks of >= 8: 10 of 10.
  assert conv.chunk_count(15) == 1  # No two equal chunks of >= 8.
  assert conv.chunk_count(67) == 1  # Prime: no equal chunks at all.
  assert conv.kernel_grad_parts(64, 64 * 64) == 8  # Maps of 64x64 outputs and more only.
  assert conv.kernel_grad_parts(64, 32 * 64) == 1
  monkeypatch.setattr(jax, 'device_count', lambda: 2)
  assert conv.chunk_count(64) == 1  # Never across a batch that may be sharded.
  assert conv.kernel_grad_parts(64, 64 * 64) == 1


def test_batch_split_kernel_grad_equals_lax_conv_to_second_order(monkeypatch):
  """A larger-map convolution whose kernel gradient is summed over batch parts: value, both
  gradients and the forward-over-reverse derivative (meta.py's 'exact') are lax.conv's up
  to float32 rounding, and the gradient program really has one kernel convolution per part."""
  monkeypatch.setattr(jax, 'device_count', lambda: 1)  # conftest's 8 devices turn it off.
  monkeypatch.setattr(conv, 'KERNEL_GRAD_CHUNK', 2)  # 8 images: 4 parts of 2.
  monkeypatch.setattr(conv, 'KERNEL_GRAD_MIN_PIXELS', 0)  # Even at 6x6.
  kx, kw, kc, kv = jax.random.split(jax.random.PRNGKey(7), 4)
  x = jax.random.normal(kx, (8, 6, 6, 4))
  w = jax.random.normal(kw, (3, 3, 4, 5)) / 6.0
  c = jax.random.normal(kc, (8, 6, 6, 5))
  tangent = jax.tree.map(lambda a: jax.random.normal(kv, a.shape), (x, w))
  pad = ((1, 1), (1, 1))
  assert conv.chunk_count(8) == 4

  def derivatives(conv_fn):
    loss = lambda x, w: jnp.sum(jnp.sin(conv_fn(x, w)) * c)
    grad = jax.grad(loss, (0, 1))
    _, hvp = jax.jvp(grad, (x, w), tangent)
    return conv_fn(x, w), grad(x, w), hvp

  ours = lambda x, w: conv.small_map_conv(x, w, (1, 1), pad, dimension_numbers=_DN)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_DN)
  for a, b in zip(jax.tree.leaves(jax.jit(lambda: derivatives(ours))()),
                  jax.tree.leaves(jax.jit(lambda: derivatives(ref))())):
    assert_close_to_scale(a, b)
  kernel_grad = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(jnp.sin(ours(x, w)) * c)))(w)
  assert str(kernel_grad).count('conv_general_dilated') == 1 + 4  # Forward + four parts.


def test_compiler_options_move_convolutions_from_ynnpack_to_eigen():
  """XLA puts a >16-channel convolution into a YNNPACK fusion; compiled with
  `conv.compiler_options()` it runs outside YNNPACK (Eigen), to float32 rounding the same,
  forward and both gradients."""
  assert jax.default_backend() == 'cpu'
  options = conv.compiler_options()
  assert options == {conv.YNN_OPTION: conv.CPU_YNN_FUSION_TYPES}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 32)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 32, 32)) / 17, jnp.float32)

  def loss(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)
    return jnp.sum(jnp.tanh(y))

  fn = jax.value_and_grad(loss, argnums=(0, 1))
  default = jax.jit(fn).lower(x, w).compile()
  moved = jax.jit(fn, compiler_options=options).lower(x, w).compile()
  assert ynn_convolutions(default.as_text()) >= 1  # Else this jaxlib's default changed.
  assert ynn_convolutions(moved.as_text()) == 0
  for a, b in zip(jax.tree.leaves(moved(x, w)), jax.tree.leaves(default(x, w))):
    assert_close_to_scale(a, b)


def test_compiler_options_fall_back_to_xla_defaults_for_an_unknown_option(monkeypatch):
  """A jaxlib without the (experimental) option: None, so programs compile with XLA's
  defaults instead of failing."""
  monkeypatch.setattr(conv, 'YNN_OPTION', 'xla_cpu_no_such_option_here')
  conv._cpu_option_accepted.cache_clear()
  try:
    assert conv.compiler_options() is None
  finally:
    monkeypatch.undo()
    conv._cpu_option_accepted.cache_clear()
  assert conv.compiler_options() is not None


def test_training_step_and_classifier_compile_with_the_options(tiny_config):
  """The training step and a trained classifier's forward take `compiler_options`: the tiny
  ResNet's 32- and 64-channel convolutions, in YNNPACK fusions by default, are not."""
  c = tiny_config
  c.batch_size = 16
  run = build_run(c, 10, 1000, None, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  batch = run.shard_batch({'image': rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
                           'label': rng.integers(0, 10, 16).astype(np.int32)})
  args = (run.state, batch, jax.random.PRNGKey(0), run.gen_vars)
  step = functools.partial(run.method.step, ctx=run.ctx)
  assert ynn_convolutions(jax.jit(step).lower(*args).compile().as_text()) >= 1
  assert ynn_convolutions(run.jit_step().lower(*args).compile().as_text()) == 0

  variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
  clf = Classifier(build_model(c.model, 10), variables, 16, (0.5,) * 3, (0.25,) * 3,
                   [str(i) for i in range(10)])
  x = jnp.zeros((4, 16, 16, 3))
  assert ynn_convolutions(clf._logits.lower(variables, x).compile().as_text()) == 0
