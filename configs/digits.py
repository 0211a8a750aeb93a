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
  # The generator trained on D when no generator.checkpoint is given: a small conditional
  # StyleGAN2-ADA at 16 px (the digits are 8x8 at heart), a few minutes on 2 CPU cores.
  g = c.generator
  g.resolution = 16
  g.z_dim = 64
  g.w_dim = 64
  g.mapping_layers = 2
  g.d_mapping_layers = 2
  g.channel_base = 1024
  g.channel_max = 32
  g.num_steps = 3000
  g.batch_size = 32
  g.g_lr = 0.0025
  g.d_lr = 0.0025
  g.r1_gamma = 0.01
  g.style_mixing_prob = 0.0
  g.ema_kimg = 2.0
  g.ada_kimg = 100.0
  g.log_every = 100
  g.sample_every = 500
  g.checkpoint_every = 500
  return c
