#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (no Rust toolchain needed):
#   bash dist/cuda/gpu_check.sh
# 1. the golden checks of the backbones on the GPU (PyTorch fixtures of crates/lt-models/tests/golden),
# 2. the CUDA benchmark: ResNet-32 batch 128 and ResNet-50 batch 64 training steps and eval, the
#    project's binary against PyTorch CUDA in the same run.
set -uo pipefail
cd "$(dirname "$0")/../.."
LT=dist/cuda/lt
OUT="${OUT:-dist/cuda/out}"
mkdir -p "$OUT"
# cuBLAS, cuRAND, NVRTC and cuDNN come from the PyTorch installation's NVIDIA wheels.
NV_LIBS=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
echo "== missing libraries (should be none)"; ldd "$LT" | grep "not found" | tee "$OUT/ldd_missing.txt"
echo "== golden checks on cuda"
"$LT" selftest --device cuda 2>&1 | tee "$OUT/selftest.txt"
echo "== benchmark"
{
  for mode in train eval; do
    "$LT" bench backbone --device cuda --arch resnet32 --batch 128 --mode $mode --steps 20 --warmup 3
    python3 scripts/bench_torch.py --device cuda --arch resnet32 --batch 128 --mode $mode --steps 20 --warmup 3
    "$LT" bench backbone --device cuda --arch resnet50 --classes 1000 --batch 64 --size 224 --mode $mode --steps 10 --warmup 3
    python3 scripts/bench_torch.py --device cuda --arch resnet50 --classes 1000 --batch 64 --size 224 --mode $mode --steps 10 --warmup 3
  done
} 2>&1 | tee "$OUT/bench.jsonl"
