"""Describable Textures (TFDS dtd, split 1; its validation split is not used).

The paper's setting (§4.1). Prepare the data once, then:

  python -m mgr_jax.main --config=configs/dtd.py --workdir=runs/dtd \
      --config.model.pretrained=weights/resnet18_imagenet
"""
from mgr_jax.config import paper_config


def get_config():
  return paper_config('tfds:dtd')
