#!/usr/bin/env bash
# Issue 15's GPU figures in one prepared run that fits a device lease (15 minutes in all, at
# most 10 a command): it installs nothing from the network, starts no step once its budget
# is spent (and lets none run past it), and writes the log and every figure as it goes.
#
#   bash benchmarks/gpu_kit.sh                # here, once: .gpu-kit/ (what the GPU image lacks)
#   device tool: run(command="bash benchmarks/gpu.sh python3", carry=[".gpu-kit"], timeout_s=570)
#   bash benchmarks/gpu.sh --smoke [python]   # the same steps on the CPU with tiny networks,
#                                             # in a minute (tests/benchmarks runs it)
#
# GPU_BUDGET_S  seconds for all steps (default 500; the --smoke default 300)
# GPU_STEPS     the steps to run, comma-separated (default: all, in the order below, which is
#               most wanted first; a second call can run what the first had no time for)
# RESULTS       where gpu.log (everything printed) and figures.jsonl (each figure, tagged with
#               its step) go: the device tool's $OUT when set, else benchmarks/results
# GPU_KIT       the kit folder (default .gpu-kit); absent, the environment must have it all
set -uo pipefail
SMOKE=0
if [[ ${1:-} == --smoke ]]; then SMOKE=1; shift; fi
PY=${1:-python}
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-${OUT:-benchmarks/results}}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu.log
FIGURES=$RESULTS/figures.jsonl
: >"$LOG"
: >"$FIGURES"
say() { echo "$*" | tee -a "$LOG"; }

KIT=$(realpath -m "${GPU_KIT:-.gpu-kit}")
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G "$KIT/wheels/*.whl" >/dev/null; then
    site=$(mktemp -d)
    if "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --no-cache-dir --target "$site" "$KIT"/wheels/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH=$PYTHONPATH:$site
    else
        say "the kit's wheels did not install (see $LOG); going on without them"
    fi
fi
[[ -d $KIT/media ]] && export TALKINGHEAD_MEDIA_DIR=$KIT/media
[[ -d $KIT/conformance ]] && export TALKINGHEAD_CONFORMANCE_DIR=$KIT/conformance
FACE=()  # the portrait's recorded face, for an image without mediapipe (see gpu_kit.sh)
recorded=$KIT/media/ditto_example_face.face.npz
[[ -f $recorded ]] && FACE=(--face "$recorded")
WORK=$(mktemp -d)  # the full-size random networks, built once for every pipeline step
trap 'rm -rf "$WORK" "${site:-$WORK}"' EXIT

if ((SMOKE)); then
    BUDGET=${GPU_BUDGET_S:-300}
    DEV=(--device cpu)
    FRAMES=(--tiny --repeats 1 --encode-frames 2)
    BATCH=2
    RUNTIMES=torch,forms,onnx  # compile is tested in tests/methods/ditto/test_runtimes.py
    NETS=(--tiny --steps 2)
    LONG=(--seconds 1 --stream-seconds 1)
    SHORT=(--seconds 1 --stream-seconds 1)
    SESSIONS=1
    PRECISION=(--tiny --networks decoder,lmdm)
    TESTS=(--collect-only)
else
    BUDGET=${GPU_BUDGET_S:-500}
    DEV=(--device cuda)
    FRAMES=(--repeats 10 --encode-frames 100)
    BATCH=16
    RUNTIMES=torch,forms,compile,onnx
    NETS=(--full-random --work "$WORK")
    LONG=(--seconds 10 --stream-seconds 6)
    SHORT=(--seconds 2 --stream-seconds 6)
    SESSIONS=16
    PRECISION=()
    TESTS=(-rs)
fi
# onnx on a GPU needs onnxruntime-gpu (the `gpu` extra, too large to carry in a kit); with
# the CPU build it would time the CPU provider at batch 16, minutes of the budget.
if ((!SMOKE)) && ! "$PY" -c 'import onnxruntime as o, sys
sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
    RUNTIMES=torch,forms,compile
    say "onnxruntime has no CUDA provider here: the onnx runtime is not timed"
fi
START=$(date +%s)
SUMMARY=()
FAILED=0
UNRUN=0

