"""StyleGAN2-ADA training steps: losses and pure, jittable G / D updates.

Follows the official `training/loss.py:StyleGAN2Loss` and `training_loop.py`:

- G: non-saturating logistic loss softplus(−D(aug(G(z, c)))); noise_mode 'random';
  optional style mixing (one random cutoff per batch, as the official); the mapping's
  `w_avg` (used for truncation) is tracked in the G phase.
- D: softplus(D(aug(G(z, c)))) + softplus(−D(aug(x))); lazy R1 every `r1_interval`
  steps as a separate Adam step on the same optimiser, gradient w.r.t. the *unaugmented*
  reals, loss (γ/2)·|∇|²·r1_interval; D's Adam uses lr·k/(k+1) and β^(k/(k+1)), k the
  interval (the official mini-batch ratio).
- Not implemented: path-length regularisation (off in the official 'cifar' config and in
  our digits default; G therefore uses plain Adam(0, 0.99)).
- G_ema: half-life `ema_kimg`·1000 images, optional ramp-up (half-life ≤ images seen ×
  ramp); buffers (w_avg, noise_const) copied from G.
- ADA: the same augmentation of reals and fakes in every D evaluation; sign(D(aug(real)))
  accumulated in the D phase and p adjusted every `ada_interval` steps (`ada.py`).

One iteration = `train_step(state, data, rng, setup=..., r1=...)`: G step, D step, (R1
step), EMA, ADA, in the official phase order. `r1` is static: an iteration with the R1 step
and one without are two programs, the caller choosing by the iteration count
(`is_r1_step`). (One program with `lax.cond` ran the R1 branch 12x slower on XLA's CPU
backend, 365 vs 30 ms at the digits size: its convolutions inside the conditional did not
get the fast kernels.) The real batch and the fake labels are
drawn inside the step from the whole training set kept on device (uint8), with
`fold_in(rng, step)` keys: resuming reproduces the same run.

On N devices (`mesh`): the state and D are replicated, the batch (reals, z, labels) is split
over the 'data' axis. The losses, R1 and ADA's sign statistic are means over the global
batch, so a step computes what it computes on one device, each device on 1/N of the batch.
"""
import dataclasses
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mgr_jax.gan import ada as ada_lib
from mgr_jax.generators import stylegan2
from mgr_jax.sharding import split_over_data
from mgr_jax.gan.discriminator import Discriminator


@dataclasses.dataclass(frozen=True)
class GanSetup:
  """Everything static about a training run (hashable: closed over by jit)."""
  G: stylegan2.Generator
  D: Discriminator
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  batch_size: int
  r1_gamma: float = 1.0
  r1_interval: int = 16
  style_mixing_prob: float = 0.0
  ema_kimg: float = 10.0
  ema_rampup: Optional[float] = 0.05
  augment: Optional[ada_lib.AugmentSpec] = None  # None = no augmentation.
  ada_target: Optional[float] = 0.6  # None = fixed p.
  ada_interval: int = 4
  ada_kimg: float = 500.0


def adam(lr: float, reg_interval: Optional[int] = None):
  """The official Adam(β=(0, 0.99), eps 1e-8), with the lazy-regularisation mini-batch
  ratio applied to lr and β when `reg_interval` is given."""
  ratio = 1.0 if not reg_interval else reg_interval / (reg_interval + 1)
  return optax.adam(lr * ratio, b1=0.0, b2=0.99 ** ratio, eps=1e-8)


@flax.struct.dataclass
class GanState:
  step: jax.Array
  g_params: Any
  g_buffers: Any  # {'mapping': {'w_avg'}, 'synthesis': {... noise_const}}
  g_opt_state: Any
  d_params: Any
  d_opt_state: Any
  ema_params: Any  # G_ema params; G_ema buffers are g_buffers.
  ada: ada_lib.AdaState

  def ema_variables(self):
    return {'params': self.ema_params, 'buffers': self.g_buffers}


def create_state(setup: GanSetup, seed: int, ada_p: float = 0.0) -> GanState:
  """A fresh state with the official initialisation (jitted; the init draws use the 'rbg'
  PRNG, which compiles in a fraction of threefry's time)."""
  return _create_state(setup, jax.random.key(seed, impl='rbg'), jnp.float32(ada_p))


def abstract_state(setup: GanSetup) -> GanState:
  """The state's shapes and dtypes (nothing computed): the restore target."""
  return jax.eval_shape(lambda: _create_state(setup, jax.random.key(0, impl='rbg'),
                                              jnp.float32(0)))


