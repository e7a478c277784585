#!/usr/bin/env bash
# The CPU reproduction (sweeps/reproduction_cpu.py): each grammar seed's grid, the clustering
# learner on its data, then one report over all seeds. Re-running resumes: launch.local picks up
# each work directory's newest checkpoint (a finished seed trains and evaluates nothing again), and the
# learner and the report are recomputed (a minute or two).
#   RUNS=runs/repro_cpu  SEEDS="0 1 2"  PYTHON=python  ARG=""  (ARG=quick: the seconds-long variant)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-runs/repro_cpu}"
seeds="${SEEDS:-0 1 2}"
python="${PYTHON:-python}"
suffix="${ARG:+,$ARG}"
workdirs=()
for k in $seeds; do
  dir="$runs/seed$k"
  echo "== grammar seed $k: $dir ($(date -u +%H:%M:%S) UTC)"
  "$python" -m launch.local --config "sweeps/reproduction_cpu.py:seed=$k$suffix" --workdir "$dir" --no_progress
  "$python" -m launch.cluster --workdir "$dir"
  workdirs+=("$dir")
done
"$python" -m launch.report --workdir "${workdirs[@]}" --at best --out "$runs/report"
echo "== done ($(date -u +%H:%M:%S) UTC): $runs/report/report.md"
