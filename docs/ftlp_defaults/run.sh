#!/usr/bin/env bash
# Pre-registered choice of FT-LP's defaults on a development set (docs/ftlp.md, "Defaults, and how they were chosen").
# ColoredMNISTSubset, test domain -90% (env 2) held out; the choice reads only the
# training-domain validation accuracy (mean `out` accuracy of envs 0 and 1). None of this
# touches the evidence sweep's benchmarks (OfflineDigits, RotatedMNISTSubset).
# Resumable: rerun to finish; records land in docs/ftlp_defaults/records/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=docs/ftlp_defaults/records
COMMON=(--datasets ColoredMNISTSubset --n_hparams 1 --n_trials ${TRIALS:-2} --single_test_envs --test_envs_subset 2
        --steps 300 --checkpoint_freq 50 --output_dir "$OUT" --command_launcher local --skip_confirmation --skip_model_save)
$PY -m domainbed.scripts.sweep launch "${COMMON[@]}" --algorithms ERM
for post in sample point; do
  for lam in 0.01 0.1 1.0; do
    $PY -m domainbed.scripts.sweep launch "${COMMON[@]}" --algorithms ERM_FTLP \
      --hparams "{\"ftlp_posterior\": \"$post\", \"ftlp_lambda\": $lam, \"ftlp_layers\": \"final\"}"
  done
done
