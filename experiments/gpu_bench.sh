#!/usr/bin/env bash
# Paper-scale step times on one GPU, ours next to PyTorch eager (issue 12, item 5).
#
# NOT RUN YET: written on a machine without a GPU; no GPU was lent to the task that wrote it.
# Needs a CUDA build of JAX (pip install "jax[cuda12]") beside requirements-test.txt (its
# torch 2.14.1 wheel is a CUDA build). Run from the repository root:
#
#   bash experiments/gpu_bench.sh [extra --flags for experiments.bench_torch]
#
# What it runs: ResNet-18 (width 1, 7x7 stem) at 224 px, 64 real + 64 synthetic + 64 D_val,
# a random BigGAN-deep-style generator at 256 px (channel_width 64, z 128; its output resized
# to 224 as in training), the four steps (base, pcr, mgr fd, mgr exact) in JAX and in torch
# on the GPU, interleaved, after a first step that checks both compute the same losses.
# Goal of the issue: <= 0.15 s per MGR step on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import jax; print('JAX devices:', jax.devices())"
timeout 900 python -m experiments.bench_torch --config=configs/cars.py \
  --config.model.width=1.0 --config.model.small_stem=False --config.data.image_size=224 \
  --config.batch_size=64 --config.synth.batch_size=64 --config.meta.val_batch_size=64 \
  --config.generator.z_dim=128 --gan_resolution=256 --biggan_channel_width=64 \
  --num_classes=196 --torch_device=cuda --torch_threads=1 --steps=20 --warmup=5 "$@"
