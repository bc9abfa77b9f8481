#!/usr/bin/env bash
# The CUDA checks of clearclip_d2 on a fresh GPU machine, in under 10 minutes, into one report file:
#   1. installs this project's packages that the machine lacks from the wheels in .whl/
#      (no network needed), and unpacks the sal-detectron2 wheel as tools/install_env.sh does;
#   2. records the machine (nvidia-smi, torch, CUDA);
#   3. runs `pytest -m cuda tests/test_cuda.py` (CUDA fp32 vs CPU fp32, fp16/bf16/fp16_weights,
#      class chunks, the memory bound, CUDA/NCCL evaluation, each image encoder; docs/PERFORMANCE.md#gpu-checks);
#   4. runs tools/benchmark.py on CUDA (timed with CUDA events) at fp32, fp16 and bf16, random
#      ViT-B/16 weights, COCO-Stuff's 171 classes, one 448 x 640 image;
#   5. runs tools/benchmark.py --dataset (the evaluation loop around the model) on a synthetic
#      COCO-Stuff of 40 images of 480 x 640.
#
# Usage (from the repository root, on the GPU machine):  bash tools/gpu_check.sh [REPORT]
#   REPORT defaults to gpu_check_report.txt; it is written even when a step fails (the exit
#   status is then 1). PYTHON (default python3) must have PyTorch with CUDA.
#
# Preparing .whl/ (on a machine with pip and internet, in the repository root; the GPU machine
# needs CPython 3.12 x86-64 wheels). The machine's image already holds torch, torchvision, numpy,
# scipy, Pillow, opencv-python-headless, scikit-image, matplotlib, timm, safetensors,
# huggingface_hub, tqdm, tabulate, cloudpickle, tensorboard, packaging, pyyaml, regex, portalocker
# and pytest, so only the rest of requirements.txt travels (the 64 MiB limit of what travels
# leaves no room for the big ones):
#   echo /.whl/ >> .git/info/exclude
#   PLATFORM="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
#     --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
#     --platform manylinux1_x86_64"
#   python3 -m pip download --no-deps $PLATFORM -d .whl open_clip_torch==3.3.0 ftfy wcwidth \
#     pycocotools==2.0.11 yacs==0.1.8 termcolor==3.3.0 omegaconf==2.3.1 hydra-core==1.3.8
#   python3 -m pip wheel --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 \
#     antlr4-python3-runtime==4.9.3          # pure-Python sdists: built here into py3-none-any wheels
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.10 -d .whl sal-detectron2==0.7.2
# (the versions are requirements.txt's; on another image, `python3 -m pip list` there says what is
# missing.) Then, e.g. with this workplace's device tool: run `bash tools/gpu_check.sh "$OUT/report.txt"`
# carrying .whl.
set -uo pipefail

cd "$(dirname "$0")/.."
REPORT="${1:-gpu_check_report.txt}"
PYTHON="${PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/clearclip_d2_site}"
PARTIAL="$REPORT.partial"
FAILED=()
START=$SECONDS

: > "$PARTIAL"
finish() { mv -f "$PARTIAL" "$REPORT"; echo "gpu_check.sh: report in $REPORT"; }
trap finish EXIT
log() { printf '%s\n' "$*" | tee -a "$PARTIAL"; }
# step NAME SECONDS COMMAND...: run COMMAND with a time limit, its output into the report.
step() {
  local name="$1" limit="$2"
  shift 2
  log "" "==> $name ($(date -u +%H:%M:%S), limit ${limit} s)" "+ $*"
  timeout "$limit" "$@" 2>&1 | tee -a "$PARTIAL"
  local rc="${PIPESTATUS[0]}"
  log "<== $name: exit $rc after $((SECONDS - START)) s in all"
  [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
}

log "clearclip_d2 GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# ----------------------------------------------------------------------------- 1. packages
mkdir -p "$SITE"
shopt -s nullglob
D2_WHEELS=(.whl/sal_detectron2-*.whl)
OTHER_WHEELS=()
for wheel in .whl/*.whl; do
  case "$wheel" in .whl/sal_detectron2-*) ;; *) OTHER_WHEELS+=("$wheel") ;; esac
done
if [ "${#OTHER_WHEELS[@]}" -gt 0 ]; then
  step "install ${#OTHER_WHEELS[@]} wheels from .whl/" 120 \
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${OTHER_WHEELS[@]}"
fi
if [ "${#D2_WHEELS[@]}" -gt 0 ]; then
  # Its compiled _C is for CPython 3.10 and is not used (ClearCLIP needs none of it): unpack, as install_env.sh does.
  step "unpack ${D2_WHEELS[0]}" 60 "$PYTHON" -m zipfile -e "${D2_WHEELS[0]}" "$SITE/detectron2_sal"
fi
export PYTHONPATH="$PWD:$SITE:$SITE/detectron2_sal${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
step "imports" 120 "$PYTHON" -c 'import torch, detectron2, open_clip, fvcore, clearclip_d2; print("imports ok")'

# ----------------------------------------------------------------------------- 2. machine
step "machine" 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  \"$PYTHON\" -c 'import torch, sys; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpus\", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'"

# ----------------------------------------------------------------------------- 3. CUDA tests
step "pytest -m cuda tests/test_cuda.py" 330 \
  "$PYTHON" -m pytest -m cuda tests/test_cuda.py -q -rA -p no:cacheprovider --durations=5

# ----------------------------------------------------------------------------- 4. benchmark
for precision in fp32 fp16 bf16; do
  step "tools/benchmark.py on CUDA, $precision" 90 \
    "$PYTHON" tools/benchmark.py --config-file configs/clearclip_coco.yaml --size 448x640 --runs 10 --warmup 3 --no-flops \
    --opts MODEL.DEVICE cuda MODEL.CLEARCLIP.PRECISION "$precision" MODEL.CLEARCLIP.PRETRAINED "" \
    MODEL.CLEARCLIP.CACHE_DIR "" MODEL.CLEARCLIP.PROMPT_TEMPLATES "['a photo of a {}.']"
done

# ----------------------------------------------------------------------------- 5. evaluation loop
# The loop of Trainer.test around the model (docs/PERFORMANCE.md#evaluation-loop): ViT-B/16 on a
# synthetic 480 x 640, 171-class COCO-Stuff; the report gives the model's ms per image on this GPU
# (the reference of --gpu-model-ms) and everything else the loop does per image.
LOOP_DATA="$(mktemp -d)"
step "synthetic COCO-Stuff for the evaluation loop" 60 "$PYTHON" -c "import pathlib, sys; sys.path.insert(0, 'tests'); \
from synthetic_coco import write_coco_stuff_layout; \
write_coco_stuff_layout(pathlib.Path('$LOOP_DATA'), [(480, 640)] * 40, num_labels=171, block=32)"
step "tools/benchmark.py --dataset on CUDA (evaluation loop)" 120 env DETECTRON2_DATASETS="$LOOP_DATA" \
  "$PYTHON" tools/benchmark.py --config-file configs/clearclip_coco.yaml --dataset coco_2017_val_stuff_sem_seg --num-images 40 \
  --opts MODEL.DEVICE cuda MODEL.CLEARCLIP.PRETRAINED "" MODEL.CLEARCLIP.CACHE_DIR "" \
  MODEL.CLEARCLIP.PROMPT_TEMPLATES "['a photo of a {}.']"
rm -rf "$LOOP_DATA"

log "" "==> summary: $((SECONDS - START)) s"
if [ "${#FAILED[@]}" -gt 0 ]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
log "all steps passed"
