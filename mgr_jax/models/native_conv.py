"""3x3 convolutions whose kernel gradient runs as a small C++ kernel on CPU (XLA FFI).

What is left between our classifier step and PyTorch's on CPU is the kernel gradient of the
3x3 stride-1 convolutions (docs/performance.md, sessions 19-22): XLA computes it as a
convolution over the batch whose packing copies the input nine times, 5.5 ms for a
64x32x32x16 -> 16 layer against torch's (oneDNN) 1.5 on our 2-core CPU. The kernel in
`conv3x3_kernel_grad.cc` reads each image in place and takes 1.3 ms there (session 23; every
ResNet shape measured was faster than XLA's, docs/performance.md).

`conv_with_native_kernel_grad(conv)` is `conv` (XLA's own convolution, forward and input
gradient) whose kernel gradient is `kernel_grad`, the C++ kernel. It supports what training
and the hypergradients use: reverse mode, and forward mode over it (meta.py's 'exact'
linearises the gradient; `kernel_grad` is bilinear, so its derivative is two more calls).
Forward mode straight through the convolution (`jax.jvp` of a forward pass) and
reverse-over-reverse are not supported: set ``MGR_JAX_NATIVE=off`` for those.

The kernel is compiled once per machine with the C++ compiler (``$CXX``, default ``g++``) into
``$XDG_CACHE_HOME/mgr_jax/native`` (default ``~/.cache/mgr_jax/native``), keyed by its source,
the flags, the compiler, the CPU and jaxlib; about a second. Without a compiler, or if the
build fails, a warning says so and every convolution stays XLA's: the same values to float32
rounding, slower. ``MGR_JAX_NATIVE=off`` turns the kernel off.
"""
import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from typing import Optional

import jax
import jax.numpy as jnp

from mgr_jax import compile_cache

ENV = 'MGR_JAX_NATIVE'
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'conv3x3_kernel_grad.cc')
TARGET = 'mgr_jax_conv3x3_kernel_grad'
SYMBOL = 'Conv3x3KernelGrad'
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC')
CACHE_NAME = 'native'  # The library's directory under compile_cache.user_cache_dir.
CHANNEL_BLOCK = 16  # The kernel's channel counts must be multiples of this.


def enabled_by_environment() -> bool:
  return os.environ.get(ENV, '').strip().lower() not in ('off', '0', 'false', 'no')


def _cpu_description() -> str:
  """What -march=native depends on: the CPU's feature flags (Linux), else its name."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def build(cache_dir: Optional[str] = None) -> str:
  """Path of the compiled kernel library, compiling it first if this machine has none yet.

  Raises RuntimeError (with the compiler's message) when there is no compiler or it fails.
  """
  cxx = os.environ.get('CXX', 'g++')
  if shutil.which(cxx) is None:
    raise RuntimeError(f'no C++ compiler {cxx!r} on PATH (set $CXX to one)')
  version = subprocess.run([cxx, '--version'], capture_output=True, text=True).stdout
  with open(SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(b'\0'.join(
      [source, ' '.join(FLAGS).encode(), version.encode(), _cpu_description().encode(),
       importlib.metadata.version('jaxlib').encode()])).hexdigest()[:16]
  cache_dir = cache_dir or compile_cache.user_cache_dir(CACHE_NAME)
  path = os.path.join(cache_dir, f'{TARGET}-{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=cache_dir)  # Then renamed: readers never
  os.close(fd)  # see a half-written library, and parallel builds are harmless.
  cmd = [cxx, *FLAGS, '-I', jax.ffi.include_dir(), SOURCE, '-o', tmp]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    os.unlink(tmp)
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-2000:]}')
  os.replace(tmp, path)
  return path


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the kernel is compiled and registered with XLA (CPU); warns once when it cannot
  be, and then every convolution stays XLA's."""
  if not enabled_by_environment():
    return False
  try:
    library = ctypes.cdll.LoadLibrary(build())
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, SYMBOL)),
                                platform='cpu')
  except (RuntimeError, OSError) as e:
    warnings.warn(f'The C++ kernel for 3x3 convolution kernel gradients is not available, so '
                  f'XLA computes them (slower on CPU, same values): {e}. It is built with $CXX '
                  f'(default g++) into {compile_cache.user_cache_dir(CACHE_NAME)} '
                  f'($XDG_CACHE_HOME moves it); set {ENV}=off to silence this.')
    return False
  return True


def applies(x_shape, w_shape, dtype, window_strides, padding) -> bool:
  """Whether a plain NHWC/HWIO convolution takes the kernel: CPU, one device, float32, 3x3,
  stride 1, one pixel of padding on every side, channels multiples of 16, kernel built."""
  return (jax.default_backend() == 'cpu' and jax.device_count() == 1
          and dtype == jnp.float32 and len(x_shape) == 4 and tuple(w_shape[:2]) == (3, 3)
          and tuple(window_strides) == (1, 1)
          and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
          and x_shape[3] % CHANNEL_BLOCK == 0 and w_shape[3] % CHANNEL_BLOCK == 0
          and available())


@jax.custom_jvp
def kernel_grad(x, dy):
  """dw[kh, kw, ci, co] = sum_{n,h,w} x[n, h+kh-1, w+kw-1, ci] dy[n, h, w, co] (zero padding):
  the kernel gradient of a 3x3, stride-1, pad-1 convolution, by the C++ kernel."""
  out = jax.ShapeDtypeStruct((3, 3, x.shape[3], dy.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(TARGET, out, vmap_method='sequential')(x, dy)


@kernel_grad.defjvp
def _kernel_grad_jvp(primals, tangents):
  (x, dy), (tx, tdy) = primals, tangents
  return kernel_grad(x, dy), kernel_grad(tx, dy) + kernel_grad(x, tdy)  # Bilinear.


def conv_with_native_kernel_grad(conv):
  """conv(x, w) (a 3x3, stride-1, pad-1 NHWC/HWIO convolution) whose kernel gradient is
  `kernel_grad`; value and input gradient are conv's own."""

  @jax.custom_vjp
  def native_conv(x, w):
    return conv(x, w)

  def forward(x, w):
    return conv(x, w), (x, w)

  def backward(residuals, dy):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x_: conv(x_, w), x)
    return input_vjp(dy)[0], kernel_grad(x, dy)

  native_conv.defvjp(forward, backward)
  return native_conv
