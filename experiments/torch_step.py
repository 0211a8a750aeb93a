"""The classifier steps of base, pcr and mgr (fd / exact) in PyTorch eager: the reference that
`experiments.bench_torch` times next to ours, and `tests/test_torch_step.py` checks equal to it.

Same math as mgr_jax/methods (one step, same shapes, same weights when loaded from the JAX
state):
- classifier: ResNet-18 as torchvision builds it (its `BasicBlock` and `ResNet._make_layer`),
  with our width multiplier and the 3x3/1 small stem (mgr_jax/models/resnet.py);
  Nesterov SGD with weight decay (torch.optim.SGD = optax add_decayed_weights + sgd);
- generator: pytorch-pretrained-biggan's BigGAN, spectral norm folded and conv_to_rgb cut to
  its 3 used channels (what converters/biggan.py does; mgr_jax.generators.biggan is the port);
- T: a port of mgr_jax/randaugment.py's RandAugment (all 14 ops, per-sample choice, the same
  compute-and-select formulation), with the warp as `F.grid_sample` (Kornia's way; the same
  bilinear weights, fill blended by a grid-sampled coverage channel);
- finder F(z) = z + tanh(MLP(z)) and Adam; the meta step as mgr_jax/meta.py: the real-batch
  CE gradient computed once, v = ∇L_val(θ'), fd = central difference at θ ± εv as one
  backward of L(θ⁺) − L(θ⁻) through one generator pass; exact = −η ∂/∂φ ⟨∇_θ L_train, v⟩ by
  double backward (the PyTorch idiom; JAX does forward-over-reverse — same value).
BatchNorm: batch statistics everywhere, as in JAX; torch also updates its running statistics
in the synthetic passes (same cost, no effect on the step's values).

torch is imported here only: the core package never imports this module.
"""
import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mgr_jax import randaugment as jax_augment

OPS = jax_augment.OPS
GEOMETRIC_OPS = jax_augment.GEOMETRIC_OPS
BLEND_OPS = jax_augment.BLEND_OPS
GRAY = (0.2989, 0.5870, 0.1140)  # dm_pix rgb_to_grayscale (rec601).


# --- ResNet-18 (torchvision) -------------------------------------------------------------------


