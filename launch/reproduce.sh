#!/usr/bin/env bash
# The CPU reproduction of the paper's RHM claims (sweeps/reproduction_cpu_hour.py): one sweep in one
# work directory (m = 3 and 2, three realizations each, two programs), the clustering learner on the
# same datasets, then the report with thresholds, collapse and the time readings of every model.
# Re-running resumes: launch.local picks up the newest checkpoint (a finished sweep trains nothing
# again), and the learner and the report are recomputed (a minute or two).
#   RUNS=runs/repro_cpu_hour  PYTHON=python  ARG=""  (ARG=quick: the seconds-long variant)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${RUNS:-runs/repro_cpu_hour}"
python="${PYTHON:-python}"
spec="sweeps/reproduction_cpu_hour.py${ARG:+:$ARG}"
start=$(date +%s)
echo "== sweep: $dir ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg))"
"$python" -m launch.local --config "$spec" --workdir "$dir" --no_progress
echo "== clustering learner ($(date -u +%H:%M:%S) UTC)"
"$python" -m launch.cluster --workdir "$dir"
echo "== report ($(date -u +%H:%M:%S) UTC)"
"$python" -m launch.report --workdir "$dir" --at best --out "$dir/report"
echo "== done in $(( $(date +%s) - start )) s ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)): $dir/report/report.md"
