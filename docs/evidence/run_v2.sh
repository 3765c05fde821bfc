#!/usr/bin/env bash
# Evidence v2 (sweeps/offline_evidence_v2.json), launched trial by trial so that paired
# comparisons accumulate in order: for each trial, the FT-LP question first (ERM, ERM_FTLP,
# the shuffled-prior control, MIRO), then the other bases and their FT-LP variants.
# Resumable: `sweep launch` starts only jobs that are not done; rerun to continue.
# Usage: bash docs/evidence/run_v2.sh [TRIALS] [ARMS...]   (default 5 trials, every arm)
# SWEEP=... picks another sweep file, e.g. the extra trials of offline_evidence_v2_more_trials.json.
set -uo pipefail  # not -e: one failed job must not stop the rest (rerun the script to retry it)
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/evidence/v2/records}
SWEEP=${SWEEP:-sweeps/offline_evidence_v2.json}
TRIALS=${1:-5}
shift || true
ARM_GROUPS=("ERM ERM_FTLP ERM_FTLP_ShuffledPrior MIRO" "CORAL CORAL_FTLP SWAD SWAD_FTLP")
[ $# -gt 0 ] && ARM_GROUPS=("$*")
start=$(date +%s)
for t in $(seq 1 "$TRIALS"); do
  for group in "${ARM_GROUPS[@]}"; do
    # shellcheck disable=SC2086
    $PY -m domainbed.scripts.sweep launch --sweep "$SWEEP" --output_dir "$OUT" \
        --n_trials "$t" --algorithms $group --command_launcher local --skip_confirmation --no_progress
  done
done
echo "wall time of this launch: $(( $(date +%s) - start )) s"
