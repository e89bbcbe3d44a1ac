#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), from the repository root, after bench/gpu_prepare.sh here and
# the calls it prints. Installs what the machine lacks, checks that specc trains and exports there,
# and times, side by side with hand-written references, in about 8 minutes:
#   1. the collab training epoch, specc against a hand-written eager loop (same model, batches,
#      fused AdamW, OneCycleLR), at batch 64 and 4096, on the GPU;
#   2. inference: onnxruntime's CUDA provider with IO binding against torch eager, batch 1 to 65,536.
#   1b. the same with specc's device-resident step (specc.fastpath), not yet captured in a CUDA graph.
# Not measured yet (not built yet): the CUDA-graph capture of that step and the 25M-rating workload.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/specc-gpu}
mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 2
if ls /tmp/ort/part_* >/dev/null 2>&1; then
  cat /tmp/ort/part_* > /tmp/ort/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-deps --no-compile --target /tmp/ortgpu \
    /tmp/ort/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl || echo "onnxruntime-gpu did not install"
fi
export PYTHONPATH=/tmp/ortgpu:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, onnxruntime as ort; print('torch', torch.__version__, torch.cuda.is_available(), '| onnxruntime', ort.__version__, ort.get_available_providers())"
set -e
echo "== check: train and export the collab spec on the GPU (1 epoch)"
timeout 120 python3 -m specc train specs/collab.spec --device cuda --out "$OUT/run" --set train.fit.epochs=1
echo "== 1. training epoch: specc against a hand-written eager loop"
timeout 300 python3 bench/collab.py --device cuda --batches 64 4096 --reps 3 --json "$OUT/collab.json"
echo "== 1b. the same with specc's device-resident step (no capture yet)"
timeout 200 python3 bench/collab.py --device cuda --device-step --batches 64 4096 --reps 3 --json "$OUT/collab_device_step.json"
echo "== 2. inference: onnxruntime CUDA + IO binding against torch eager"
timeout 120 python3 bench/infer.py --device cuda --json "$OUT/infer.json"
