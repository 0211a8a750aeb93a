"""Convolution on small feature maps as one matrix product (im2col), for XLA on CPU.

XLA's CPU convolution is slow on small spatial maps with many channels: ResNet-18's stage-4
3x3 convolutions at 2x2 (digits, 16 px) and their gradients took ~65 % of a `base` step on
our 2-core CPU (experiments/profile_step.py), ~10x slower per FLOP than the same layer at
16x16. For such layers the nine shifted slices of the padded input, concatenated on the
channel axis, times the [kh·kw·in, out] kernel, compute the same convolution as one dense
matrix product, whose forward and both gradients XLA runs fast. Which layers: stride-1
convolutions with outputs of <= 4 pixels (2x2) and strided ones with <= 16 (4x4), whose input
gradient XLA runs as a slow dilated convolution. Since the materialised operands (below), XLA's
own convolution is faster for stride-1 outputs of 3x3 and 4x4 in whole steps: base, pcr, gda,
real_cr and mgr fd 2-9 % faster than with every <= 4x4 output as im2col, no size or width
slower beyond noise (docs/performance.md, session 14).

`small_map_conv` has `lax.conv_general_dilated`'s signature and is what the ResNet passes to
`flax.linen.Conv(conv_general_dilated=...)`: parameters, names and initialisation are
untouched. It takes the matrix-product path only on the CPU backend, for a plain (undilated,
ungrouped) NHWC/HWIO convolution whose output map is small enough (`uses_im2col`);
larger maps on CPU are `lax.conv_general_dilated` with materialised operands (below), and
everything else (GPU/TPU, other convolutions) is `lax.conv_general_dilated` itself. Values
differ from XLA's convolution only by float rounding (summation order): ~1e-6 relative.

Materialised operands (CPU only, bit-for-bit the same values). XLA's CPU fusion copies a
cheap elementwise chain into every consumer: the BatchNorm + ReLU (+ residual) producing a
convolution's input was recomputed inside each of the nine im2col slices and inside the layout
transpose XLA inserts for the kernel gradient of the larger maps, and the BatchNorm backward
producing the output gradient inside the other transpose. Those transposes took 8-11 ms
(summed op time) of a 55-70 ms digits `base` step. `unfused` ends the input's chain in a
division, which XLA does not copy into several consumers, so the chain runs once into a
buffer; `unfused_cotangent` does the same for the output's gradient only. The divisor is
x·0 + 1 (exactly 1 for finite x; XLA cannot fold it, and a scalar divisor would become a
multiplication). Measured (docs/performance.md): the transposes' summed time about halves;
wall time per step 0-5 % lower (two cores overlap part of that work); steps bit-identical.

Kernel gradient in batch chunks (CPU, one device). For the larger maps XLA computes a kernel
gradient over the whole batch as one convolution (YNNPACK or Eigen) plus two layout transposes;
summed over chunks of 8 images, forward + both gradients of one layer at 64 images took
(ms, interleaved) 18.9 -> 12.4 at 32x32x16 channels, 15.1 -> 11.1 at 16x16x32, 77.0 -> 51.1 at
64x64x16, and the same (3.2, 2.6) at the digits' 16x16x16 and 8x8x32.
`batch_split_kernel_grad` gives the convolution a custom JVP whose kernel tangent is the
concatenation of per-chunk convolutions, so reverse mode (its transpose) sums per-chunk kernel
gradients, and forward-over-reverse (meta.py's exact) stays correct; values and the input
gradient are the convolution's own. Whole steps, two variants compiled in one process and
interleaved (docs/performance.md, session 16): base 13 % faster at 32 px and 26 % at 64 px,
pcr 19 % at 32 px, digits (16 px) steps within noise (0.97-1.03x); updates differ from the
unsplit step by float rounding (1e-7 relative). Since the convolutions run on Eigen (next
paragraph) only maps of >= 64x64 outputs are split (`KERNEL_GRAD_MIN_PIXELS`): unsplit base
was 0.96-0.99x at 16 px and 0.97-0.98x at 32 px, split 0.975x at 64 px (session 17).

Kernel gradient by a C++ kernel (CPU, one device, float32; session 23). For stride-1 3x3
convolutions with one pixel of padding and channels that are multiples of 16 (every stride-1
3x3 layer of a width-0.25 ResNet-18 that is not im2col), the kernel gradient is
`native_conv.kernel_grad`, which reads each image in place instead of XLA's nine-fold copy:
64x32x32x16 -> 16 forward + both gradients 4.4 ms against XLA's 8.0 and torch's 7.0 (bench_conv);
base at 32 px 0.93x torch against 1.13x with XLA's (docs/performance.md). Value and input
gradient stay XLA's; without a C++ compiler, or with MGR_JAX_NATIVE=off, the layers take the
paths above.

Convolutions on Eigen, not YNNPACK (CPU; `compiler_options`). XLA's CPU backend hands
convolutions with more than 16 channels to YNNPACK, which ran them on one core of our two (a
2-core AMD EPYC): a 64x16x16x32 3x3 forward took 3.3 ms on two cores and on one (`taskset`),
Eigen's 1.8 ms on two, torch's 1.7. The classifier's training, evaluation and inference
programs, the GAN's training step and sample grids and a loaded generator's sampling are
compiled with convolutions left out of YNNPACK's fusion types, dot products and reductions kept
on it (its sums are the accurate ones, docs/performance.md). Two programs in one process,
interleaved (session 17): base 0.86x at 16 px, 0.87x at 24, 0.85x at 32, 0.91x at 64; pcr 0.94x
(16 px), 0.95x and 1.02x (32 px); mgr fd 0.97x, exact 0.97x; a GAN iteration 0.78x. Gradients
against float64 are as accurate as with YNNPACK (both ~1e-3 relative at 32 px, from float32
ReLU-sign flips); steps differ by float rounding.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from mgr_jax.models import native_conv

MAX_OUTPUT_PIXELS = 4  # Stride 1: 2x2 and smaller as a matrix product (measured, module doc).
MAX_STRIDED_OUTPUT_PIXELS = 16  # Strided: 4x4 and smaller (XLA's input gradient is slow there).
KERNEL_GRAD_CHUNK = 8  # Larger maps: kernel gradient summed over ~8-image chunks (module doc).
KERNEL_GRAD_MIN_PIXELS = 64 * 64  # ... on maps of >= 64x64 outputs (with Eigen convolutions).
# XLA's CPU library fusions without convolutions (its default adds INDIVIDUAL_CONVOLUTION).
CPU_YNN_FUSION_TYPES = 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE'
YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'


@functools.lru_cache(maxsize=None)
def _cpu_option_accepted() -> bool:
  """Whether this jaxlib knows YNN_OPTION (an experimental option: a later one may not)."""
  try:
    jax.jit(lambda x: x + 1).lower(0.0).compile(compiler_options={YNN_OPTION: CPU_YNN_FUSION_TYPES})
  except jax.errors.JaxRuntimeError:  # "No such compile option".
    return False
  return True


def compiler_options():
  """`jax.jit(compiler_options=...)` for the classifier's and the GAN's programs and a loaded
  generator's sampling: on the CPU backend their convolutions go to Eigen, not YNNPACK (module
  docstring); None elsewhere."""
  if jax.default_backend() != 'cpu' or not _cpu_option_accepted():
    return None
  return {YNN_OPTION: CPU_YNN_FUSION_TYPES}


def kernel_grad_parts(batch: int, output_pixels: int) -> int:
  """Into how many batch parts a convolution with this batch and output size sums its kernel
  gradient on CPU (`chunk_count` for maps of >= KERNEL_GRAD_MIN_PIXELS outputs); 1 = no split."""
  return chunk_count(batch) if output_pixels >= KERNEL_GRAD_MIN_PIXELS else 1


def chunk_count(batch: int) -> int:
  """Into how many equal batch parts of >= KERNEL_GRAD_CHUNK images (as few over it as the
  batch allows) a kernel gradient is split; 1 = none. Only on one device: slicing a batch
  sharded over several could reshard it."""
  if jax.device_count() > 1:
    return 1
  parts = batch // KERNEL_GRAD_CHUNK
  while parts > 1 and batch % parts:
    parts -= 1
  return max(parts, 1)


def uses_im2col(output_pixels: int, strides) -> bool:
  """Whether a plain NHWC/HWIO convolution with this output size runs as im2col on CPU."""
  strided = any(s != 1 for s in strides)
  return output_pixels <= (MAX_STRIDED_OUTPUT_PIXELS if strided else MAX_OUTPUT_PIXELS)


def _exact_ones(x):
  """1 wherever x is finite: a divisor XLA can neither fold (x·0 is NaN for inf/NaN x) nor
  turn into a multiplication, as it would a broadcast scalar."""
  return x * 0.0 + 1.0


def unfused(x):
  """x, computed once into its own buffer by XLA on CPU (module docstring); same values."""
  return x / lax.stop_gradient(_exact_ones(x))


@jax.custom_jvp
def unfused_cotangent(x):
  """x; its cotangent (and tangent) is computed once into its own buffer (module docstring)."""
  return x


@unfused_cotangent.defjvp
def _unfused_cotangent_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return x, t / _exact_ones(x)  # Linear in t: transposes to the cotangent / 1.


def _nhwc_hwio(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == ('NHWC', 'HWIO', 'NHWC')


def im2col_conv(x, kernel, strides, padding):
  """NHWC x HWIO convolution with explicit ((top, bottom), (left, right)) padding."""
  b = x.shape[0]
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  cols = [lax.slice(x, (0, dy, dx, 0), (b, dy + sh * (ho - 1) + 1, dx + sw * (wo - 1) + 1, cin),
                    (1, sh, sw, 1)) for dy in range(kh) for dx in range(kw)]
  patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  out = jnp.dot(patches.reshape(b * ho * wo, kh * kw * cin), kernel.reshape(-1, cout))
  return out.reshape(b, ho, wo, cout)


def small_map_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`, as `im2col_conv` for small maps on CPU (module docstring)."""
  plain = (not kwargs and feature_group_count == 1 and _nhwc_hwio(dimension_numbers)
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and padding != 'SAME' and jax.default_backend() == 'cpu')
  if plain:
    padding = ((0, 0), (0, 0)) if padding == 'VALID' else padding
    kh, kw = rhs.shape[:2]
    (pt, pb), (pl, pr) = padding
    ho = (lhs.shape[1] + pt + pb - kh) // window_strides[0] + 1
    wo = (lhs.shape[2] + pl + pr - kw) // window_strides[1] + 1
    lhs = unfused(lhs)
    if uses_im2col(ho * wo, window_strides):
      return im2col_conv(lhs, rhs, window_strides, padding)
  conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides,
                           padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                           dimension_numbers=dimension_numbers,
                           feature_group_count=feature_group_count, precision=precision, **kwargs)
  if not plain:
    return conv(lhs, rhs)
  if native_conv.applies(lhs.shape, rhs.shape, jnp.result_type(lhs, rhs), window_strides,
                         padding):
    return unfused_cotangent(native_conv.conv_with_native_kernel_grad(conv)(lhs, rhs))
  parts = kernel_grad_parts(lhs.shape[0], ho * wo)
  return unfused_cotangent(batch_split_kernel_grad(conv, parts)(lhs, rhs))


def batch_split_kernel_grad(conv, parts: int):
  """conv(x, w), whose kernel tangent (so its kernel gradient) is summed over `parts` batch
  parts instead of taken over the whole batch at once; values and input gradient as conv's."""
  if parts == 1:
    return conv

  @jax.custom_jvp
  def split_conv(x, w):
    return conv(x, w)

  def _jvp(primals, tangents):
    (x, w), (tx, tw) = primals, tangents
    y = conv(x, w)
    terms = []
    if not isinstance(tx, SymbolicZero):  # E.g. the stem's input: no input gradient at all.
      terms.append(conv(tx, w))
    if not isinstance(tw, SymbolicZero):
      terms.append(jnp.concatenate([conv(xp, tw) for xp in jnp.split(x, parts)]))
    return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)

  split_conv.defjvp(_jvp, symbolic_zeros=True)

  return split_conv
