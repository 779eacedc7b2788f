#!/usr/bin/env bash
# The GPU checks, in one call on the device machine, where no weights file is needed:
#   scripts/device_wheels.sh here; then run(command="scripts/device_check.sh", carry=[".whl"], timeout_s=480).
# The networks are untrained there (tests/test_gpu_inference.py; benchmarks.inference --paper-size), because the
# committed weights (108 MB) exceed the 64 MiB of working tree the device tool sends. Figures land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/scintnode-device-check}
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
} | tee "$out/device.txt"
status=0
python3 -m pytest -q -p no:cacheprovider tests/test_gpu_inference.py 2>&1 | tee "$out/gpu-tests.log" || status=1
paper_size=(--repeats 5 --paper-size --network thyroid-resnet34 --network i131-neck-resnet18 --network paranet-small)
for device in cuda cpu; do  # the same machine's CPU in the same call, for the ratio
  python3 -m benchmarks.inference --device "$device" "${paper_size[@]}" 2>&1 | tee "$out/inference-$device.log" || status=1
done
exit "$status"
