"""Stanford Cars (TFDS cars196). Its download URLs are dead: get the files by hand and
prepare once with `tfds build cars196 --manual_dir=DIR --file_format=array_record`.

The paper's setting (§4.1). Prepare the data once, then:

  python -m mgr_jax.main --config=configs/cars.py --workdir=runs/cars \
      --config.model.pretrained=weights/resnet18_imagenet
"""
from mgr_jax.config import paper_config


def get_config():
  return paper_config('tfds:cars196')
