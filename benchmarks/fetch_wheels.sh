#!/usr/bin/env bash
# Download the pure-Python wheels that the GPU image lacks into wheels/ (ignored by git), so that
# benchmarks/gpu_suite.sh can install the project on a machine with no network. Carry wheels/
# along with the working tree to that machine.
#   bash benchmarks/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
mkdir -p wheels
printf '*\n' > wheels/.gitignore  # the folder ignores itself: wheels are never committed
# ml-collections is the one hard gap; absl-py (its dependency) and tqdm (the run loop's progress
# bar) are usually there, and are fetched in case they are not. All three are py3-none-any wheels.
"$py" -m pip download --no-deps --only-binary=:all: --dest wheels "ml-collections>=1.0" "absl-py" "tqdm"
ls -l wheels/*.whl
