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
# ml-collections is the one hard gap for training and scoring; absl-py (its dependency) is usually
# there and is fetched in case it is not. Both are py3-none-any wheels. The report (pandas,
# matplotlib) is drawn afterwards on any machine from the work directory the GPU run brings back.
"$py" -m pip download --no-deps --only-binary=:all: --dest wheels "ml-collections>=1.0" "absl-py"
ls -l wheels/*.whl