@functools.partial(jax.jit, static_argnums=0)
def _create_state(setup: GanSetup, key, ada_p) -> GanState:
  k_g, k_d = jax.random.split(key)
  g_vars = stylegan2.init(setup.G, k_g)
  res, ch = setup.G.img_resolution, setup.G.img_channels
  d_vars = setup.D.init(k_d, jnp.zeros((1, res, res, ch)),
                        jnp.zeros((1, setup.D.c_dim)) if setup.D.c_dim else None)
  return GanState(step=jnp.zeros((), jnp.int32), g_params=g_vars['params'],
                  g_buffers=g_vars['buffers'], g_opt_state=setup.g_tx.init(g_vars['params']),
                  d_params=d_vars['params'], d_opt_state=setup.d_tx.init(d_vars['params']),
                  ema_params=jax.tree.map(jnp.copy, g_vars['params']),
                  ada=ada_lib.AdaState.create(ada_p))


# ----------------------------------------------------------------------------------------
# Forward passes.


def run_G(setup: GanSetup, g_params, g_buffers, z, c, rng, update_w_avg=True):
  """(images, new buffers): mapping (+ style mixing) and synthesis with random noise."""
  G = setup.G
  variables = {'params': g_params, 'buffers': g_buffers}
  ws, mutated = G.apply(variables, z, c, 1.0, None, update_w_avg,
                        method=stylegan2.Generator.map_latents, mutable=['buffers'])
  buffers = mutated['buffers'] if update_w_avg else g_buffers
  k_mix, k_cut, k_prob, k_noise = jax.random.split(rng, 4)
  if setup.style_mixing_prob > 0:
    ws2 = G.apply(variables, jax.random.normal(k_mix, z.shape), c,
                  method=stylegan2.Generator.map_latents)
    num_ws = ws.shape[1]
    cutoff = jax.random.randint(k_cut, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(k_prob) < setup.style_mixing_prob, cutoff, num_ws)
    ws = jnp.where((jnp.arange(num_ws) >= cutoff)[None, :, None], ws2, ws)
  images = stylegan2.synthesis(G, {'params': g_params, 'buffers': buffers}, ws, 'random', k_noise)
  return images, buffers


def run_D(setup: GanSetup, d_params, images, c, p, rng):
  """Logits [N, 1] of D(augment(images)); p is the current ADA probability."""
  if setup.augment is not None:
    images = ada_lib.augment(images, p, rng, setup.augment)
  return setup.D.apply({'params': d_params}, images, c)


# ----------------------------------------------------------------------------------------
# Losses (pure functions of the parameters they differentiate).


def g_loss(g_params, state: GanState, setup: GanSetup, z, c, rng):
  k_g, k_d = jax.random.split(rng)
  images, buffers = run_G(setup, g_params, state.g_buffers, z, c, k_g)
  logits = run_D(setup, state.d_params, images, c, state.ada.p, k_d)
  return jnp.mean(jax.nn.softplus(-logits)), buffers


def d_main_loss(d_params, state: GanState, setup: GanSetup, fakes, fake_c, reals, real_c, rng):
  k_fake, k_real = jax.random.split(rng)
  gen_logits = run_D(setup, d_params, fakes, fake_c, state.ada.p, k_fake)
  real_logits = run_D(setup, d_params, reals, real_c, state.ada.p, k_real)
  loss_gen = jnp.mean(jax.nn.softplus(gen_logits))
  loss_real = jnp.mean(jax.nn.softplus(-real_logits))
  return loss_gen + loss_real, real_logits


def r1_penalty(d_params, state: GanState, setup: GanSetup, reals, real_c, rng):
  """Mean over the batch of |∇_x D(aug(x))|², x the unaugmented reals."""
  def total(x):
    return jnp.sum(run_D(setup, d_params, x, real_c, state.ada.p, rng))
  grads = jax.grad(total)(reals)
  return jnp.mean(jnp.sum(jnp.square(grads), axis=(1, 2, 3)))


def r1_loss(d_params, state, setup, reals, real_c, rng):
  """The lazy R1 step's loss: (γ/2)·penalty·r1_interval (the official gain)."""
  penalty = r1_penalty(d_params, state, setup, reals, real_c, rng)
  return penalty * (setup.r1_gamma / 2) * setup.r1_interval, penalty


# ----------------------------------------------------------------------------------------
# Steps.


def g_step(state: GanState, setup: GanSetup, z, c, rng):
  """One Adam step of G on the non-saturating loss; returns (state, loss before it)."""
  (loss, buffers), grads = jax.value_and_grad(g_loss, has_aux=True)(
      state.g_params, state, setup, z, c, rng)
  updates, opt_state = setup.g_tx.update(grads, state.g_opt_state, state.g_params)
  return state.replace(g_params=optax.apply_updates(state.g_params, updates),
                       g_opt_state=opt_state, g_buffers=buffers), loss


