#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), from the repository root, after bench/gpu_prepare.sh here and
# the calls it prints (they leave onnxruntime-gpu's parts in /tmp/ort there). About 3.5 minutes on an
# H200 for parts 0-4 (measured); parts 5 and 6 are new and unmeasured, up to 4 minutes more by their timeouts:
#   0. installs what the machine lacks (lark; onnxruntime-gpu, from the parts);
#   1. checks: tests/test_gpu.py (the CUDA-graph step against the plain loop, stop and resume,
#      onnxruntime's CUDA provider against its CPU one) and tests/test_fastpath.py, on the GPU;
#   2. times inference (bench/infer.py): onnxruntime CUDA with IO binding (and with onnxruntime's
#      own CUDA graph) against torch eager; then the exported model's raw-id table against the
#      LabelEncoder (bench/lookup.py);
#   3. times the collab training epoch (bench/gpu_collab.py): specc's CUDA-graph step and plain
#      loop against a hand-written eager loop, on the 100k set at batch 64 and a MovieLens-25M-shaped
#      set at batch 65,536, 4,096 and 64;
#   4. profiles the graph's kernels (100k at batch 64, 25M at 65,536);
#   5. precision = bf16 against fp32 (bench/precision.py): s/epoch and the validation metric of the
#      collab, MNIST MLP and MNIST convnet specs, each in specc's default GPU loop (the captured step).
#   6. sparse_adam against adam (bench/sparse.py) on the 100k ratings at batch 64 (the 25M set:
#      bench/sparse.py --device cuda --data <a 25M ratings CSV> --batch 64 65536, minutes more).
# Each part runs under its own timeout and a failing part does not stop the others. Results: $OUT.
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
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, onnxruntime as ort; print('torch', torch.__version__, torch.cuda.is_available(), '| onnxruntime', ort.__version__, ort.get_available_providers())"
status=0
part() {  # part NAME SECONDS COMMAND...: run, keep its log, note a failure and go on
  local name=$1 secs=$2; shift 2
  echo "== $name"
  local start=$SECONDS
  timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}
part checks 180 python3 -m pytest -p no:cacheprovider tests/test_gpu.py tests/test_fastpath.py
part infer 80 python3 bench/infer.py --device cuda --json "$OUT/infer.json"
part lookup 60 python3 bench/lookup.py --device cuda
part train 300 python3 bench/gpu_collab.py --json "$OUT/gpu_collab.json"
part profile 60 python3 bench/gpu_collab.py --profile
part precision 150 python3 bench/precision.py --device cuda --quick --json "$OUT/precision.json"
part sparse 90 python3 bench/sparse.py --device cuda --batch 64 --rounds 1 --json "$OUT/sparse.json"
exit $status
