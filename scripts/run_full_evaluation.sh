#!/usr/bin/env bash
# The full an8Flower evaluation, from nothing: for each variant render the dataset at the default
# size (once), then for each training seed train the small CNN, collect statistics on the train
# split, fit the mu-LASSO (mu = 5, as the method's authors did for an8Flower), average the
# interpretations, and evaluate every method on the test split. Results are copied to
# results/an8flower-<variant>-seed<seed>.json (+ CSVs incl. per_image.csv, and plots); at the end
# scripts/summarize_seeds.py writes results/an8flower-summary.md (per variant and seed: vebi's
# default, the demo's variant and the best baseline, paired differences with 95 % intervals).
#
#   bash scripts/run_full_evaluation.sh                 # both variants, seeds 0 1 2
#   VARIANTS=single-6c SEEDS=0 bash scripts/run_full_evaluation.sh
#
# Steps whose output exists are skipped (the renderer resumes by itself), unless an earlier step of
# the variant ran again; FORCE=1 redoes them all.
# Training uses vebi train's defaults, spelled out (as of this script) so later changes of the
# defaults do not change these results.
# RUNS (default runs/, git-ignored) holds the data and run folders; EVAL_ARGS adds options to
# `vebi evaluate`. The same rendered data serve every seed of a variant (only training varies).
# Besides, per variant, an ablation-only evaluation of a mu = 20 fit of the first seed's network
# goes to results/an8flower-<variant>-ablation-mu20.json (+ CSVs and plot); SUPPLEMENT=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
VEBI=${VEBI:-.venv/bin/vebi}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs}
VARIANTS=${VARIANTS:-"single-6c double-12c"}
SEEDS=${SEEDS:-"0 1 2"}
FORCE=${FORCE:-0}
EVAL_ARGS=${EVAL_ARGS:-}

# todo FILE: whether a step must run (its output FILE is missing, or an earlier step ran); then every later step runs
todo() {
  if [ "$FORCE" = 1 ] || [ "$STALE" = 1 ] || [ ! -e "$1" ]; then STALE=1; return 0; fi
  return 1
}

for V in $VARIANTS; do
  DATA="$RUNS/data-$V"
  echo "== $V: data $DATA"
  $VEBI an8flower --variant "$V" --per-class 500 --size 112 --seed 0 -o "$DATA" --no-progress
  FIRST=""
  for S in $SEEDS; do
  RUN="$RUNS/an8flower-$V-seed$S"
  FIRST=${FIRST:-$RUN}
  STALE=0
  echo "== $V, training seed $S: run $RUN"
  if todo "$RUN/model/model.pt"; then
    $VEBI train "$DATA" -o "$RUN/model" --epochs 12 --batch-size 64 --lr 0.002 --weight-decay 0.0001 --shift 4 \
      --width 32 --first-stride 4 --first-kernel 7 --batch-norm --seed "$S" --no-progress
  fi
  MODEL_ARGS=$($PY -c 'import json, sys
info = json.load(open(sys.argv[1]))
print(" ".join(f"--model-arg {k}={json.dumps(v)}" for k, v in info["model_args"].items()))' "$RUN/model/model.json")
  if todo "$RUN/stats.json"; then
    # shellcheck disable=SC2086
    $VEBI collect vebi.an8flower.net:an8net "$DATA/images/train" -o "$RUN" --weights "$RUN/model/model.pt" $MODEL_ARGS
  fi
  if todo "$RUN/relevance.json"; then
    $VEBI fit "$RUN" --mu 5
  fi
  if todo "$RUN/interpretation/interpretation.json"; then
    $VEBI interpret "$RUN" "$DATA/images/train" --no-progress
  fi
  if todo "$RUN/evaluation/results.json"; then
    # shellcheck disable=SC2086
    $VEBI evaluate "$RUN" "$DATA/images/test" --masks "$DATA/masks/test" --seed 0 -o "$RUN/evaluation" $EVAL_ARGS
  fi
  OUT="results/an8flower-$V-seed$S"
  mkdir -p "$OUT"
  cp "$RUN/evaluation/results.json" "$OUT.json"
  cp "$RUN/evaluation/"*.csv "$RUN/evaluation/"*.png "$OUT/"
  cp "$RUN/model/model.json" "$OUT/model.json"
  done
  # Supplementary ablation of the first seed's network with a looser L1 budget (mu = 20: more
  # relevant features per class), the first 10 of each class in |weight| order; no explanation methods.
  RUN=$FIRST
  SUP="$RUN-mu20"
  if [ "${SUPPLEMENT:-1}" = 1 ]; then
  if todo "$SUP/evaluation/results.json"; then
    mkdir -p "$SUP"
    cp "$RUN/stats.json" "$RUN/stats.safetensors" "$RUN/run.json" "$SUP/"
    $VEBI fit "$SUP" --mu 20
    $VEBI evaluate "$SUP" "$DATA/images/test" --methods none --max-ablation-features 10 --seed 0 \
      -o "$SUP/evaluation"
  fi
  cp "$SUP/evaluation/results.json" "results/an8flower-$V-ablation-mu20.json"
  mkdir -p "results/an8flower-$V-ablation-mu20"
  cp "$SUP/evaluation/"*.csv "$SUP/evaluation/"*.png "results/an8flower-$V-ablation-mu20/"
  fi
done
$PY scripts/summarize_seeds.py results --out results/an8flower-summary.md
