#!/usr/bin/env bash
# Paper-scale step times on one GPU, ours next to PyTorch eager (issue 12, item 5).
#
# Needs a CUDA build of JAX (pip install "jax[cuda12]" or "jax[cuda13]") beside
# requirements-test.txt (its torch wheel is a CUDA build). Run from the repository root:
#
#   bash experiments/gpu_bench.sh [LOG_DIR]          (logs: LOG_DIR, default ./gpu_bench_logs)
#
# 1. experiments.bench_torch: ResNet-18 (width 1, 7x7 stem) at 224 px, 64 real + 64 synthetic
#    + 64 D_val, a random BigGAN-deep-style generator at 256 px (channel_width 64, z 128; its
#    output resized to 224 as in training), the four steps (base, pcr, mgr fd, mgr exact) in
#    JAX and in torch on the GPU, interleaved, after a first step that checks both compute the
#    same losses. JAX and torch share the GPU: JAX takes 45 % of its memory.
# 2. experiments.bench_step --scale=paper: JAX alone, StyleGAN2-ADA 256 px as G (mgr_exact /
#    mgr_fd and XLA's peak memory), then BigGAN-deep 128 px with bf16 activations.
# Goal of the issue: <= 0.15 s per MGR step on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS="${1:-gpu_bench_logs}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/device.txt"
python3 -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices(), 'flax', \
flax.__version__, 'torch', torch.__version__)" 2>&1 | tee -a "$LOGS/device.txt"
XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 timeout "${TORCH_TIMEOUT:-330}" \
  python3 -m experiments.bench_torch --config=configs/cars.py \
  --config.model.width=1.0 --config.model.small_stem=False --config.data.image_size=224 \
  --config.batch_size=64 --config.synth.batch_size=64 --config.meta.val_batch_size=64 \
  --config.generator.z_dim=128 --gan_resolution=256 --biggan_channel_width=64 \
  --num_classes=196 --torch_device=cuda --torch_threads=1 --steps="${STEPS:-10}" --warmup=1 \
  2>&1 | grep -v -i warning | tee "$LOGS/bench_torch.txt"
timeout "${STYLEGAN_TIMEOUT:-150}" python3 -m experiments.bench_step --scale=paper \
  --generator=stylegan2 --steps="${STEPS:-10}" --warmup=3 2>&1 | grep -v -i warning \
  | tee "$LOGS/bench_step_stylegan2.txt"
timeout "${BF16_TIMEOUT:-120}" python3 -m experiments.bench_step --scale=paper \
  --generator=biggan --config.dtype=bfloat16 --steps="${STEPS:-10}" --warmup=3 2>&1 \
  | grep -v -i warning | tee "$LOGS/bench_step_biggan_bf16.txt"
