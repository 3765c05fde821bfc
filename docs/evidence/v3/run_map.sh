#!/usr/bin/env bash
# Evidence v3, the regime map: does FT-LP's gain over ERM (and over the shuffled-prior
# control) grow with the information the prior carries about the test domain?
#
# Cells: OfflineDigits (test domain mnist_m, env 1) and RotatedMNISTSubset (75 degrees,
# env 5) at 64 px, and RotatedMNISTSubset at 128 px (the probe's best cell, 86 %; OfflineDigits
# at 128 px is cut for the budget), with frozen BatchNorm, lr 3e-4, 400 steps (the pilot,
# run_pilot.sh, shows training-domain validation flat from step ~200-400 on); the 32 px cells
# are evidence v2's records (batch statistics, lr 1e-3), to which this script adds only MIRO
# with its variance started at the prior's (paired with v2's trials: a job's seed does not
# depend on the algorithm or the hparams).
#
# The budget (about 12 CPU-hours in all, 3 spent by trial 1) decides the order. Measured per
# job on this 2-core machine, two jobs at a time: 64 px 4-8 min, 128 px ERM 13 min and
# ERM_FTLP ~25 min. So arms are cut before trials:
# - core arms: ERM, ERM_FTLP and the shuffled-prior control, at 64 px (both datasets, ~35
#   CPU-min per trial) for TRIALS trials (default 7) and at 128 px (~65 CPU-min per trial) for the first
#   TRIALS_128 (default 3): the 64 px cells are cheaper and OfflineDigits' paired spread is the larger
#   (two trials: 3 points against 1 on RotatedMNISTSubset), so they get more trials;
# - secondary arms, the first SECONDARY_TRIALS trials: MIRO with miro_var_init=prior (64 and
#   32 px) and MIRO as published (64 px; at 32 px it loses 11-15 points, v2's n = 16-20);
# - the lambda curve at 128 px (ERM_FTLP at a tenth and ten times the default ftlp_lambda),
#   the first LAMBDA_TRIALS trials;
# - the plateau check, the first PLATEAU_TRIALS trials: ERM and ERM_FTLP on OfflineDigits at
#   64 px for 800 steps, because there ERM_FTLP's validation still rose at step 400 in the
#   first two trials (88 -> 95 %) while ERM's had levelled (~50 CPU-min for two trials).
#
# Trial-major: every cell's trial t runs before any trial t+1, so the map fills evenly and
# any stop leaves paired trials. Resumable: rerun to continue (interrupted jobs resume from
# their checkpoints); two copies of this script share the jobs (two jobs at a time, one
# thread each). Run it from a worktree pinned at a commit (OUT=<main checkout>/docs/evidence/v3/records),
# so that editing the main checkout cannot break a job's start-up.
# Usage: bash docs/evidence/v3/run_map.sh [TRIALS]   (TRIALS_128, SECONDARY_TRIALS, LAMBDA_TRIALS,
# PLATEAU_TRIALS from the environment)
set -uo pipefail  # not -e: one failed job must not stop the rest (rerun the script to retry it)
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/evidence/v3/records}
TRIALS=${1:-7}
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
TRIALS_128=${TRIALS_128:-3}
SECONDARY_TRIALS=${SECONDARY_TRIALS:-3}
LAMBDA_TRIALS=${LAMBDA_TRIALS:-2}
PLATEAU_TRIALS=${PLATEAU_TRIALS:-2}
CELLS64=("RotatedMNISTSubset 5" "OfflineDigits 1")
for t in $(seq 1 "$TRIALS"); do
  for ds_env in "${CELLS64[@]}"; do
    set -- $ds_env
    launch "$OUT" "$t" "$1" "$2" 400 100 "{\"image_size\": 64, $FROZEN}" ERM ERM_FTLP ERM_FTLP_ShuffledPrior
  done
  if [ "$t" -le "$TRIALS_128" ]; then
    launch "$OUT" "$t" RotatedMNISTSubset 5 400 200 "{\"image_size\": 128, $FROZEN}" ERM ERM_FTLP ERM_FTLP_ShuffledPrior
  fi
  if [ "$t" -le "$SECONDARY_TRIALS" ]; then
    for ds_env in "${CELLS64[@]}"; do
      set -- $ds_env
      launch "$OUT" "$t" "$1" "$2" 400 100 "{\"image_size\": 64, $FROZEN, \"miro_var_init\": \"prior\"}" MIRO
      # v2's 32 px cell (its sweep's settings, so these jobs pair with its records' trials)
      launch "$OUT" "$t" "$1" "$2" 300 50 '{"image_size": 32, "miro_var_init": "prior"}' MIRO
      launch "$OUT" "$t" "$1" "$2" 400 100 "{\"image_size\": 64, $FROZEN}" MIRO
    done
  fi
  if [ "$t" -le "$LAMBDA_TRIALS" ]; then
    for lam in 0.01 1.0; do
      launch "$OUT" "$t" RotatedMNISTSubset 5 400 200 "{\"image_size\": 128, $FROZEN, \"ftlp_lambda\": $lam}" ERM_FTLP
    done
  fi
  if [ "$t" -le "$PLATEAU_TRIALS" ]; then
    launch "$OUT" "$t" OfflineDigits 1 800 100 "{\"image_size\": 64, $FROZEN}" ERM ERM_FTLP
  fi
done
