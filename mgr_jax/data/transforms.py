"""Resize and normalisation shared by the data loaders and `load_classifier`.

Training images are resized once at load time with `resize_image` and stored as uint8; a
loaded classifier applies the very same function (and 8-bit rounding) to new images, so
inference sees exactly what training saw.
"""
import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_image(image01: np.ndarray, size: int) -> np.ndarray:
  """HWC float image in [0, 1] -> [size, size, C] float32 (PIL bilinear, per channel)."""
  image01 = np.asarray(image01, np.float32)
  if image01.shape[0] == size and image01.shape[1] == size:
    return image01
  channels = [np.asarray(Image.fromarray(image01[..., c], mode='F').resize(
      (size, size), Image.BILINEAR)) for c in range(image01.shape[-1])]
  return np.stack(channels, axis=-1)


def to_uint8(image01: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(image01) * 255.0), 0, 255).astype(np.uint8)


def normalize(images01, mean, std):
  """(x - mean) / std per channel; works on numpy and jax arrays."""
  return (images01 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
