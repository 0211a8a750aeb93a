"""experiments.bench_step --scale=paper: the paper's step shapes (not run here: no GPU)."""
import jax
import jax.numpy as jnp
import pytest

from configs.digits import get_config
from experiments.bench_step import paper_scale, random_batch


@pytest.mark.slow
@pytest.mark.parametrize('kind,resolution,classes', [('stylegan2', 256, 10),
                                                     ('biggan', 128, 1000)])
def test_paper_scale_is_resnet18_at_224_with_64_real_and_64_synthetic(kind, resolution,
                                                                      classes):
  config, generator, num_classes = paper_scale(get_config(), kind)
  assert (config.data.image_size, config.model.width, config.model.small_stem) == (224, 1.0,
                                                                                 False)
  assert config.batch_size == config.synth.batch_size == config.meta.val_batch_size == 64
  assert num_classes == classes and generator.kind == kind
  batch = random_batch(config, num_classes)
  assert batch['image'].shape == batch['val_image'].shape == (64, 224, 224, 3)
  z = jax.ShapeDtypeStruct((64, generator.z_dim), jnp.float32)
  y = jax.ShapeDtypeStruct((64,), jnp.int32)
  images = jax.eval_shape(lambda z, y: generator.apply(generator.variables, z, y), z, y)
  assert images.shape == (64, resolution, resolution, 3)
