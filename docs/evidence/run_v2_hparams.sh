#!/usr/bin/env bash
# Evidence v2 hparam search (sweeps/offline_evidence_v2_hparams.json): ERM and ERM_FTLP on
# OfflineDigits, hparams seeds 1..4, all 4 test domains, 1 trial, paired seeds (32 jobs).
# Launched hparams seed by hparams seed, ERM and ERM_FTLP together, so that paired points of
# the lambda curve accumulate in order. Resumable: `sweep launch` starts only jobs that are
# not done; rerun to continue. Then: python docs/evidence/v2/make_report.py
# Usage: bash docs/evidence/run_v2_hparams.sh [LAST_HPARAMS_SEED]   (default 4)
set -uo pipefail  # not -e: one failed job must not stop the rest (rerun the script to retry it)
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/evidence/v2/hparam_records}
LAST=${1:-4}
start=$(date +%s)
for h in $(seq 1 "$LAST"); do
  $PY -m domainbed.scripts.sweep launch --sweep sweeps/offline_evidence_v2_hparams.json --output_dir "$OUT" \
      --n_hparams_from "$h" --n_hparams "$((h + 1))" --command_launcher local --skip_confirmation --no_progress
done
echo "wall time of this launch: $(( $(date +%s) - start )) s"
