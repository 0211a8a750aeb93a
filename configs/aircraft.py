"""FGVC-Aircraft (variants). TFDS has no builder for it: arrange the official
trainval images as <root>/<variant>/<image>.jpg and the test images as
<root>/test/<variant>/<image>.jpg (the official test split), then pass
--config.data.source=folder:<root> if not ~/data/fgvc-aircraft.

The paper's setting (§4.1). Prepare the data once, then:

  python -m mgr_jax.main --config=configs/aircraft.py --workdir=runs/aircraft \
      --config.model.pretrained=weights/resnet18_imagenet
"""
from mgr_jax.config import paper_config


def get_config():
  return paper_config('folder:~/data/fgvc-aircraft')
