#!/usr/bin/env bash
# The GPU figures in one go (issue 15): installs nothing, needs only the repo's environment.
# Usage: bash benchmarks/gpu.sh [python]   (a few minutes on one H100/H200-class GPU)
set -euo pipefail
PY=${1:-python}
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
$PY - <<'PYEOF'
import torch, onnxruntime as ort
from talkinghead.media.writer import hardware_encoder_works
print({"cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "ort_providers": ort.get_available_providers(), "nvenc": hardware_encoder_works("h264_nvenc")})
PYEOF
for BATCH in 1 16; do
  timeout 240 $PY benchmarks/frame_path.py --device cuda --batch $BATCH --repeats 10 \
    --runtimes torch,forms,compile,onnx --encode-frames 100 || echo "frame_path batch $BATCH failed: $?"
  timeout 120 $PY benchmarks/frame_path.py --device cuda --batch $BATCH --repeats 10 \
    --runtimes torch --fp16 --encode-frames 10 || echo "frame_path fp16 batch $BATCH failed: $?"
done
# End to end, stage by stage, full-size random-weight networks: fps, streaming latency, sessions.
for FP16 in "" "--fp16"; do
  timeout 420 $PY benchmarks/pipeline.py --full-random --device cuda $FP16 --seconds 10 \
    --sessions 16 --stream-seconds 6 || echo "pipeline ${FP16:-fp32} failed: $?"
done
# fp16 and bf16 against fp32, network by network.
timeout 180 $PY benchmarks/precision.py --device cuda || echo "precision failed: $?"
# The device paste-back and runtime tests, GPU paths included.
timeout 300 $PY -m pytest -q --import-mode=importlib -rs tests/face/test_device_paste.py \
  tests/methods/ditto/test_runtimes.py tests/media/test_writer.py || echo "tests failed: $?"
