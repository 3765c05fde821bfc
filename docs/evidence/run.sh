#!/usr/bin/env bash
# Reproduces the offline evidence v1 (docs/evidence/v1.md) on a 2-core CPU machine.
# Usage: bash docs/evidence/run.sh [WORK_DIR]   (default: evidence_run/)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-evidence_run}
PY=${PY:-.venv/bin/python}
start=$(date +%s)
# Main sweep: 7 algorithms x test envs {0, 5} x 3 trials.
$PY -m domainbed.scripts.sweep launch --sweep sweeps/offline_evidence.json --output_dir "$WORK/main" \
    --command_launcher local --skip_confirmation --no_progress
# Lambda sensitivity of ERM_FTLP on test env 5 (lambda 0.1, the default, is in the main sweep).
for lam in 0 0.01 1.0; do
  $PY -m domainbed.scripts.sweep launch --sweep sweeps/offline_evidence.json --output_dir "$WORK/lambda_$lam" \
      --algorithms ERM_FTLP --test_envs_subset 5 --hparams "{\"image_size\": 32, \"ftlp_lambda\": $lam}" \
      --command_launcher local --skip_confirmation --no_progress
done
echo "total wall time: $(( $(date +%s) - start )) s"
