"""The C++ kernel gradient of 3x3 convolutions (mgr_jax/models/native_conv.py): against a
float64 reference, inside `small_map_conv` to second order against lax.conv, in a ResNet, and
what happens without a compiler or with MGR_JAX_NATIVE=off."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import assert_close_to_scale
from mgr_jax.models import ResNet18
from mgr_jax.models import conv, native_conv

_DN = ('NHWC', 'HWIO', 'NHWC')
_PAD = ((1, 1), (1, 1))


@pytest.fixture
def one_device(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 1)  # conftest's 8 devices turn it off.
  if not native_conv.available():
    pytest.skip('no C++ compiler here: the kernel cannot be built (see the warning)')


@pytest.fixture
def fresh_availability():
  """`available()` decided afresh in the test, and again after it."""
  native_conv.available.cache_clear()
  yield
  native_conv.available.cache_clear()


def _reference_kernel_grad(x, dy):
  """float64: dw[kh, kw, ci, co] = sum_{n,h,w} xpad[n, h+kh, w+kw, ci] dy[n, h, w, co]."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = dy.shape[1:3]
  return np.stack([np.stack([np.einsum('nhwc,nhwo->co', xp[:, i:i + h, j:j + w], dy)
                             for j in range(3)]) for i in range(3)])


@pytest.mark.parametrize('shape', [(11, 7, 5, 16, 32), (8, 4, 4, 32, 16), (1, 1, 3, 16, 16)])
def test_kernel_grad_equals_float64_reference(one_device, shape):
  """Batches that are not whole chunks of 8 images, odd and one-pixel maps, C != CO."""
  n, h, w, c, co = shape
  kx, kd = jax.random.split(jax.random.PRNGKey(sum(shape)))
  x = jax.random.normal(kx, (n, h, w, c))
  dy = jax.random.normal(kd, (n, h, w, co))
  ours = np.asarray(jax.jit(native_conv.kernel_grad)(x, dy))
  ref = _reference_kernel_grad(x, dy)
  assert ours.shape == (3, 3, c, co)
  assert_close_to_scale(ours, ref, rtol=1e-5)
  # Deterministic: the chunks' partial sums are added in a fixed order.
  np.testing.assert_array_equal(np.asarray(jax.jit(native_conv.kernel_grad)(x, dy)), ours)


def test_small_map_conv_takes_the_kernel_and_equals_lax_conv_to_second_order(one_device):
  """Value, both gradients, forward-over-reverse (jvp of grad, and linearize as meta.py's
  'exact') against lax.conv, and the gradient program really calls the kernel."""
  kx, kw, kc, kv = jax.random.split(jax.random.PRNGKey(3), 4)
  x = jax.random.normal(kx, (10, 6, 5, 16))
  w = jax.random.normal(kw, (3, 3, 16, 32)) / 12.0
  c = jax.random.normal(kc, (10, 6, 5, 32))
  tangent = jax.tree.map(lambda a: jax.random.normal(kv, a.shape), (x, w))

  def derivatives(conv_fn):
    loss = lambda x, w: jnp.sum(jnp.sin(conv_fn(x, w)) * c)
    grad = jax.grad(loss, (0, 1))
    _, hvp = jax.jvp(grad, (x, w), tangent)
    _, linearized = jax.linearize(grad, x, w)
    return conv_fn(x, w), grad(x, w), hvp, linearized(*tangent)

  ours = lambda x, w: conv.small_map_conv(x, w, (1, 1), _PAD, dimension_numbers=_DN)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), _PAD, dimension_numbers=_DN)
  for a, b in zip(jax.tree.leaves(jax.jit(lambda: derivatives(ours))()),
                  jax.tree.leaves(jax.jit(lambda: derivatives(ref))())):
    assert_close_to_scale(a, b)
  grad_program = str(jax.make_jaxpr(jax.grad(lambda w: ours(x, w).sum()))(w))
  assert native_conv.TARGET in grad_program


