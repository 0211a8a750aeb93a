"""Input throughput of the grain loader (data.loader=grain) for a folder source, images/s.

  python -m experiments.bench_input [--folder=ROOT] [--images=512] [--size=224]
      [--workers=0,1,2] [--batch_size=64] [--epochs=2]

Without --folder, writes --images random JPEGs of ImageNet's typical size (500 x 375,
quality 90) into a temporary folder of 8 classes. Each worker count reads `--epochs`
epochs of D (decode + resize to --size in the workers, batches assembled in this process,
nothing sent to a device); the first epoch includes starting the workers.
"""
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from ml_collections import ConfigDict
from PIL import Image

from mgr_jax.data import stream

FLAGS = flags.FLAGS
flags.DEFINE_string('folder', '', 'An image folder (<root>/<class>/*.jpg); default: generated.')
flags.DEFINE_integer('images', 512, 'Images to generate without --folder.')
flags.DEFINE_integer('size', 224, 'data.image_size.')
flags.DEFINE_list('workers', ['0', '1', '2'], 'grain worker counts to measure.')
flags.DEFINE_integer('batch_size', 64, 'Batch size (one process).')
flags.DEFINE_integer('epochs', 2, 'Epochs per worker count.')


def write_jpegs(root: str, n: int, classes: int = 8, seed: int = 0):
  """n smooth random 500 x 375 JPEGs (noise would decode slower than photos do)."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    folder = os.path.join(root, f'class{i % classes}')
    os.makedirs(folder, exist_ok=True)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(
        os.path.join(folder, f'{i}.jpg'), quality=90)


def images_per_second(cfg, workers: int, batch_size: int, epochs: int):
  """(images/s over all epochs, images/s of the last epoch)."""
  splits = stream.open_splits(cfg)
  seen, start, last = 0, time.perf_counter(), 0.0
  for epoch in range(epochs):
    epoch_start, epoch_seen = time.perf_counter(), 0
    make = stream.TrainBatches(splits.train, batch_size, seed=0, epoch=epoch)
    for batch in stream.iterate(make, workers):
      epoch_seen += len(batch['label'])
    seen += epoch_seen
    last = epoch_seen / (time.perf_counter() - epoch_start)
  return seen / (time.perf_counter() - start), last


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    root = FLAGS.folder
    if not root:
      root = tmp
      write_jpegs(root, FLAGS.images)
    cfg = ConfigDict(dict(source='folder:' + root, image_size=FLAGS.size, fraction=1.0, seed=0,
                          val_ratio=0.1, test_ratio=0.2))
    print(f'folder {root}: {os.cpu_count()} CPUs, {FLAGS.size} px, batch {FLAGS.batch_size}')
    print(f'{"workers":>8} {"images/s (all)":>15} {"images/s (last epoch)":>22}')
    for workers in map(int, FLAGS.workers):
      overall, last = images_per_second(cfg, workers, FLAGS.batch_size, FLAGS.epochs)
      print(f'{workers:>8} {overall:>15.1f} {last:>22.1f}', flush=True)


if __name__ == '__main__':
  app.run(main)
