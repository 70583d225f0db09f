#!/usr/bin/env bash
# The full an8Flower evaluation, from nothing: for each variant render the dataset at the default
# size, train the small CNN, collect statistics on the train split, fit the mu-LASSO (mu = 5, as the
# method's authors did for an8Flower), average the interpretations, and evaluate every method on
# the test split. Results are copied to results/an8flower-<variant>.json (+ CSVs and plots).
#
#   bash scripts/run_full_evaluation.sh                 # both variants
#   VARIANTS=single-6c bash scripts/run_full_evaluation.sh
#
# Steps whose output exists are skipped (the renderer resumes by itself); FORCE=1 redoes them.
# RUNS (default runs/, git-ignored) holds the data and run folders; EVAL_ARGS adds options to
# `vebi evaluate`.
set -euo pipefail
cd "$(dirname "$0")/.."
VEBI=${VEBI:-.venv/bin/vebi}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs}
VARIANTS=${VARIANTS:-"single-6c double-12c"}
FORCE=${FORCE:-0}
EVAL_ARGS=${EVAL_ARGS:-}

todo() { [ "$FORCE" = 1 ] || [ ! -e "$1" ]; }

for V in $VARIANTS; do
  DATA="$RUNS/data-$V"
  RUN="$RUNS/an8flower-$V"
  echo "== $V: data $DATA, run $RUN"
  $VEBI an8flower --variant "$V" --per-class 500 --size 112 --seed 0 -o "$DATA" --no-progress
  if todo "$RUN/model/model.pt"; then
    $VEBI train "$DATA" -o "$RUN/model" --seed 0 --no-progress
  fi
  MODEL_ARGS=$($PY -c 'import json, sys
info = json.load(open(sys.argv[1]))
print(" ".join(f"--model-arg {k}={json.dumps(v)}" for k, v in info["model_args"].items()))' "$RUN/model/model.json")
  if todo "$RUN/stats.json"; then
    # shellcheck disable=SC2086
    $VEBI collect vebi.nets:an8net "$DATA/images/train" -o "$RUN" --weights "$RUN/model/model.pt" $MODEL_ARGS
  fi
  if todo "$RUN/relevance.json"; then
    $VEBI fit "$RUN" --mu 5
  fi
  if todo "$RUN/interpretation/interpretation.json"; then
    $VEBI interpret "$RUN" "$DATA/images/train" --no-progress
  fi
  if todo "$RUN/evaluation/results.json"; then
    # shellcheck disable=SC2086
    $VEBI evaluate "$RUN" "$DATA/images/test" --masks "$DATA/masks/test" --seed 0 -o "$RUN/evaluation" \
      --no-progress $EVAL_ARGS
  fi
  mkdir -p results
  cp "$RUN/evaluation/results.json" "results/an8flower-$V.json"
  mkdir -p "results/an8flower-$V"
  cp "$RUN/evaluation/"*.csv "$RUN/evaluation/"*.png "results/an8flower-$V/"
  cp "$RUN/model/model.json" "results/an8flower-$V/model.json"
done
