#!/usr/bin/env bash
# One prepared run of the GPU benchmarks on a lent GPU machine that has CUDA PyTorch but no Rust
# toolchain: rstar2-gpu-bench at full size (matmul tiles autotuned, per-kernel GPU times), then
# PyTorch eager on the same card doing the same matmuls, SmolLM2-135M training step and batched
# decode (scripts/bench_torch.py with BENCH_TORCH_DEVICE=cuda). Run from the repository root with
# the stripped binary beside it:
#
#   cargo build --release --ignore-rust-version -p rstar2-gpu --bin rstar2-gpu-bench
#   strip -o rstar2-gpu-bench target/release/rstar2-gpu-bench   # ~7 MB, git-ignored
#   (on the machine, with the Vulkan loader's .deb files in .gl/, see the device notes)
#   OUT=/some/dir bash scripts/device_bench.sh
#
# Everything it prints is also written under $OUT. Each step has its own time limit so one slow
# step cannot eat the machine's whole lease.
set -u
OUT=${OUT:-/tmp/rstar2-device-bench}
BIN=${BIN:-./rstar2-gpu-bench}
mkdir -p "$OUT"
if [ -d .gl ] && ! ldconfig -p | grep -q libvulkan; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/nvidia-smi.txt"
"$BIN" --devices 2>&1 | tee "$OUT/devices.txt"
RSTAR2_GPU_AUTOTUNE=1 RSTAR2_GPU_AUTOTUNE_CACHE="$OUT/autotune.json" \
  timeout 330 "$BIN" --size full --profile 2>&1 | tee "$OUT/gpu-bench.txt"
# The same work in PyTorch eager on the same card (fp32).
export BENCH_TORCH_DEVICE=cuda
timeout 60 python3 scripts/bench_torch.py matmul 16 4096,4096,4096 2048,576,1536 2048,1536,576 2048,576,49152 8,576,1536 32,576,1536 2>&1 | tee "$OUT/torch-matmul.txt"
timeout 90 python3 scripts/bench_torch.py train models/smollm2-135m/config.json 4 512 16 0 2>&1 | tee "$OUT/torch-train.txt"
timeout 90 python3 scripts/bench_torch.py decode models/smollm2-135m/config.json 8,32 32 64 16 0 2>&1 | tee "$OUT/torch-decode.txt"