class Classifier(nn.Module):
  """torchvision's resnet18 with a width multiplier and optional small stem; f = h ∘ g."""

  def __init__(self, num_classes: int, width: float = 1.0, small_stem: bool = False):
    super().__init__()
    from torchvision.models import resnet
    c = [max(1, int(round(64 * 2**i * width))) for i in range(4)]
    net = resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    net.inplanes = c[0]
    if small_stem:
      net.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
      net.maxpool = nn.Identity()
    else:
      net.conv1 = nn.Conv2d(3, c[0], 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(c[0])
    net.layer1 = net._make_layer(resnet.BasicBlock, c[0], 2)
    net.layer2 = net._make_layer(resnet.BasicBlock, c[1], 2, stride=2)
    net.layer3 = net._make_layer(resnet.BasicBlock, c[2], 2, stride=2)
    net.layer4 = net._make_layer(resnet.BasicBlock, c[3], 2, stride=2)
    net.fc = nn.Linear(c[3], num_classes)
    self.net = net

  def forward(self, x, features_only: bool = False):
    n = self.net
    x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
    x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
    feats = torch.flatten(n.avgpool(x), 1)
    return feats if features_only else n.fc(feats)


def load_flax_classifier(clf: Classifier, params, batch_stats):
  """Copies Flax ResNet18 variables (mgr_jax/models/resnet.py) into `clf`."""
  from flax import traverse_util
  from converters.resnet18 import _torch_key
  sd = {}
  for coll, tree in (('params', params), ('batch_stats', batch_stats)):
    for key, value in traverse_util.flatten_dict(tree).items():
      if key[0] not in ('backbone', 'fc'):
        continue
      v = np.asarray(value, np.float32)
      v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else (v.T if v.ndim == 2 else v)
      sd['net.' + _torch_key((coll,) + tuple(key))] = torch.from_numpy(np.array(v))
  missing, unexpected = clf.load_state_dict(sd, strict=False)
  missing = [k for k in missing if not k.endswith('num_batches_tracked')]
  assert not missing and not unexpected, (missing, unexpected)


# --- BigGAN (pytorch-pretrained-biggan) and its Flax twin -------------------------------------


def bench_biggan_config(resolution: int, num_classes: int, z_dim: int = 64,
                        channel_width: int = 8) -> dict:
  """A small BigGAN-deep config (pytorch-pretrained-biggan format) at 16, 32, 64... px."""
  ups = int(round(math.log2(resolution // 4)))
  assert 4 * 2**ups == resolution and ups >= 1, resolution
  layers, c = [[False, 16, 16]], 16
  for _ in range(ups):
    layers.append([True, c, max(c // 2, 2)])
    c = max(c // 2, 2)
  while c > 1:
    layers.append([False, c, c // 2])
    c //= 2
  return dict(output_dim=resolution, z_dim=z_dim, class_embed_dim=z_dim,
              channel_width=channel_width, num_classes=num_classes, layers=layers,
              attention_layer_position=2, eps=1e-4, n_stats=51)


def random_biggan(config: dict, seed: int = 0):
  """(torch BigGAN, JAX LoadedGenerator): the same random network in both frameworks.

  Random weights, BN statistics and attention gamma; spectral norm folded in torch exactly
  as the converter folds it, and conv_to_rgb cut to the 3 channels the package keeps.
  """
  import pytorch_pretrained_biggan as ppb
  from converters import biggan as converter
  from mgr_jax import generators
  torch.manual_seed(seed)
  model = ppb.BigGAN(ppb.BigGANConfig.from_dict(config)).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for key, t in model.state_dict().items():
      if key.endswith('running_vars'):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif key.endswith('running_means'):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif key.endswith('gamma'):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1 + 0.5)
      elif key.endswith('weight_orig') or key.endswith('embeddings.weight'):
        t.copy_(torch.randn(t.shape, generator=g))
      elif not key.endswith(('weight_u', 'weight_v')):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    for module in model.modules():  # u, v = the top singular vectors: σ = ||W||₂.
      if hasattr(module, 'weight_u'):
        u, _, vh = torch.linalg.svd(module.weight_orig.reshape(module.weight_orig.shape[0], -1))
        module.weight_u.copy_(u[:, 0])
        module.weight_v.copy_(vh[0])
  kwargs, variables = converter.convert(
      {k: v.numpy() for k, v in model.state_dict().items()}, config)
  for module in model.modules():  # Fold spectral norm (eval: no power iteration).
    if hasattr(module, 'weight_u'):
      torch.nn.utils.remove_spectral_norm(module)
  rgb = model.generator.conv_to_rgb
  cut = nn.Conv2d(rgb.in_channels, 3, rgb.kernel_size, rgb.stride, rgb.padding)
  with torch.no_grad():
    cut.weight.copy_(rgb.weight[:3])
    cut.bias.copy_(rgb.bias[:3])
  model.generator.conv_to_rgb = cut
  for p in model.parameters():
    p.requires_grad_(False)
  gdef = generators.generator_def('biggan', kwargs)
  return model, generators.LoadedGenerator('biggan', gdef, variables)


# --- finder -----------------------------------------------------------------------------------


class ResidualFinder(nn.Module):
  """F(z) = z + tanh(MLP(z)) (mgr_jax/finder.py, leaky-ReLU slope 0.01)."""

  def __init__(self, z_dim: int, hidden: Optional[int] = None):
    super().__init__()
    h = hidden or z_dim
    self.mlp = nn.Sequential(nn.Linear(z_dim, h), nn.LeakyReLU(0.01), nn.Linear(h, h),
                             nn.LeakyReLU(0.01), nn.Linear(h, z_dim))

  def forward(self, z):
    return z + torch.tanh(self.mlp(z))


def load_flax_finder(finder: ResidualFinder, phi):
  with torch.no_grad():
    for i, name in enumerate(('dense0', 'dense1', 'dense2')):
      layer = finder.mlp[2 * i]
      layer.weight.copy_(torch.from_numpy(np.asarray(phi['mlp'][name]['kernel']).T.copy()))
      layer.bias.copy_(torch.from_numpy(np.asarray(phi['mlp'][name]['bias']).copy()))


def kl_penalty(fz, eps: float = 1e-8):
  mu = fz.mean(0)
  var = (fz - mu).square().mean(0)
  return (-0.5 * (1.0 + torch.log(var + eps) - mu.square() - var)).mean()


# --- RandAugment (port of mgr_jax/randaugment.py; NCHW) -------------------------------------------


def _st(x, value):
  return value.detach() + (x - x.detach())


def _b(v):
  return v.reshape(-1, 1, 1, 1)


def _clip(x, lo=0.0, hi=1.0):
  """jnp.clip, gradient included: max then min, so a value exactly at a bound gets half the
  gradient (lax.max/min split ties; torch.clamp would give it none)."""
  return torch.minimum(torch.maximum(x, torch.tensor(lo, dtype=x.dtype)),
                       torch.tensor(hi, dtype=x.dtype))


def _auto_contrast(x):
  lo = x.amin(dim=(2, 3), keepdim=True)
  hi = x.amax(dim=(2, 3), keepdim=True)
  ok = hi > lo
  out = (x - lo) / torch.where(ok, hi - lo, torch.ones_like(hi))
  return _clip(torch.where(ok, out, x))


def _equalize(x):
  b, c, h, w = x.shape
  v = torch.round(x.detach().clamp(0.0, 1.0) * 255.0).long().reshape(b, c, h * w)
  hist = torch.zeros(b, c, 256, dtype=torch.long).scatter_add_(2, v, torch.ones_like(v))
  last = 255 - (hist.flip(-1) > 0).long().argmax(-1)
  last_count = hist.gather(2, last[..., None])[..., 0]
  step = torch.div(h * w - last_count, 255, rounding_mode='floor')
  cum_before = hist.cumsum(-1) - hist
  safe = step.clamp(min=1)[..., None]
  lut = torch.div(safe // 2 + cum_before, safe, rounding_mode='floor').clamp(max=255)
  lut = torch.where((step > 0)[..., None], lut, torch.arange(256))
  out = lut.gather(2, v).reshape(b, c, h, w).to(x.dtype) / 255.0
  return _st(x, out)


def _solarize(x, m01):
  return torch.where(x > 1.0 - _b(m01), 1.0 - x, x)


def _posterize(x, m01):
  bits = 8 - torch.round(4.0 * m01)
  unit = _b(2.0 ** (8 - bits))
  v = torch.round(x.detach().clamp(0.0, 1.0) * 255.0)
  return _st(x, torch.floor(v / unit) * unit / 255.0)


def _grayscale(x):
  w = torch.tensor(GRAY, dtype=x.dtype)
  return torch.tensordot(x, w, dims=([1], [0]))[:, None]


def _smooth(x):
  h, w = x.shape[2:]
  if h < 3 or w < 3:
    return x
  box = sum(x[:, :, dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3))
  inner = (box + 4.0 * x[:, :, 1:-1, 1:-1]) / 13.0
  out = x.clone()
  out[:, :, 1:-1, 1:-1] = inner
  return out


def _degenerate(name, x):
  if name == 'brightness':
    return torch.zeros_like(x)
  if name == 'color':
    return _grayscale(x).expand_as(x)
  if name == 'contrast':
    return _grayscale(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
  return _smooth(x)


def _geometry(name, m01, sign, h, w):
  s = sign * m01
  one, zero = torch.ones_like(s), torch.zeros_like(s)
  offset = torch.zeros(s.shape + (2,))
  if name == 'rotate':
    a = math.radians(jax_augment.MAX_ROTATE_DEG) * s
    cos, sin = torch.cos(a), torch.sin(a)
    mat = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
  elif name == 'shear_x':
    mat = torch.stack([torch.stack([one, zero], -1),
                       torch.stack([jax_augment.MAX_SHEAR * s, one], -1)], -2)
  elif name == 'shear_y':
    mat = torch.stack([torch.stack([one, jax_augment.MAX_SHEAR * s], -1),
                       torch.stack([zero, one], -1)], -2)
  else:
    mat = torch.eye(2).expand(s.shape + (2, 2))
    t = jax_augment.MAX_TRANSLATE * s
    offset = torch.stack([zero, w * t], -1) if name == 'translate_x' else torch.stack(
        [h * t, zero], -1)
  return mat, offset


def warp(x, matrix, offset, fill: float = 0.5):
  """mgr_jax.randaugment.warp with F.grid_sample: bilinear pull-back, fill blended at the border."""
  b, c, h, w = x.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = torch.meshgrid(torch.arange(h, dtype=x.dtype) - cy,
                          torch.arange(w, dtype=x.dtype) - cx, indexing='ij')
  grid = torch.stack([yy, xx], -1).reshape(h * w, 2)
  src = torch.einsum('bij,pj->bpi', matrix.to(x.dtype), grid) + offset.to(x.dtype)[:, None]
  gy = (src[..., 0] + cy) * (2.0 / max(h - 1, 1)) - 1.0
  gx = (src[..., 1] + cx) * (2.0 / max(w - 1, 1)) - 1.0
  grid = torch.stack([gx, gy], -1).reshape(b, h, w, 2)
  both = torch.cat([x, torch.ones_like(x[:, :1])], 1)
  out = F.grid_sample(both, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
  return out[:, :c] + (1.0 - out[:, c:]) * fill


def apply_round(x, op_index, m01, sign, fill: float = 0.5):
  """mgr_jax.randaugment._apply_round for all 14 ops (compute every group, then select)."""
  b, _, h, w = x.shape
  is_op = lambda name: op_index == OPS.index(name)
  in_group = lambda names: torch.isin(op_index, torch.tensor([OPS.index(n) for n in names]))
  out = x
  mat, off = torch.eye(2).expand(b, 2, 2), torch.zeros(b, 2)
  for name in GEOMETRIC_OPS:
    mat_n, off_n = _geometry(name, m01, sign, h, w)
    mat = torch.where(is_op(name)[:, None, None], mat_n, mat)
    off = torch.where(is_op(name)[:, None], off_n, off)
  out = torch.where(_b(in_group(GEOMETRIC_OPS)), warp(x, mat, off, fill), out)
  degenerate = _degenerate(BLEND_OPS[0], x)
  for name in BLEND_OPS[1:]:
    degenerate = torch.where(_b(is_op(name)), _degenerate(name, x), degenerate)
  f = _b(1.0 + jax_augment.MAX_ENHANCE * sign * m01)
  blended = _clip(x + (f - 1.0) * (x - degenerate))
  out = torch.where(_b(in_group(BLEND_OPS)), blended, out)
  for name, fn in (('auto_contrast', lambda: _auto_contrast(x)),
                   ('equalize', lambda: _equalize(x)),
                   ('solarize', lambda: _solarize(x, m01)),
                   ('posterize', lambda: _posterize(x, m01))):
    out = torch.where(_b(is_op(name)), fn(), out)
  return _st(out, _clip(out))


def rand_augment(x, ra, fill: float = 0.5):
  """`ra`: {'op_index', 'magnitude', 'sign'} tensors [num_ops, B] (as RandAugmentParams)."""
  for r in range(ra['op_index'].shape[0]):
    m01 = (ra['magnitude'][r] / jax_augment.MAX_MAGNITUDE).clamp(0.0, 1.0)
    x = apply_round(x, ra['op_index'][r], m01, ra['sign'][r], fill)
  return x


# --- the steps --------------------------------------------------------------------------------


class TorchSteps:
  """One classifier (+ finder, + generator) and the four steps, configured by the JAX run's
  StepContext (mgr_jax/methods/common.py): schedules (lr, λ warm-up) follow its step count."""

  def __init__(self, ctx, num_classes: int, width: float, small_stem: bool,
               generator=None, weight_decay: float = 5e-4, momentum: float = 0.9,
               finder_lr: float = 1e-4, seed: int = 0):
    torch.manual_seed(seed)
    self.ctx = ctx
    self.step_count = 0
    self.clf = Classifier(num_classes, width, small_stem).train()
    self.opt = torch.optim.SGD(self.clf.parameters(), lr=self._lr(), momentum=momentum,
                               nesterov=True, weight_decay=weight_decay)
    self.generator = generator
    self.finder = ResidualFinder(generator.config.z_dim) if generator is not None else None
    self.finder_opt = (torch.optim.Adam(self.finder.parameters(), lr=finder_lr)
                       if self.finder is not None else None)
    c = ctx.classifier
    self.mean = torch.tensor(c.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    self.std = torch.tensor(c.std, dtype=torch.float32).reshape(1, 3, 1, 1)
    self.num_classes = num_classes

  def _lr(self):
    return float(self.ctx.classifier.lr_schedule(self.step_count))

  def _lam(self):
    return float(self.ctx.synthetic.lam_at(self.step_count))

  def _next(self):
    """The schedules' values at this step, then the step count moves on (as state.step)."""
    lr, lam = self._lr(), self._lam()
    for group in self.opt.param_groups:
      group['lr'] = lr
    self.step_count += 1
    return lr, lam

  def load_jax_state(self, state):
    load_flax_classifier(self.clf, state.params, state.batch_stats)
    if self.finder is not None and state.finder_params:
      load_flax_finder(self.finder, state.finder_params)
    self.step_count = int(state.step)

  # Pieces.
  def normalize(self, x01):
    return (x01 - self.mean) / self.std

  def real01(self, images_uint8):
    """uint8 NHWC -> float NCHW in [0, 1], randomly cropped (reflect pad) and flipped."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    b, _, h, w = x.shape
    pad = self.ctx.classifier.crop_pad
    if pad > 0:
      crop = torch.randint(0, 2 * pad + 1, (b, 2))
      padded = F.pad(x, (pad, pad, pad, pad), mode='reflect')
      rows = (crop[:, 0:1] + torch.arange(h))[:, None, :, None]
      cols = (crop[:, 1:2] + torch.arange(w))[:, None, None, :]
      batch_idx = torch.arange(b)[:, None, None, None]
      channel_idx = torch.arange(x.shape[1])[None, :, None, None]
      x = padded[batch_idx, channel_idx, rows, cols]
    if self.ctx.classifier.flip:
      x = torch.where(_b(torch.rand(b) < 0.5), x.flip(3), x)
    return x

  def draws(self, n: int):
    """z, y_p and RandAugment draws (the JAX step's `draw_synthetic`, torch's RNG)."""
    synth = self.ctx.synthetic
    k = synth.ra_num_ops
    return {'z': torch.randn(n, self.generator.config.z_dim),
            'y': torch.randint(0, self.num_classes, (n,)),
            'ra': {'op_index': torch.randint(0, len(OPS), (k, n)),
                   'magnitude': torch.full((k, n), float(synth.ra_magnitude)),
                   'sign': torch.where(torch.rand(k, n) < 0.5, 1.0, -1.0)}}

  def generate(self, latents, y):
    return self.generator(latents, F.one_hot(y, self.num_classes).float(),
                          float(self.ctx.synthetic.truncation_psi))

  def pcr_loss(self, params, images_m11, ra):
    """mean ||g(T(x_p)) − g(x_p)||² (unweighted); params=None: the module's own parameters."""
    x01 = _clip((images_m11 + 1.0) * 0.5)
    size = self.ctx.classifier.image_size
    if x01.shape[-1] != size:  # methods.views.resize: bilinear, antialiased.
      x01 = F.interpolate(x01, size=(size, size), mode='bilinear', antialias=True,
                          align_corners=False)
    both = torch.cat([self.normalize(x01), self.normalize(rand_augment(x01, ra))])
    if params is None:
      feats = self.clf(both, features_only=True)
    else:
      feats = functional_call(self.clf, params, (both,), {'features_only': True})
    fa, fb = feats.chunk(2)
    if self.ctx.synthetic.pcr_stop_grad:
      fa = fa.detach()
    return (fb - fa).square().sum(-1).mean()

  def _apply(self, opt, module, grads):
    for p, g in zip(module.parameters(), grads):
      p.grad = g
    opt.step()

  # The four steps. `batch`: torch tensors image (uint8 NHWC), label, [val_image, val_label].
  def _real(self, batch, real01):
    return self.normalize(self.real01(batch['image']) if real01 is None else real01)

  def base_step(self, batch, real01=None):
    x = self._real(batch, real01)
    self._next()
    self.opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(self.clf(x), batch['label'])
    loss.backward()
    self.opt.step()
    return {'loss': loss.detach()}

  def pcr_step(self, batch, draws=None, real01=None):
    d = draws or self.draws(self.ctx.synthetic.batch_size)
    x = self._real(batch, real01)
    _, lam = self._next()
    self.opt.zero_grad(set_to_none=True)
    ce = F.cross_entropy(self.clf(x), batch['label'])
    with torch.no_grad():
      images = self.generate(d['z'], d['y'])
    reg = self.pcr_loss(None, images, d['ra'])
    (ce + lam * reg).backward()
    self.opt.step()
    return {'loss': ce.detach(), 'synthetic': reg.detach()}

  def mgr_step(self, batch, mode: str = 'fd', draws=None, real01=None):
    ctx, mc = self.ctx, self.ctx.meta
    d = draws or self.draws(ctx.synthetic.batch_size)
    z, y, ra = d['z'], d['y'], d['ra']
    names = [n for n, _ in self.clf.named_parameters()]
    theta = [p for _, p in self.clf.named_parameters()]
    phi = list(self.finder.parameters())
    x = self._real(batch, real01)
    x_val = self.normalize(batch['val_image'].permute(0, 3, 1, 2).float() / 255.0)
    lr, lam = self._next()
    inner_lr = mc.inner_lr if mc.inner_lr > 0 else lr

    ce = F.cross_entropy(self.clf(x), batch['label'])  # Writes running stats (real batch).
    ce_grad = torch.autograd.grad(ce, theta)

    # Inner step θ' = θ − η ∇_θ L_train(θ, φ).
    if mode == 'exact':
      images = self.generate(self.finder(z), y)  # Graph to φ: the mixed derivative needs it.
      syn = lam * self.pcr_loss(None, images, ra)
      syn_grad = torch.autograd.grad(syn, theta, create_graph=True, materialize_grads=True)
    else:
      with torch.no_grad():
        images = self.generate(self.finder(z), y)
      syn = lam * self.pcr_loss(None, images, ra)
      syn_grad = torch.autograd.grad(syn, theta, materialize_grads=True)
    theta_prime = {n: (p - inner_lr * (c + s)).detach().requires_grad_(True)
                   for n, p, c, s in zip(names, theta, ce_grad, syn_grad)}
    val_loss = F.cross_entropy(functional_call(self.clf, theta_prime, (x_val,)),
                               batch['val_label'])
    v = torch.autograd.grad(val_loss, list(theta_prime.values()))

    if mode == 'exact':  # −η ∂/∂φ ⟨∇_θ L_train(θ, φ), v⟩: double backward.
      dot = sum((g * vi).sum() for g, vi in zip(syn_grad, v))
      hyper = [-inner_lr * h for h in torch.autograd.grad(dot, phi)]
    else:  # −η (∇_φ L(θ⁺, φ) − ∇_φ L(θ⁻, φ)) / 2ε, one generator pass, one backward.
      norm = torch.sqrt(sum(vi.square().sum() for vi in v))
      eps = mc.fd_radius / torch.clamp(norm, min=torch.finfo(torch.float32).tiny)
      plus = {n: (p + eps * vi).detach() for n, p, vi in zip(names, theta, v)}
      minus = {n: (p - eps * vi).detach() for n, p, vi in zip(names, theta, v)}
      images = self.generate(self.finder(z), y)
      diff = lam * (self.pcr_loss(plus, images, ra) - self.pcr_loss(minus, images, ra))
      scale = -inner_lr / (2.0 * eps)
      hyper = [scale * h for h in torch.autograd.grad(diff, phi)]
    kl = kl_penalty(self.finder(z))
    kl_grad = torch.autograd.grad(kl, phi)
    self._apply(self.finder_opt, self.finder,
                [h + mc.lam_kl * k for h, k in zip(hyper, kl_grad)])

    # Real update with the new finder (same z, y_p, T).
    with torch.no_grad():
      images = self.generate(self.finder(z), y)
    reg = self.pcr_loss(None, images, ra)
    reg_grad = torch.autograd.grad(reg, theta, materialize_grads=True)
    self._apply(self.opt, self.clf, [c + lam * r for c, r in zip(ce_grad, reg_grad)])
    return {'loss': ce.detach(), 'synthetic': reg.detach(),
            'val_loss_inner': val_loss.detach(), 'kl': kl.detach()}

  def step(self, name: str, batch, draws=None, real01=None):
    """name: base | pcr | mgr_fd | mgr_exact; draws / real01: None = fresh random ones."""
    if name == 'base':
      return self.base_step(batch, real01)
    if name == 'pcr':
      return self.pcr_step(batch, draws, real01)
    return self.mgr_step(batch, 'exact' if name == 'mgr_exact' else 'fd', draws, real01)


def to_torch(batch: Dict[str, np.ndarray], device=None):
  return {k: (torch.from_numpy(np.array(v)).long() if k.endswith('label')
              else torch.from_numpy(np.array(v))).to(device) for k, v in batch.items()}


def jax_draws(state, batch, rng, ctx, method: str, device=None):
  """The random draws the JAX step makes from (state, rng), as torch inputs: (draws, real01).

  Feeding them to `TorchSteps.step` makes both frameworks compute the same step.
  """
  import jax
  from mgr_jax.methods import steps as jax_steps
  if method == 'base':
    real01 = jax.jit(ctx.real_inputs01)(batch['image'], jax.random.fold_in(rng, state.step))
    draws = None
  else:
    _, _, d = jax.jit(lambda s, b, r: jax_steps._real_batch(s, b, r, ctx))(state, batch, rng)
    real01 = d['real01']
    draws = {'z': torch.from_numpy(np.array(d['z'])), 'y': torch.from_numpy(np.array(d['y'])).long(),
             'ra': {'op_index': torch.from_numpy(np.array(d['ra'].op_index)).long(),
                    'magnitude': torch.from_numpy(np.array(d['ra'].magnitude)),
                    'sign': torch.from_numpy(np.array(d['ra'].sign))}}
  if draws is not None:
    draws = {'z': draws['z'].to(device), 'y': draws['y'].to(device),
             'ra': {k: v.to(device) for k, v in draws['ra'].items()}}
  return draws, torch.from_numpy(np.array(real01)).permute(0, 3, 1, 2).contiguous().to(device)
