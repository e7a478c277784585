#!/usr/bin/env bash
# One model of the authors' PyTorch code and of rhm_jax, alternated on this machine (issue 12):
#   bash benchmarks/side_by_side.sh AUTHORS_REPO TORCH_PYTHON [ROUNDS] [WIDTHS]
# per width and round: the authors' code for 20 s, then rhm_jax M=1 for 20 s, and the authors'
# code once more at the end, so every rhm_jax figure has an authors' figure on each side of it.
# Prints the load average before each run; read the ratio of neighbours, not the absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$1"; torch_python="$2"; rounds="${3:-2}"; widths="${4:-256 1024}"
py="${PYTHON:-.venv/bin/python}"
for W in $widths; do
  for r in $(seq "$rounds"); do
    echo "load $(cut -d' ' -f1 /proc/loadavg)"
    "$torch_python" benchmarks/authors_speed.py --repo "$repo" --widths "$W" --seconds 20 | grep "authors W="
    echo "load $(cut -d' ' -f1 /proc/loadavg)"
    PYTHONPATH="$PWD" "$py" benchmarks/grid_throughput.py --widths "$W" --models 1 --seconds 20 | grep "train W="
  done
  echo "load $(cut -d' ' -f1 /proc/loadavg)"
  "$torch_python" benchmarks/authors_speed.py --repo "$repo" --widths "$W" --seconds 20 | grep "authors W="
done
