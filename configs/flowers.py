"""Oxford Flowers-102 (TFDS oxford_flowers102; train split, 10 images a class).

The paper's setting (§4.1). Prepare the data once, then:

  python -m mgr_jax.main --config=configs/flowers.py --workdir=runs/flowers \
      --config.model.pretrained=weights/resnet18_imagenet
"""
from mgr_jax.config import paper_config


def get_config():
  return paper_config('tfds:oxford_flowers102')
