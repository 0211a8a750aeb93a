"""Data sources: `digits`, `tfds:<name>`, `folder:<path>`. Each returns a `RawData`."""
import concurrent.futures
import dataclasses
import os
import sys
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from mgr_jax.data.protocol import RawData
from mgr_jax.data.transforms import resize_image, to_uint8
from mgr_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def load_source(cfg) -> RawData:
  source = cfg.source
  if source == 'digits':
    return load_digits(cfg.image_size)
  if source.startswith('tfds:'):
    return load_tfds(source[len('tfds:'):], cfg)
  if source.startswith('folder:'):
    return load_folder(source[len('folder:'):], cfg.image_size)
  raise UserError(
      f'Unknown data.source {source!r}. Use `digits` (the embedded default), '
      '`tfds:<name>` for a prepared TensorFlow Datasets dataset (e.g. tfds:oxford_flowers102) '
      'or `folder:<path>` for a folder with one sub-folder of images per class.')


def _gray_to_rgb_uint8(images01, size):
  return np.stack([to_uint8(np.repeat(resize_image(im[..., None], size), 3, axis=-1))
                   for im in images01])


def load_digits(image_size: int) -> RawData:
  """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), as RGB."""
  from sklearn.datasets import load_digits as sk_digits
  bunch = sk_digits()
  images = _gray_to_rgb_uint8(bunch.images.astype(np.float32) / 16.0, image_size)
  return RawData(images, bunch.target.astype(np.int32), None, None,
                 tuple(str(n) for n in bunch.target_names))


# ---------------------------------------------------------------------------------- folder

# Grey modes deeper than 8 bits: PIL's convert('RGB') clips them to 255 (a white image).
_DEEP_GREY_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F')


def decode_image(im: Image.Image) -> np.ndarray:
  """HxWx3 float32 in [0, 1] from a PIL image of any mode.

  16-bit and 32-bit grey (I;16*, I, F) are scaled by the range of their values: such files
  often use part of their nominal range (12-bit sensors in 16-bit files) and I/F have no
  nominal white at all. Every other mode (1, L, P, RGB, RGBA, LA, PA, CMYK, YCbCr, ...)
  converts to RGB as PIL does; a mode PIL cannot convert raises ValueError.
  """
  if im.mode in _DEEP_GREY_MODES:
    grey = np.asarray(im).astype(np.float64)
    if not np.all(np.isfinite(grey)):
      raise ValueError(f'mode {im.mode} image holds NaN or infinite values')
    lo, hi = float(grey.min()), float(grey.max())
    grey = (grey - lo) / (hi - lo) if hi > lo else np.zeros_like(grey)
    return np.repeat(grey.astype(np.float32)[..., None], 3, axis=-1)
  if im.mode in ('La', 'RGBa'):  # Premultiplied alpha: PIL converts these only via LA/RGBA.
    im = im.convert('RGBA')
  return np.asarray(im.convert('RGB'), np.float32) / 255.0


def read_image(path: str, size: int) -> np.ndarray:
  try:
    with Image.open(path) as im:
      rgb = decode_image(im)
  except Image.DecompressionBombError as e:  # Not an OSError: PIL's guard on pixel count.
    raise UserError(f'Refusing image {path!r}: {e} Such a file is a decompression bomb (a '
                    'small file that expands to gigabytes) or a huge scan; remove it, or '
                    'downscale it if it is genuine, then run again.') from e
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise UserError(f'Cannot read image {path!r} ({type(e).__name__}: {e}). Remove or replace '
                    'the file (it may be corrupt or not an image), then run again.') from e
  return to_uint8(resize_image(rgb, size))


def _class_folders(root: str):
  return sorted(d for d in os.listdir(root)
                if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))


def _list_images(root: str, class_names):
  paths, labels = [], []
  for label, name in enumerate(class_names):
    folder = os.path.join(root, name)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)) \
        if os.path.isdir(folder) else []
    if not files:
      raise UserError(f'Class folder {folder!r} has no images (looked for '
                      f'{", ".join(IMAGE_EXTENSIONS)}). Put the images of class {name!r} '
                      'there, or remove the folder.')
    paths += [os.path.join(folder, f) for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32)


def _read_all(paths, size):
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    images = np.stack(list(pool.map(lambda p: read_image(p, size), paths)))
  flat = images.reshape(len(images), -1)
  constant = [p for p, im in zip(paths, flat) if im.min() == im.max()]
  if constant:  # Trains on, but a blank image is usually a broken file: say so.
    print(f'Warning: {len(constant)} of {len(paths)} images are a single colour, e.g. '
          f'{", ".join(constant[:3])}. Check that these files are what you meant to train on.',
          file=sys.stderr)
  return images


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """A class-per-folder dataset as paths; `test_paths` is None without a test folder."""
  paths: list
  labels: np.ndarray
  test_paths: Optional[list]
  test_labels: Optional[np.ndarray]
  class_names: tuple


