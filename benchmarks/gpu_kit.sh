#!/usr/bin/env bash
# Packs what benchmarks/gpu.sh needs on a lent GPU machine (the device tool) into one
# git-ignored folder for `carry`: that machine reaches no registry, its image has PyTorch,
# onnxruntime, transformers, OpenCV and numpy 2 but no PyAV, soundfile, soxr or mediapipe,
# and ../shared does not travel. Run it here, where PyPI answers (about 40 MB, a minute):
#
#   bash benchmarks/gpu_kit.sh [python]     # -> .gpu-kit/
#
# .gpu-kit/wheels: PyAV (its ffmpeg has h264_nvenc), soundfile, soxr and cffi, at the
#   versions of constraints.txt, for the image's Python ($KIT_PYTHON_VERSION, default 3.12)
# .gpu-kit/media, .gpu-kit/conformance: copies of ../shared's
# .gpu-kit/media/ditto_example_face.face.npz: the example portrait's face, recorded here with
#   mediapipe, which the benchmarks (pipeline.py --face) and tests replay there
set -euo pipefail
PY=${1:-python}
cd "$(dirname "$0")/.."
KIT=${GPU_KIT:-.gpu-kit}
SHARED=${SHARED:-../shared}
pin() { grep -i "^$1==" constraints.txt | head -1; }

rm -rf "$KIT"
mkdir -p "$KIT/wheels"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "${KIT_PYTHON_VERSION:-3.12}" --implementation cp "${platforms[@]}" \
    -d "$KIT/wheels" "$(pin av)" "$(pin soundfile)" "$(pin soxr)" "$(pin cffi)" "$(pin pycparser)"
cp -r "$SHARED/media" "$SHARED/conformance" "$KIT/"
TALKINGHEAD_MEDIA_DIR="$KIT/media" PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} \
    "$PY" benchmarks/pipeline.py --record-face "$KIT/media/ditto_example_face.face.npz"
du -sh "$KIT"
echo "device tool: run(command=\"bash benchmarks/gpu.sh python3\", carry=[\"$KIT\"], timeout_s=570)"
