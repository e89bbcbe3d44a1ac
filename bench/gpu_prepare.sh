#!/usr/bin/env bash
# Run HERE (not on the GPU machine), from the repository root, before bench/gpu.sh: fetches what the
# GPU machine lacks (see ../.library/device/KINDS.md) into folders git ignores:
#   .whl/        lark, a pure-Python wheel (carry it in every device call that runs specc)
#   .whl_ort/    onnxruntime-gpu 1.31.1 for Python 3.12, split into 4 parts of 61 MiB (one call carries
#                at most 64 MiB: carry one part per call, back to back while the machine is warm)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
grep -qx "/.whl_ort/" .git/info/exclude 2>/dev/null || echo "/.whl_ort/" >> .git/info/exclude
mkdir -p .whl .whl_ort
python3 -m pip download --no-deps --only-binary=:all: -d .whl lark==1.3.1
if ! ls .whl_ort/part_* >/dev/null 2>&1; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl_ort onnxruntime-gpu==1.31.1
  (cd .whl_ort && split -n 4 onnxruntime_gpu-*.whl part_ && rm onnxruntime_gpu-*.whl && ls -la)
fi
cat <<'TXT'
Now, with the device tool, while the machine stays warm (30 s between calls):
  for each part P in .whl_ort/part_*:  run(command="mkdir -p /tmp/ort && cp .whl_ort/P /tmp/ort/", carry=[".whl_ort/P"])
  then:                                run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
TXT
