"""The 15 common corruptions × 5 severities of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019),
used by `experiments.robustness` (the paper's B.9 / Table 12 evaluates on CIFAR-10-C).

Written here, in numpy/scipy/PIL, rather than taken from the `imagecorruptions` package: that
package refuses images under 32 px (the digits runs are 16 px), needs `pkg_resources`
(setuptools < 81) and pulls OpenCV and scikit-image. Its definitions are ImageNet-C's (224 px);
we follow the same functional forms with CIFAR-10-C's severity parameters, which are the ones
of Table 12 and fit small images. Deviations, all forced by small images or missing data:
- frost: the benchmark blends photos of frost that are data files of the original release; we
  blend a procedural ice texture (a thresholded plasma fractal, bluish) with the same weights.
- motion blur (ImageMagick's in the original) is a one-sided Gaussian-weighted streak at a
  random angle, the same kernel shape; defocus's disk kernel is anti-aliased by a 3×3 Gaussian.
- elastic, zoom, fog and snow scale with the image size (the CIFAR parameters are for 32 px).

`corrupt(image_uint8, name, severity, rng)` -> float32 HWC in [0, 1], rounded to 8-bit levels
as the released benchmark images are (they are stored as uint8).
"""
import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from mgr_jax.errors import UserError

CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
               'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
               'elastic_transform', 'pixelate', 'jpeg_compression')
SEVERITIES = (1, 2, 3, 4, 5)

