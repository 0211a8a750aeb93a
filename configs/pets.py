"""Oxford-IIIT Pets (TFDS oxford_iiit_pet).

The paper's setting (§4.1). Prepare the data once, then:

  python -m mgr_jax.main --config=configs/pets.py --workdir=runs/pets \
      --config.model.pretrained=weights/resnet18_imagenet
"""
from mgr_jax.config import paper_config


def get_config():
  return paper_config('tfds:oxford_iiit_pet')
