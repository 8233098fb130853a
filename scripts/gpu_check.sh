#!/usr/bin/env bash
# The project's prepared GPU check (README, "GPU check"): every CUDA path in one run of a few minutes.
#
# On the GPU machine, through the device tool, once per GPU-lent session (one call):
#   bash scripts/gpu_check.sh --fetch-wheels      (here first: sageattention's 20 kB wheel into .whl/, git-ignored)
#   run(command="bash scripts/gpu_check.sh", timeout_s=540,
#       carry=[".comfyui/ComfyUI/comfy/text_encoders/llama_tokenizer", ".comfyui/ComfyUI/comfy/sd1_tokenizer", ".whl"])
#   then copy gpu.json to bench/results/gpu.json and gpu.md into bench/RESULTS.md's GPU section, and commit.
# Here, on any CPU (the tests run this):
#   bash scripts/gpu_check.sh --dry-run [--out DIR]
#
# Python: $PYTHON, else the repo's .venv, else python3 (the GPU machine's own torch: nothing to install
# there). Output: $OUT (the device tool's folder) or bench/_work/gpu: gpu.json, gpu.md, gpu_check.log,
# nvidia-smi.txt. Exit status: 0 all passed or skipped, 1 a check failed, 2 no CUDA device without --dry-run.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${1:-}" = "--fetch-wheels" ]; then  # here, before the device call: what the GPU machine lacks
  mkdir -p .whl && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude; }
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "sageattention==1.0.6"
fi
case " $* " in
  *" --dry-run "*) ;;
  *) if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (sageattention), installed outside the image
       "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
         .whl/*.whl && export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
     fi ;;
esac
export OUT="${OUT:-$ROOT/bench/_work/gpu}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1; fi
"$PY" scripts/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
