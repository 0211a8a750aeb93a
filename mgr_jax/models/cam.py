"""Class activation maps (Zhou et al. 2016) of the classifier, for SnapMix.

ResNet-18 ends in a global average pool and one linear head, so the head applied at every
location of g's last feature map gives a map whose spatial mean is exactly the logit:
CAM_k(i, j) = w_k · F(i, j) + b_k, mean_ij CAM_k = w_k · mean_ij F + b_k = logit_k.
"""
import jax
import jax.numpy as jnp

from mgr_jax.models.resnet import ResNet18


def class_activation_maps(model, params, batch_stats, x, labels, train: bool = True):
  """[B, h, w] CAM of class labels[b] for each normalised input x[b] (h, w: g's last map).

  `train=True`: batch statistics, as in the training step's other passes; nothing is written.
  """
  variables = {'params': params, 'batch_stats': batch_stats}
  if train:
    fmaps, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                           method=ResNet18.feature_maps)
  else:
    fmaps = model.apply(variables, x, train=False, method=ResNet18.feature_maps)
  maps = model.apply({'params': {'fc': params['fc']}}, fmaps, method=ResNet18.head)  # [B,h,w,K]
  return jnp.take_along_axis(maps, labels[:, None, None, None], axis=-1)[..., 0]


def cam_fn(model, params, batch_stats, normalize):
  """(x01, labels) -> CAMs of the current model, without gradient (SnapMix only reads them)."""
  def fn(x01, labels):
    return jax.lax.stop_gradient(
        class_activation_maps(model, params, batch_stats, normalize(x01), labels))
  return fn
