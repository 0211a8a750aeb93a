"""scikit-learn's bundled 8x8 digits, upsampled to 16x16: the CPU-sized default.

MGR by default: the first run trains a conditional StyleGAN2-ADA on D (a few minutes on two
CPU cores) into <workdir>/generator and reuses it afterwards.

  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits
  python -m experiments.compare --config=configs/digits.py --workdir=runs/digits_cmp \
      --methods=base,mgr
  python -m mgr_jax.main --config=configs/digits.py --workdir=runs/digits10 \
      --config.data.fraction=0.1
"""
from mgr_jax.config import base_config


def get_config():
  c = base_config()
  c.method = 'mgr'
  c.num_epochs = 12
  c.learning_rate = 0.05  # From scratch, not fine-tuning: a larger step than the paper's 0.01.
  c.data.source = 'digits'
  c.data.image_size = 16  # The generator's resolution: no resize of x_p.
  c.data.crop_pad = 2
  c.data.flip = False  # Mirrored digits are other digits.
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.5, 0.5, 0.5)
  c.model.width = 0.25
  c.model.small_stem = True
  # A net trained from scratch has unnormalised features: at λ = 1 the PCR term (‖Δg‖² summed
  # over features) outweighs the cross-entropy and training stalls; λ = 0.1 trains well.
  c.synth.lam = 0.1
  c.synth.batch_size = 32  # 32 + 32 synthetic per step keeps an MGR epoch ~12 s on 2 cores.
  c.meta.val_batch_size = 32
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
