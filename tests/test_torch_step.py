"""The PyTorch reference of the benchmark (experiments/torch_step.py) computes our steps.

RandAugment's port op by op (values and image gradients), and one pcr step from the same
weights, batch and draws in both frameworks. (The mgr steps are compared on every
run of `experiments.bench_torch`, which prints the agreement of their losses.)
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch (requirements-test.txt) is not installed')
pytest.importorskip('pytorch_pretrained_biggan', reason='pytorch-pretrained-biggan missing')

from experiments import torch_step  # pylint: disable=wrong-import-position
from mgr_jax import randaugment as augment  # pylint: disable=wrong-import-position


def test_rand_augment_ops_match():
  rng = np.random.default_rng(0)
  n = 6
  x = rng.uniform(0.05, 0.95, (n, 12, 12, 3)).astype(np.float32)  # No ties at 0 or 1.
  mag = rng.uniform(0.0, 30.0, n).astype(np.float32)
  sign = np.where(rng.random(n) < 0.5, 1.0, -1.0).astype(np.float32)
  cot = rng.standard_normal((len(augment.OPS),) + x.shape).astype(np.float32)

  def all_ops(images):
    return jnp.stack([augment.apply_op(images, op, mag, sign) for op in augment.OPS])
  out, vjp = jax.jit(lambda v: jax.vjp(all_ops, v))(x)
  (grad,) = vjp(cot)

  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  m01 = torch.from_numpy(mag) / 30.0
  outs = [torch_step.apply_round(xt, torch.full((n,), i), m01, torch.from_numpy(sign))
          for i in range(len(augment.OPS))]
  tout = torch.stack(outs)
  (tout * torch.from_numpy(cot).permute(0, 1, 4, 2, 3)).sum().backward()
  tout = tout.detach().permute(0, 1, 3, 4, 2).numpy()
  for i, op in enumerate(augment.OPS):
    np.testing.assert_allclose(tout[i], out[i], atol=2e-5, err_msg=op)
  np.testing.assert_allclose(xt.grad.permute(0, 2, 3, 1).numpy(), grad, rtol=1e-4, atol=1e-4)


@pytest.fixture
def one_torch_thread():
  """Robust on a loaded machine (2 OpenMP threads can stall there); restored afterwards."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.mark.slow
def test_pcr_step_matches_jax(tiny_config, one_torch_thread):
  """Real CE + λ·PCR through G and T, and the SGD update: base's step is a part of it."""
  from flax import traverse_util
  from converters.resnet18 import _torch_key
  from mgr_jax.train.setup import build_run
  method = 'pcr'
  c = tiny_config
  c.method, c.model.width, c.batch_size, c.synth.batch_size = method, 0.25, 16, 16
  c.synth.lam_warmup = 0.0  # λ itself at step 0, not the warm-up's 0.
  gan = torch_step.bench_biggan_config(16, 10, z_dim=16, channel_width=4)
  tgen, jgen = torch_step.random_biggan(gan)
  run = build_run(c, 10, 1000, jgen)
  ref = torch_step.TorchSteps(run.ctx, 10, 0.25, True, tgen)
  ref.load_jax_state(run.state)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  key = jax.random.PRNGKey(0)
  draws, real01 = torch_step.jax_draws(run.state, batch, key, run.ctx, method)
  old = jax.tree.map(np.asarray, run.state.params)
  new, metrics = run.jit_step()(run.state, run.shard_batch(batch), key, run.gen_vars)
  tm = ref.step(method, torch_step.to_torch(batch), draws, real01)
  for k, v in tm.items():
    assert abs(float(v) - float(metrics[k])) <= 1e-5 * abs(float(metrics[k])), k
  sd = ref.clf.state_dict()
  tr = lambda v: v.transpose(3, 2, 0, 1) if v.ndim == 4 else (v.T if v.ndim == 2 else v)
  old = traverse_util.flatten_dict(old)
  new = traverse_util.flatten_dict(jax.tree.map(np.asarray, new.params))
  jax_update = np.concatenate([np.ravel(tr(new[k] - old[k])) for k in new])
  torch_update = np.concatenate([
      np.ravel(sd['net.' + _torch_key(('params',) + k)].numpy() - tr(old[k])) for k in new])
  err = np.linalg.norm(jax_update - torch_update) / np.linalg.norm(jax_update)
  assert err < 1e-3, err
