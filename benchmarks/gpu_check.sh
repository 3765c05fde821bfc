#!/usr/bin/env bash
# GPU check of issues 5 and 13, for a machine with one CUDA GPU, as one prepared script:
#   1. the CUDA tests (tests/test_cuda.py), including the device input pipeline's;
#   2. one process, the paper's scale: ResNet-50, 224 px, 3 source domains x 32 images, bf16,
#      random weights (pretrained false): FT-LP/ERM time and memory ratios, our ERM against
#      DomainBed-style fp32 ERM, and loader vs step images/s of the CPU and device input
#      pipelines on real JPEG files (the last JSON line's "pipelines" entry).
# Writes machine.txt, pytest_cuda.log, step_time_cuda.json and step_time_cuda.log into
# ${OUT:-benchmarks/results}; the JSON is rewritten after each benchmark, so a run that hits
# its timeout keeps what it measured.
# Each step has a timeout (TEST_TIMEOUT, BENCH_TIMEOUT seconds) so that a run ends well within
# a 15-minute device budget and leaves room for a rerun.
# Options: COMPILE=1 adds (b) and (c) with the compile hparam (minutes of compilation; the
# default of that hparam is decided on these figures), ABLATIONS=1 adds the single-switch
# ablations and the evaluation benchmark.
# Needs python3 with torch, timm, torchvision, pytest, tensorboard, tqdm, pandas; no extras.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
TEST_TIMEOUT="${TEST_TIMEOUT:-180}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-300}"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi -L
  nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
} 2>&1 | tee "$RESULTS/machine.txt"

# A failing test must not keep the benchmark from running: record the status and go on.
set +e
timeout "$TEST_TIMEOUT" python3 -m pytest -q -s -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$RESULTS/pytest_cuda.log"
echo "pytest exit status: ${PIPESTATUS[0]}" | tee -a "$RESULTS/pytest_cuda.log"
set -e

extra=()
if [[ "${COMPILE:-0}" == "1" ]]; then
  extra+=(--compile)
  BENCH_TIMEOUT="${BENCH_TIMEOUT_COMPILE:-480}"
fi
if [[ "${ABLATIONS:-0}" == "1" ]]; then
  extra+=(--ablations)
fi
timeout "$BENCH_TIMEOUT" python3 benchmarks/step_time.py --device cuda --backbone resnet50 --image_size 224 \
  --batch 32 --domains 3 --precision bf16 --warmup 10 --steps 30 --repeats 3 --pipelines cpu,device \
  ${extra[@]+"${extra[@]}"} --json "$RESULTS/step_time_cuda.json" 2>&1 | tee "$RESULTS/step_time_cuda.log"
