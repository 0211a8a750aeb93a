"""CUB-200-2011 birds (TFDS caltech_birds2011).

The paper's setting (§4.1). Prepare the data once, then:

  python -m mgr_jax.main --config=configs/birds.py --workdir=runs/birds \
      --config.model.pretrained=weights/resnet18_imagenet
"""
from mgr_jax.config import paper_config


def get_config():
  return paper_config('tfds:caltech_birds2011')