def d_step(state: GanState, setup: GanSetup, fakes, fake_c, reals, real_c, rng):
  """One Adam step of D on the logistic loss; returns (state, loss, real logits)."""
  (loss, real_logits), grads = jax.value_and_grad(d_main_loss, has_aux=True)(
      state.d_params, state, setup, fakes, fake_c, reals, real_c, rng)
  updates, opt_state = setup.d_tx.update(grads, state.d_opt_state, state.d_params)
  return (state.replace(d_params=optax.apply_updates(state.d_params, updates),
                        d_opt_state=opt_state), loss, real_logits)


def r1_step(state: GanState, setup: GanSetup, reals, real_c, rng):
  (_, penalty), grads = jax.value_and_grad(r1_loss, has_aux=True)(
      state.d_params, state, setup, reals, real_c, rng)
  updates, opt_state = setup.d_tx.update(grads, state.d_opt_state, state.d_params)
  return state.replace(d_params=optax.apply_updates(state.d_params, updates),
                       d_opt_state=opt_state), penalty


def ema_beta(setup: GanSetup, step):
  """0.5 ** (batch / half-life in images), half-life ramped up as the official."""
  ema_nimg = jnp.asarray(setup.ema_kimg * 1000.0, jnp.float32)
  if setup.ema_rampup is not None:
    ema_nimg = jnp.minimum(ema_nimg, step.astype(jnp.float32) * setup.batch_size
                           * setup.ema_rampup)
  return 0.5 ** (setup.batch_size / jnp.maximum(ema_nimg, 1e-8))


def one_hot(setup: GanSetup, labels):
  return jax.nn.one_hot(labels, setup.G.c_dim) if setup.G.c_dim else None


def is_r1_step(setup: GanSetup, step: int) -> bool:
  """Whether iteration `step` (state.step, counted from 0) takes the lazy R1 step."""
  return setup.r1_gamma > 0 and step % setup.r1_interval == 0


def train_step(state: GanState, data, rng, *, setup: GanSetup, r1: bool,
               mesh: Optional[Mesh] = None):
  """One StyleGAN2-ADA iteration: G step, D step, the lazy R1 step if `r1` (pass
  `is_r1_step(setup, state.step)`), G_ema, ADA. data: {'images': uint8 [N, R, R, C] (all of
  D), 'labels': int32 [N]}. Jit with setup and r1 static. `mesh`: the data mesh whose devices
  share the batch (None: no constraint).
  Returns (state, metrics); metrics['r1_penalty'] is 0 where 'r1_done' is 0."""
  key = jax.random.fold_in(rng, state.step)
  k_real, k_gc, k_dc, k_gz, k_dz, k_g, k_fake, k_d, k_r1 = jax.random.split(key, 9)
  n = data['labels'].shape[0]
  b = setup.batch_size
  split = functools.partial(split_over_data, mesh)
  idx = split(jax.random.choice(k_real, n, (b,), replace=n < b))
  reals = split(data['images'][idx].astype(jnp.float32) / 127.5 - 1.0)
  real_c = split(one_hot(setup, data['labels'][idx]))
  # Fake labels follow the label distribution of D, as the official get_label(randint).
  g_c = split(one_hot(setup, data['labels'][jax.random.randint(k_gc, (b,), 0, n)]))
  d_c = split(one_hot(setup, data['labels'][jax.random.randint(k_dc, (b,), 0, n)]))

  state, loss_g = g_step(state, setup, split(jax.random.normal(k_gz, (b, setup.G.z_dim))), g_c,
                         k_g)
  fakes, _ = run_G(setup, state.g_params, state.g_buffers,
                   split(jax.random.normal(k_dz, (b, setup.G.z_dim))), d_c, k_fake,
                   update_w_avg=False)
  fakes = jax.lax.stop_gradient(fakes)
  state, loss_d, real_logits = d_step(state, setup, fakes, d_c, reals, real_c, k_d)
  metrics = {'g_loss': loss_g, 'd_loss': loss_d,
             'd_real_sign': jnp.mean(jnp.sign(real_logits))}
  if setup.r1_gamma > 0:  # The same metrics in both programs (the loop sums them).
    penalty = jnp.zeros((), jnp.float32)
    if r1:
      state, penalty = r1_step(state, setup, reals, real_c, k_r1)
    metrics['r1_penalty'] = penalty
    metrics['r1_done'] = jnp.float32(r1)

  beta = ema_beta(setup, state.step)
  ema = jax.tree.map(lambda e, p: p + beta * (e - p), state.ema_params, state.g_params)

  ada = state.ada
  if setup.augment is not None and setup.ada_target is not None:
    ada = ada_lib.accumulate(ada, real_logits)
    step1 = state.step + 1
    adjusted = ada_lib.adjust(ada, setup.ada_target, b, setup.ada_interval, setup.ada_kimg)
    ada = jax.tree.map(lambda a, c: jnp.where(step1 % setup.ada_interval == 0, a, c),
                       adjusted, ada)
  metrics['ada_p'] = ada.p
  return state.replace(step=state.step + 1, ema_params=ema, ada=ada), metrics
