#!/usr/bin/env bash
# Evidence v3, pilot: ERM's learning curves in each regime of the map, one trial, to choose
# the learning rate and step count at which training-domain validation accuracy plateaus
# before any comparison runs. One hard test domain per dataset: OfflineDigits' mnist_m
# (env 1) and RotatedMNISTSubset's 75 degrees (env 5). 32 px with batch statistics (the
# probe finds the frozen prior's final channels dead there); 64 and 128 px with frozen
# BatchNorm. Resumable: rerun to continue; two copies of this script share the jobs.
# Usage: bash docs/evidence/v3/run_pilot.sh
set -uo pipefail  # not -e: one failed job must not stop the rest (rerun the script to retry it)
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/evidence/v3/pilot}
export OMP_NUM_THREADS=1
launch() {  # dataset test_env steps hparams
  $PY -m domainbed.scripts.sweep launch --datasets "$1" --test_envs_subset "$2" --algorithms ERM \
      --n_hparams 1 --n_trials 1 --single_test_envs --paired_seeds --steps "$3" --checkpoint_freq 100 \
      --skip_model_save --hparams "$4" --output_dir "$OUT" --command_launcher local --skip_confirmation --no_progress
}
for lr in 0.0003 0.001; do
  launch RotatedMNISTSubset 5 800 "{\"image_size\": 64, \"freeze_bn\": true, \"lr\": $lr}"
  launch OfflineDigits 1 800 "{\"image_size\": 64, \"freeze_bn\": true, \"lr\": $lr}"
done
launch RotatedMNISTSubset 5 800 '{"image_size": 32, "freeze_bn": false, "lr": 0.001}'
launch OfflineDigits 1 800 '{"image_size": 32, "freeze_bn": false, "lr": 0.001}'
launch RotatedMNISTSubset 5 600 '{"image_size": 128, "freeze_bn": true, "lr": 0.0003}'
launch OfflineDigits 1 600 '{"image_size": 128, "freeze_bn": true, "lr": 0.0003}'