# step NAME LIMIT_S COMMAND...: runs COMMAND for at most LIMIT_S (and what is left of the
# budget), its output into the log, its JSON lines into the figures.
step() {
    local name=$1 limit=$2 rc left t0 out
    shift 2
    if [[ -n ${GPU_STEPS:-} && ",$GPU_STEPS," != *",$name,"* ]]; then return; fi
    left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 15)); then
        SUMMARY+=("$name: not run, the budget was spent")
        UNRUN=1
        return
    fi
    ((limit > left)) && limit=$left
    say "## $name (at most ${limit} s): $*"
    out=$(mktemp)
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$out" 2>&1
    rc=$?
    cat "$out" >>"$LOG"
    grep '^{' "$out" | sed "s/^{/{\"step\": \"$name\", /" >>"$FIGURES"
    grep '^{' "$out"
    local took=$(($(date +%s) - t0))
    if ((rc == 0)); then
        SUMMARY+=("$name: ok, ${took} s")
    else
        FAILED=1
        ((rc == 124 || rc == 137)) && SUMMARY+=("$name: stopped at its ${limit} s limit") ||
            SUMMARY+=("$name: failed (exit $rc), ${took} s")
        tail -n 12 "$out" | grep -v '^{' | sed 's/^/    /'
    fi
    rm -f "$out"
}

step env 60 "$PY" - <<'PYEOF'
import json, platform
out = {"python": platform.python_version()}
try:
    import numpy, torch
    out |= {"torch": torch.__version__, "numpy": numpy.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    import onnxruntime
    out["ort_providers"] = onnxruntime.get_available_providers()
    import av
    from talkinghead.media.writer import hardware_encoder_works
    out |= {"av": av.__version__, "nvenc": hardware_encoder_works("h264_nvenc")}
    import talkinghead.methods.ditto.pipeline  # noqa: F401  everything the pipeline imports
    out["talkinghead"] = "imports"
finally:
    print(json.dumps(out))
PYEOF
if ((!SMOKE)) && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    say "no CUDA device: nothing to time here (on a CPU: bash benchmarks/gpu.sh --smoke)"
    for line in "${SUMMARY[@]}"; do say "  $line"; done
    exit 2
fi
step frames-b16 200 "$PY" benchmarks/frame_path.py "${DEV[@]}" "${FRAMES[@]}" --batch "$BATCH" \
    --runtimes "$RUNTIMES" --frame-sizes 512x512,1080x1920
step e2e-fp16 300 "$PY" benchmarks/pipeline.py "${NETS[@]}" "${FACE[@]}" "${DEV[@]}" --fp16 \
    "${LONG[@]}" --sessions "$SESSIONS"
step e2e-fp16-1080p 150 "$PY" benchmarks/pipeline.py "${NETS[@]}" "${FACE[@]}" "${DEV[@]}" \
    --fp16 --frame 1920x1080 "${LONG[@]}" --sessions 0
step frames-b16-fp16 90 "$PY" benchmarks/frame_path.py "${DEV[@]}" "${FRAMES[@]}" --batch "$BATCH" \
    --runtimes torch,forms --fp16 --frame-sizes 512x512
step frames-b1 120 "$PY" benchmarks/frame_path.py "${DEV[@]}" "${FRAMES[@]}" --batch 1 \
    --runtimes "$RUNTIMES" --frame-sizes 512x512
step e2e-fp16-low-latency 150 "$PY" benchmarks/pipeline.py "${NETS[@]}" "${FACE[@]}" \
    "${DEV[@]}" --fp16 --online-fuse 5 "${SHORT[@]}" --sessions "$SESSIONS"
step e2e-fp32 200 "$PY" benchmarks/pipeline.py "${NETS[@]}" "${FACE[@]}" "${DEV[@]}" \
    "${LONG[@]}" --sessions "$SESSIONS"
step precision 120 "$PY" benchmarks/precision.py "${DEV[@]}" "${PRECISION[@]}"
step tests 200 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" tests/face/test_device_paste.py \
    tests/methods/ditto/test_runtimes.py tests/media/test_writer.py

say "## summary ($(($(date +%s) - START)) s of a ${BUDGET} s budget; figures: $FIGURES)"
for line in "${SUMMARY[@]}"; do say "  $line"; done
# 1: a step failed; 3: none failed, but some had no time (run them with GPU_STEPS).
((FAILED)) && exit 1
((UNRUN)) && exit 3
exit 0
