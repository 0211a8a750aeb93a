"""scikit-learn's bundled 8x8 digits, upsampled to 32x32: the CPU-sized default.

  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits
  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits10 \
      --config.data.fraction=0.1
"""
from mgr_jax.config import base_config


def get_config():
  c = base_config()
  c.num_epochs = 15
  c.learning_rate = 0.05  # From scratch, not fine-tuning: a larger step than the paper's 0.01.
  c.data.source = 'digits'
  c.data.image_size = 32
  c.data.crop_pad = 2
  c.data.flip = False  # Mirrored digits are other digits.
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.5, 0.5, 0.5)
  c.model.width = 0.25
  c.model.small_stem = True
  return c
