// Kernel gradient of a 3x3, stride-1, pad-1 NHWC/HWIO convolution for XLA on CPU (XLA FFI).
//
//   dw[kh][kw][ci][co] = sum over n, h, w of x[n, h+kh-1, w+kw-1, ci] * dy[n, h, w, co]
//
// XLA's CPU backend computes this as a convolution with the batch as its contraction and
// dy as a 32x32 "kernel", whose packing copies x nine times (docs/performance.md). Here each
// image is read in place: for every tap and 16x16 block of (ci, co), sixteen 16-wide
// accumulators take one product per input channel and pixel. Channels must be multiples of 16
// (mgr_jax/models/native_conv.py checks). The batch is cut into chunks of kChunk images,
// shared out over XLA's intra-op thread pool; the chunks' partial sums are added in chunk
// order, so the result does not depend on the number of threads or their timing.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBlock = 16;  // Channels per accumulator block: one AVX-512 vector of floats.
constexpr int kChunk = 8;   // Images per task.

// GCC/Clang vector of 16 floats (one AVX-512 register, or two AVX2 ones); unaligned access.
typedef float Vec16 __attribute__((vector_size(64), aligned(4)));

Vec16 Load(const float* p) { Vec16 v; std::memcpy(&v, p, sizeof(v)); return v; }
void Store(float* p, Vec16 v) { std::memcpy(p, &v, sizeof(v)); }

// dw (9*C*CO floats, zeroed by the caller) += the kernel gradient over images [n0, n1).
void AccumulateImages(const float* x, const float* dy, float* dw, int64_t n0, int64_t n1,
                      int64_t H, int64_t W, int64_t C, int64_t CO) {
  for (int64_t n = n0; n < n1; ++n) {
    for (int kh = 0; kh < 3; ++kh) {
      // Output rows whose input row h + kh - 1 lies inside the image (the rest is padding).
      const int64_t h0 = std::max<int64_t>(0, 1 - kh), h1 = std::min<int64_t>(H, H + 1 - kh);
      for (int kw = 0; kw < 3; ++kw) {
        const int64_t w0 = std::max<int64_t>(0, 1 - kw), w1 = std::min<int64_t>(W, W + 1 - kw);
        for (int64_t cb = 0; cb < C; cb += kBlock) {
          for (int64_t ob = 0; ob < CO; ob += kBlock) {
            Vec16 acc[kBlock];
            for (int i = 0; i < kBlock; ++i) acc[i] = Vec16{};
            for (int64_t h = h0; h < h1; ++h) {
              const float* x_row = x + ((n * H + h + kh - 1) * W + (kw - 1)) * C + cb;
              const float* dy_row = dy + (n * H + h) * W * CO + ob;
              for (int64_t w = w0; w < w1; ++w) {
                const float* xs = x_row + w * C;
                const Vec16 d = Load(dy_row + w * CO);
#pragma GCC unroll 16
                for (int ci = 0; ci < kBlock; ++ci) acc[ci] += xs[ci] * d;
              }
            }
            float* out = dw + ((kh * 3 + kw) * C + cb) * CO + ob;
            for (int ci = 0; ci < kBlock; ++ci) Store(out + ci * CO, Load(out + ci * CO) + acc[ci]);
          }
        }
      }
    }
  }
}

// Chunks handed out to whichever thread asks next; shared with tasks that may start late.
struct Chunks {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
};

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw) {
  const auto xd = x.dimensions();
  const auto dd = dy.dimensions();
  if (xd.size() != 4 || dd.size() != 4 || xd[0] != dd[0] || xd[1] != dd[1] ||
      xd[2] != dd[2] || xd[3] % kBlock || dd[3] % kBlock) {
    return ffi::Error::InvalidArgument(
        "conv3x3 kernel gradient: x and dy must be [N, H, W, C] with equal N, H, W and "
        "channels that are multiples of 16");
  }
  const int64_t N = xd[0], H = xd[1], W = xd[2], C = xd[3], CO = dd[3];
  const int64_t size = 9 * C * CO;
  const int64_t num_chunks = std::max<int64_t>(1, (N + kChunk - 1) / kChunk);
  std::vector<float> partial(num_chunks * size, 0.0f);
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  float* pp = partial.data();
  auto chunks = std::make_shared<Chunks>();
  // Runs chunks until none is left. A pool task that starts after the call has returned finds
  // none and touches nothing but `chunks`, which it co-owns.
  auto drain = [chunks, xp, dyp, pp, N, H, W, C, CO, size, num_chunks]() {
    for (int64_t i; (i = chunks->next.fetch_add(1)) < num_chunks;) {
      AccumulateImages(xp, dyp, pp + i * size, N * i / num_chunks, N * (i + 1) / num_chunks,
                       H, W, C, CO);
      chunks->finished.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(num_chunks, std::max<int64_t>(pool.num_threads(), 1)) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    auto task = drain;
    pool.Schedule(std::move(task));
  }
  drain();
  while (chunks->finished.load() < num_chunks) std::this_thread::yield();  // Chunks in flight.
  float* out = dw->typed_data();
  std::memcpy(out, pp, size * sizeof(float));
  for (int64_t i = 1; i < num_chunks; ++i) {
    const float* part = pp + i * size;
    for (int64_t j = 0; j < size; ++j) out[j] += part[j];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3KernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