def list_folder(path: str) -> FolderListing:
  """<path>/<class>/*.jpg, optionally <path>/test/<class>/* (then also <path>/train/<class>)."""
  root = os.path.expanduser(path)
  if not os.path.isdir(root):
    raise UserError(f'Data folder {root!r} does not exist. Pass data.source=folder:<path> with '
                    'a folder that holds one sub-folder of images per class.')
  test_root = os.path.join(root, 'test')
  has_test = os.path.isdir(test_root)
  train_root = os.path.join(root, 'train') if has_test and os.path.isdir(
      os.path.join(root, 'train')) else root
  class_names = [c for c in _class_folders(train_root) if not (has_test and c == 'test')]
  if not class_names:
    raise UserError(f'Data folder {train_root!r} has no class sub-folders. Arrange the images as '
                    '<folder>/<class name>/<image>, one sub-folder per class.')
  if len(class_names) < 2:  # One class: every prediction is right, accuracy means nothing.
    raise UserError(f'Data folder {train_root!r} has a single class folder ({class_names[0]!r}); '
                    'a classifier needs at least two. Put each class in its own sub-folder '
                    '(<folder>/<class name>/<image>).')
  paths, labels = _list_images(train_root, class_names)
  test_paths = test_labels = None
  if has_test:
    extra = sorted(set(_class_folders(test_root)) - set(class_names))
    if extra:
      raise UserError(f'{test_root!r} has class folders that the training set lacks: {extra}. '
                      'Use the same class sub-folder names in train and test.')
    test_classes = [c for c in class_names if os.path.isdir(os.path.join(test_root, c))]
    test_paths, test_rel = _list_images(test_root, test_classes)
    test_labels = np.asarray([class_names.index(test_classes[i]) for i in test_rel], np.int32)
  return FolderListing(paths, labels, test_paths, test_labels, tuple(class_names))


def load_folder(path: str, image_size: int) -> RawData:
  """Every image of `list_folder(path)` decoded into memory."""
  listing = list_folder(path)
  test_images = (None if listing.test_paths is None
                 else _read_all(listing.test_paths, image_size))
  return RawData(_read_all(listing.paths, image_size), listing.labels, test_images,
                 listing.test_labels, listing.class_names)


# ------------------------------------------------------------------------------------ tfds

def _tfds_not_prepared(name, cfg, err):
  return UserError(
      f'TFDS dataset {name!r} is not prepared in data_dir={cfg.data_dir or "~/tensorflow_datasets"} '
      f'({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}). Prepare it once, '
      f'on a machine with TensorFlow: `pip install tensorflow tensorflow-datasets && tfds build '
      f'{name} --file_format=array_record --data_dir=DATA_DIR` (add --manual_dir=DIR for datasets '
      f'whose files must be downloaded by hand, e.g. cars196; data.manual_dir={cfg.manual_dir!r}), '
      'then pass '
      '--config.data.data_dir=DATA_DIR. Reading prepared array_record data needs no TensorFlow.')


def tfds_image(image, size: int) -> np.ndarray:
  """A decoded TFDS image (HxW, HxWx1 or HxWx3 uint8) -> [size, size, 3] uint8."""
  img = np.asarray(image)
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  return to_uint8(resize_image(img.astype(np.float32) / 255.0, size))


def _tfds_split(builder, split, size):
  """All (image, label) pairs of one split, decoded without TensorFlow."""
  source = builder.as_data_source(split=split)
  n = len(source)

  def read(i):
    ex = source[i]
    return tfds_image(ex['image'], size), int(ex['label'])

  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    pairs = list(pool.map(read, range(n)))
  return np.stack([p[0] for p in pairs]), np.asarray([p[1] for p in pairs], np.int32)


def tfds_builder(name: str, cfg):
  """The builder of a prepared TFDS dataset; UserError when unknown or not prepared."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=cfg.data_dir or None)
    if not builder.is_prepared():
      raise FileNotFoundError('no prepared files found')
  except Exception as e:  # tfds raises many types here (DatasetNotFoundError, Assertion...).
    if isinstance(e, UserError):
      raise
    if 'not found' in str(e).lower() and 'DatasetNotFound' in type(e).__name__:
      raise UserError(f'TFDS has no dataset named {name!r}. Check the name (e.g. cars196, '
                      'oxford_flowers102, oxford_iiit_pet, dtd, caltech_birds2011, cifar10).') from e
    raise _tfds_not_prepared(name, cfg, e) from e
  return builder


def load_tfds(name: str, cfg) -> RawData:
  builder = tfds_builder(name, cfg)
  splits = builder.info.splits
  try:
    train_images, train_labels = _tfds_split(builder, cfg.train_split, cfg.image_size)
    test = (_tfds_split(builder, cfg.test_split, cfg.image_size)
            if cfg.test_split in splits else (None, None))
  except Exception as e:
    raise _tfds_not_prepared(name, cfg, e) from e
  names = builder.info.features['label'].names
  return RawData(train_images, train_labels, test[0], test[1], tuple(names))
