#!/usr/bin/env bash
# The Fashion-MNIST runs of docs/RESULTS.md, one after the other (each alone on the machine:
# two training processes on 2 cores oversubscribe OpenMP). Then the tables are rebuilt.
#   bash scripts/fashion_results.sh            # all runs
#   bash scripts/fashion_results.sh student_hard   # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(teacher_convnext student_none student_hard student_soft student_hard_deit_teacher)
for run in "${runs[@]}"; do
  echo "== $run"
  .venv/bin/deit train --config "configs/fashion/$run.yaml"
done
.venv/bin/python scripts/results.py runs/fashion --output docs/RESULTS.md
