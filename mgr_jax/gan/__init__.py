"""Training a generator on D: StyleGAN2-ADA's discriminator, ADA, the G/D steps and the loop.

The trained G_ema is written as a generator directory that `mgr_jax.generators.load` opens;
nothing here is needed to *use* a generator.
"""