# CIFAR-10-C's parameters, one entry per severity.
_PARAMS = {
    'gaussian_noise': [0.04, 0.06, .08, .09, .10],  # σ
    'shot_noise': [500, 250, 100, 75, 50],  # photons per unit intensity
    'impulse_noise': [.01, .02, .03, .05, .07],  # share of salt-and-pepper values
    'defocus_blur': [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # radius, alias σ
    'glass_blur': [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # σ, δ, it.
    'motion_blur': [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],  # radius, σ (px at 32)
    'zoom_blur': [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],  # zoom factors
    # loc, scale, zoom, threshold, motion radius, motion σ, image weight
    'snow': [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    'frost': [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image, frost weight
    'fog': [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)],  # strength, fractal decay
    'brightness': [.05, .1, .15, .2, .3],  # added to HSV value
    'contrast': [.75, .5, .4, .3, 0.15],  # factor about the channel means
    # alpha, σ, affine jitter: shares of the image size
    'elastic_transform': [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    'pixelate': [0.95, 0.9, 0.85, 0.75, 0.65],  # downscale factor
    'jpeg_compression': [80, 65, 58, 50, 40],  # quality
}
_REF_SIZE = 32  # CIFAR-10-C's pixel-valued parameters are for 32 px images.


def _blur(x, sigma):
  """Gaussian blur over H, W (skimage's gaussian: mode 'nearest')."""
  return ndimage.gaussian_filter(x, (sigma, sigma, 0), mode='nearest')


def _clipped_zoom(x, factor):
  """Zoom into the centre by `factor` and crop back to the input size."""
  h = x.shape[0]
  ch = int(math.ceil(h / factor))
  top = (h - ch) // 2
  zoomed = ndimage.zoom(x[top:top + ch, top:top + ch], (factor, factor) + (1,) * (x.ndim - 2),
                        order=1)
  trim = (zoomed.shape[0] - h) // 2
  return zoomed[trim:trim + h, trim:trim + h]


def _motion_blur(x, radius, sigma, angle_deg):
  """A streak: the mean of x shifted k px along `angle`, weights exp(−k²/2σ²), k = 0..radius."""
  k = np.arange(int(round(radius)) + 1, dtype=np.float64)
  w = np.exp(-k ** 2 / (2 * sigma ** 2))
  w /= w.sum()
  dy, dx = -np.sin(np.deg2rad(angle_deg)), np.cos(np.deg2rad(angle_deg))
  out = np.zeros_like(x)
  for kk, wk in zip(k, w):
    shift = (kk * dy, kk * dx) + (0,) * (x.ndim - 2)
    out += wk * ndimage.shift(x, shift, order=1, mode='nearest')
  return out


def _plasma(size, decay, rng):
  """Diamond-square fractal noise on a torus, normalised to [0, 1], cropped to size × size."""
  n = 1 << max(1, math.ceil(math.log2(size)))
  m = np.zeros((n, n))
  wibble, step = 100.0, n
  while step >= 2:
    half = step // 2
    c = m[::step, ::step]  # square step: the centre of each square
    mean = (c + np.roll(c, -1, 0) + np.roll(c, -1, 1) + np.roll(np.roll(c, -1, 0), -1, 1)) / 4
    m[half::step, half::step] = mean + rng.uniform(-wibble, wibble, c.shape)
    # diamond step: edge midpoints from their four (already set) neighbours at ±half
    nb = (np.roll(m, half, 0) + np.roll(m, -half, 0) + np.roll(m, half, 1)
          + np.roll(m, -half, 1)) / 4
    for sl in ((slice(0, None, step), slice(half, None, step)),
               (slice(half, None, step), slice(0, None, step))):
      m[sl] = nb[sl] + rng.uniform(-wibble, wibble, m[sl].shape)
    wibble /= decay
    step = half
  m = m[:size, :size]
  m -= m.min()
  return m / max(m.max(), 1e-12)


def _affine_pullback(x, matrix2x3):
  """cv2.warpAffine(x, M) with reflect-101 border: out(p) = x(M⁻¹ p), (x, y) order."""
  full = np.vstack([matrix2x3, [0, 0, 1]])
  inv = np.linalg.inv(full)
  # ndimage works in (row, col) = (y, x): swap the axes of the inverse map.
  a = inv[:2, :2][::-1, ::-1]
  t = inv[:2, 2][::-1]
  return np.stack([ndimage.affine_transform(x[..., c], a, t, order=1, mode='mirror')
                   for c in range(x.shape[-1])], -1)


def _corrupt01(x, name, c, rng):
  """x: float64 HWC in [0, 1]; c: the severity's parameters."""
  h, w = x.shape[:2]
  scale = h / _REF_SIZE
  if name == 'gaussian_noise':
    return x + rng.normal(size=x.shape, scale=c)
  if name == 'shot_noise':
    return rng.poisson(x * c) / c
  if name == 'impulse_noise':  # salt and pepper per value, half each
    hit = rng.random(x.shape) < c
    return np.where(hit, (rng.random(x.shape) < 0.5).astype(x.dtype), x)
  if name == 'defocus_blur':
    radius, alias = c
    r = max(int(math.ceil(radius)), 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk = np.pad(disk / disk.sum(), 1)
    kernel = ndimage.gaussian_filter(disk, alias, radius=1)
    return np.stack([ndimage.convolve(x[..., ch], kernel / kernel.sum(), mode='mirror')
                     for ch in range(x.shape[-1])], -1)
  if name == 'glass_blur':
    sigma, delta, iterations = c
    x = np.floor(_blur(x, sigma) * 255) / 255  # the original rounds down to uint8 here
    for _ in range(iterations):  # swap each pixel with a random neighbour within δ
      for i in range(h - delta, delta, -1):
        for j in range(w - delta, delta, -1):
          dy, dx = rng.integers(-delta, delta, size=2)
          x[[i, i + dy], [j, j + dx]] = x[[i + dy, i], [j + dx, j]]
    return _blur(x, sigma)
  if name == 'motion_blur':
    radius, sigma = c
    return _motion_blur(x, radius * scale, sigma * scale, rng.uniform(-45, 45))
  if name == 'zoom_blur':
    return (x + sum(_clipped_zoom(x, z) for z in c)) / (len(c) + 1)
  if name == 'snow':
    loc, sd, zoom, thr, radius, sigma, keep = c
    snow = _clipped_zoom(rng.normal(loc, sd, (h, w, 1)), zoom)
    snow[snow < thr] = 0
    snow = np.clip(_motion_blur(snow, radius * scale, sigma * scale, rng.uniform(-135, -45)),
                   0, 1)
    grey = x.mean(-1, keepdims=True) if x.shape[-1] == 1 else (
        x @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return x + snow + np.rot90(snow, 2)
  if name == 'frost':
    weight_x, weight_frost = c
    ice = np.clip((_plasma(max(h, w), 1.6, rng)[:h, :w] - 0.35) * 2.0, 0, 1)[..., None]
    tint = np.array([0.85, 0.93, 1.0])[:x.shape[-1]] if x.shape[-1] == 3 else 1.0
    return weight_x * x + weight_frost * ice * tint
  if name == 'fog':
    strength, decay = c
    peak = x.max()
    x = x + strength * _plasma(max(h, w), decay, rng)[:h, :w, None]
    return x * peak / (peak + strength)
  if name == 'brightness':
    # HSV value + c at fixed hue and saturation: the channels scale by v'/v (grey if v = 0).
    v = x.max(-1, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * v_new / np.maximum(v, 1e-12), v_new)
  if name == 'contrast':
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means
  if name == 'elastic_transform':
    alpha, sigma, jitter = (v * h for v in c)
    centre, sq = np.array([h, w]) // 2, min(h, w) // 3
    pts1 = np.float64([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
    pts2 = pts1 + rng.uniform(-jitter, jitter, pts1.shape)
    src = np.hstack([pts1, np.ones((3, 1))])
    x = _affine_pullback(x, np.linalg.solve(src, pts2).T)
    if sigma > 0:
      field = [ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode='reflect',
                                       truncate=3) * alpha for _ in range(2)]
    else:
      field = [np.zeros((h, w))] * 2
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    coords = [yy + field[1], xx + field[0]]
    return np.stack([ndimage.map_coordinates(x[..., ch], coords, order=1, mode='reflect')
                     for ch in range(x.shape[-1])], -1)
  if name in ('pixelate', 'jpeg_compression'):
    img = Image.fromarray(np.round(x * 255).astype(np.uint8).squeeze(-1) if x.shape[-1] == 1
                          else np.round(x * 255).astype(np.uint8))
    if name == 'pixelate':
      small = (max(1, int(w * c)), max(1, int(h * c)))
      img = img.resize(small, Image.BOX).resize((w, h), Image.BOX)
    else:
      buf = io.BytesIO()
      img.save(buf, 'JPEG', quality=c)
      img = Image.open(io.BytesIO(buf.getvalue()))
    out = np.asarray(img, np.float64) / 255
    return out.reshape(x.shape)
  raise AssertionError(name)


def check(name: str, severity: int) -> None:
  if name not in CORRUPTIONS:
    raise UserError(f'Unknown corruption {name!r}. Choose one of: {", ".join(CORRUPTIONS)}.')
  if severity not in SEVERITIES:
    raise UserError(f'Corruption severity {severity!r} must be one of 1, 2, 3, 4, 5.')


def corrupt(image_uint8, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
  """One HWC uint8 image -> float32 HWC in [0, 1] on 8-bit levels, corrupted."""
  check(name, severity)
  image = np.asarray(image_uint8)
  if image.dtype != np.uint8 or image.ndim != 3:
    raise UserError(f'corrupt() takes one uint8 HWC image, got {image.dtype} {image.shape}.')
  out = _corrupt01(image.astype(np.float64) / 255.0, name, _PARAMS[name][severity - 1], rng)
  return (np.round(np.clip(out, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)
