#!/usr/bin/env bash
# Evidence v3, the regime map: does FT-LP's gain over ERM (and over the shuffled-prior
# control) grow with the information the prior carries about the test domain?
#
# Cells: OfflineDigits (test domain mnist_m, env 1) and RotatedMNISTSubset (75 degrees,
# env 5) at 64 and 128 px with frozen BatchNorm, lr 3e-4, 400 steps (the pilot, run_pilot.sh,
# shows training-domain validation flat from step ~200-400 on); the 32 px cells are evidence v2's
# records (batch statistics, lr 1e-3), to which this script adds only MIRO with its
# variance started at the prior's (paired with v2's trials: a job's seed does not depend on
# the algorithm or the hparams). Arms: ERM, ERM_FTLP, the shuffled-prior control, MIRO as
# published, MIRO with miro_var_init=prior. 128 px costs about 4x per job: only the cell where
# the probe reads the test domain best (RotatedMNISTSubset, 86 %) runs, without MIRO's two
# arms (arms and sizes are cut before trials), plus the lambda curve there (ERM_FTLP at a
# tenth and ten times the default ftlp_lambda, LAMBDA_TRIALS trials).
#
# Trial-major: every cell's trial t runs before any trial t+1, so the map fills evenly and
# any stop leaves paired trials. Resumable: rerun to continue (interrupted jobs resume from
# their checkpoints); two copies of this script share the jobs (two jobs at a time, one
# thread each). Usage: bash docs/evidence/v3/run_map.sh [TRIALS]
set -uo pipefail  # not -e: one failed job must not stop the rest (rerun the script to retry it)
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/evidence/v3/records}
TRIALS=${1:-6}
export OMP_NUM_THREADS=1
launch() {  # output trials dataset test_env steps checkpoint_freq hparams algorithms...
  local out=$1 trials=$2 dataset=$3 env=$4 steps=$5 freq=$6 hparams=$7
  shift 7
  $PY -m domainbed.scripts.sweep launch --datasets "$dataset" --test_envs_subset "$env" --algorithms "$@" \
      --n_hparams 1 --n_trials "$trials" --single_test_envs --paired_seeds --steps "$steps" \
      --checkpoint_freq "$freq" --hparams "$hparams" --output_dir "$out" \
      --command_launcher local --skip_confirmation --no_progress
}
FROZEN='"freeze_bn": true, "lr": 0.0003'
LAMBDA_TRIALS=${LAMBDA_TRIALS:-3}
MIRO_TRIALS=${MIRO_TRIALS:-3}
for t in $(seq 1 "$TRIALS"); do
  for ds_env in "RotatedMNISTSubset 5" "OfflineDigits 1"; do
    set -- $ds_env
    ds=$1 env=$2
    launch "$OUT" "$t" "$ds" "$env" 400 100 "{\"image_size\": 64, $FROZEN}" ERM ERM_FTLP ERM_FTLP_ShuffledPrior
    # MIRO as published loses 11-20 points everywhere (v2: n = 16-20): a few trials show the
    # same at 64 px; its budget goes to the core pairs' trials (arms are cut before trials).
    if [ "$t" -le "$MIRO_TRIALS" ]; then
      launch "$OUT" "$t" "$ds" "$env" 400 100 "{\"image_size\": 64, $FROZEN}" MIRO
    fi
    launch "$OUT" "$t" "$ds" "$env" 400 100 "{\"image_size\": 64, $FROZEN, \"miro_var_init\": \"prior\"}" MIRO
    # v2's 32 px cell (its sweep's settings, so these jobs pair with its records' trials)
    launch "$OUT" "$t" "$ds" "$env" 300 50 '{"image_size": 32, "miro_var_init": "prior"}' MIRO
  done
  # 128 px: RotatedMNISTSubset only (the probe's best cell); OfflineDigits at 128 px is cut for the budget.
  launch "$OUT" "$t" RotatedMNISTSubset 5 400 200 "{\"image_size\": 128, $FROZEN}" ERM ERM_FTLP ERM_FTLP_ShuffledPrior
  if [ "$t" -le "$LAMBDA_TRIALS" ]; then
    for lam in 0.01 1.0; do
      launch "$OUT" "$t" RotatedMNISTSubset 5 400 200 "{\"image_size\": 128, $FROZEN, \"ftlp_lambda\": $lam}" ERM_FTLP
    done
  fi
done
