"""ImageNet (ILSVRC-2012), ResNet-18 from scratch at 224 px, a pretrained BigGAN as G: the
paper's appendix B.5 (top-1: base 68.10, GDA 64.74, MGR 70.55).

The paper gives no recipe for this run. Training follows torchvision's ResNet reference
(SGD lr 0.1, momentum 0.9 without Nesterov, lr x 0.1 every 30 epochs, 90 epochs, global
batch 256, weight decay 1e-4: the paper states no weight decay, 1e-4 is torchvision's).
Differences from torchvision kept on purpose: images are resized to 224 x 224 (no aspect-
preserving crop) with pad-and-crop (16 px) + flip, as every dataset here, instead of
RandomResizedCrop; D_val is 10 % of the train split (§4.1) and ImageNet's validation split
is the test set. λ = 0.1: a net trained from scratch has unnormalised features (as for
digits); search it on D_val (`python -m experiments.lambda_search`) for a real run.

1. Data, once. Either TFDS array_record, on a machine with TensorFlow (the two tars from
   image-net.org in MANUAL_DIR):

     pip install tensorflow tensorflow-datasets
     tfds build imagenet2012 --file_format=array_record --manual_dir=MANUAL_DIR \\
         --data_dir=DATA_DIR

   then write the label index once (one pass over the records; every process reads it
   instead of the 150 GB), and copy DATA_DIR to a bucket for a pod, which every worker
   mounts with gcsfuse at /gcs/BUCKET (paths are read with the local file API):

     python -c "from configs.imagenet import get_config; from mgr_jax.data import stream; \\
         c = get_config().data; c.data_dir = 'DATA_DIR'; stream.open_splits(c)"
     gsutil -m cp -r DATA_DIR gs://BUCKET/tensorflow_datasets

   or an ImageNet-layout folder: ROOT/train/<wnid>/*.JPEG and ROOT/test/<wnid>/*.JPEG (the
   50 000 validation images sorted into their wnid folders), then
   --config.data.source=folder:ROOT.

2. G, once: the BigGAN-deep-128 of pytorch-pretrained-BigGAN, converted (nothing executed):

     curl -LO https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-128-pytorch_model.bin
     curl -LO https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-128-config.json
     python -m converters.biggan --src biggan-deep-128-pytorch_model.bin \\
         --config biggan-deep-128-config.json --out weights/biggan_deep_128

3. One host (all its GPUs; docs/scaling.md), each method in its own workdir:

     python -m mgr_jax.main --config=configs/imagenet.py --workdir=runs/imagenet_mgr \\
         --config.data.data_dir=DATA_DIR
     python -m mgr_jax.main --config=configs/imagenet.py --workdir=runs/imagenet_base \\
         --config.method=base --config.data.data_dir=DATA_DIR

4. A TPU pod slice: the same command on every worker, with --config.distributed=True, the
   data and the workdir on the bucket mounted at /gcs/BUCKET (docs/scaling.md):

     gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd mgr-jax && \\
         gcsfuse --implicit-dirs BUCKET /gcs/BUCKET && \\
         python -m mgr_jax.main --config=configs/imagenet.py --config.distributed=True \\
         --config.method=gda --workdir=/gcs/BUCKET/runs/imagenet_gda \\
         --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets"
"""
from mgr_jax.config import base_config


def get_config():
  c = base_config()
  c.method = 'mgr'  # base | gda | mgr are the rows of B.5.
  c.num_epochs = 90
  c.min_train_steps = 0
  c.batch_size = 256  # Global: split over every device of every process.
  c.eval_batch_size = 256
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4  # torchvision's; the paper gives none.
  c.lr_decay_at = (30 / 90, 60 / 90)
  c.lr_decay_factor = 0.1

  c.data.source = 'tfds:imagenet2012'
  c.data.train_split = 'train'
  c.data.test_split = 'validation'
  c.data.loader = 'grain'  # 1.28 M images: streamed, each process reads its share.
  c.data.workers = 8  # Decoding processes per training process; fit the host's cores.
  c.data.image_size = 224
  c.data.crop_pad = 16
  c.data.flip = True

  c.model.width = 1.0
  c.model.small_stem = False
  c.model.pretrained = ''  # From scratch (B.5).

  c.synth.lam = 0.1
  c.synth.batch_size = 256  # As many synthetic as real images, as the paper's 64 + 64.
  c.meta.val_batch_size = 256
  c.generator.checkpoint = 'weights/biggan_deep_128'  # Step 2; 128 px, resized to 224.
  return c
