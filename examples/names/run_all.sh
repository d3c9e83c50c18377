#!/usr/bin/env bash
# Train every model type on makemore's names.txt, one after another, then print
# the results table used in docs/results.md.
#   bash examples/names/run_all.sh path/to/names.txt runs/names
set -euo pipefail
data=${1:?names.txt path}
out=${2:-runs/names}
here=$(dirname "$0")
for model in bigram mlp rnn lstm gru transformer; do
  seqlab train --config "$here/$model.toml" --data "$data" --out "$out/$model" --quiet --json
done
python "$here/report.py" "$out"/*
