#!/usr/bin/env bash
# GPU check of issue 5, for a machine with one CUDA GPU (about 3 minutes on an H100/H200):
#   1. the CUDA tests (tests/test_cuda.py);
#   2. the side-by-side benchmark at the paper's scale: ResNet-50, 224 px, 3 source domains
#      x 32 images, bf16, random weights (pretrained false), with the ablations and the
#      JPEG data-pipeline measurement.
# Writes step_time_cuda.json, step_time_cuda.log and pytest_cuda.log into ${OUT:-benchmarks/results}.
# Needs python3 with torch, timm, torchvision, pytest, tensorboard, tqdm, pandas; no extras.
# COMPILE=1 adds the torch.compile configurations (a minute or two of compilation more).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"

nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"

python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$RESULTS/pytest_cuda.log"

extra=()
if [[ "${COMPILE:-0}" == "1" ]]; then
  extra+=(--compile)
fi
python3 benchmarks/step_time.py --device cuda --backbone resnet50 --image_size 224 --batch 32 --domains 3 \
  --precision bf16 --warmup 10 --steps 30 --repeats 3 --ablations ${extra[@]+"${extra[@]}"} \
  --json "$RESULTS/step_time_cuda.json" 2>&1 | tee "$RESULTS/step_time_cuda.log"