def test_which_convolutions_take_the_kernel(one_device, monkeypatch):
  ok = dict(x_shape=(4, 8, 8, 16), w_shape=(3, 3, 16, 32), dtype=jnp.float32,
            window_strides=(1, 1), padding=_PAD)
  assert native_conv.applies(**ok)
  assert not native_conv.applies(**{**ok, 'x_shape': (4, 8, 8, 8)})  # 8 input channels.
  assert not native_conv.applies(**{**ok, 'w_shape': (3, 3, 16, 24)})  # 24 outputs.
  assert not native_conv.applies(**{**ok, 'w_shape': (1, 1, 16, 32)})  # 1x1.
  assert not native_conv.applies(**{**ok, 'window_strides': (2, 2)})
  assert not native_conv.applies(**{**ok, 'padding': ((0, 0), (0, 0))})
  assert not native_conv.applies(**{**ok, 'dtype': jnp.bfloat16})
  monkeypatch.setattr(jax, 'device_count', lambda: 2)  # A batch GSPMD may have sharded.
  assert not native_conv.applies(**ok)


def test_resnet_gradients_with_the_kernel_equal_xla_convolutions(one_device, monkeypatch):
  """Width-0.25 small-stem ResNet-18 at 8 px, train mode (layer1's four 16-channel and
  layer2's three 32-channel 3x3 convolutions take the kernel): parameter gradients and their
  forward-mode derivative along a random direction as with XLA's convolutions."""
  model = ResNet18(num_classes=10, width=0.25, small_stem=True)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  direction = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape),
                           variables['params'])

  def run():
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), jnp.arange(4)])
    grad_fn = jax.grad(loss)
    calls = str(jax.make_jaxpr(grad_fn)(variables['params'])).count(native_conv.TARGET)
    grads, hvp = jax.jit(lambda p: jax.jvp(grad_fn, (p,), (direction,)))(variables['params'])
    return calls, grads, hvp

  calls, grads, hvp = run()
  monkeypatch.setattr(native_conv, 'available', lambda: False)
  calls_ref, grads_ref, hvp_ref = run()
  assert (calls, calls_ref) == (7, 0)
  for a, b in zip(jax.tree.leaves((grads, hvp)), jax.tree.leaves((grads_ref, hvp_ref))):
    assert_close_to_scale(a, b, rtol=1e-4)


def test_without_a_compiler_it_warns_and_xla_convolves(monkeypatch, fresh_availability,
                                                        tmp_path):
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  monkeypatch.setenv('CXX', 'no-such-compiler-mgr-jax')
  with pytest.raises(RuntimeError, match='no C\\+\\+ compiler'):
    native_conv.build(str(tmp_path))
  with pytest.warns(UserWarning, match='MGR_JAX_NATIVE=off'):
    assert not native_conv.available()
  x, w = jnp.ones((2, 4, 4, 16)), jnp.ones((3, 3, 16, 16))
  program = str(jax.make_jaxpr(jax.grad(
      lambda w: conv.small_map_conv(x, w, (1, 1), _PAD, dimension_numbers=_DN).sum()))(w))
  assert native_conv.TARGET not in program and 'conv_general_dilated' in program


def test_off_by_environment(monkeypatch, fresh_availability):
  monkeypatch.setenv(native_conv.ENV, 'off')
  assert not native_conv.available()


def test_a_failed_build_says_why_and_leaves_no_library(monkeypatch, tmp_path):
  bad = tmp_path / 'bad.cc'
  bad.write_text('this is not C++\n')
  monkeypatch.setattr(native_conv, 'SOURCE', str(bad))
  if not native_conv.shutil.which(os.environ.get('CXX', 'g++')):
    pytest.skip('no C++ compiler here')
  with pytest.raises(RuntimeError, match='failed'):
    native_conv.build(str(tmp_path / 'cache'))
  assert not list((tmp_path / 'cache').glob('*.so'))


def test_built_once_then_reused(one_device, tmp_path):
  path = native_conv.build(str(tmp_path))
  stamp = os.stat(path).st_mtime_ns
  assert native_conv.build(str(tmp_path)) == path
  assert os.stat(path).st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1
