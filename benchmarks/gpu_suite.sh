#!/usr/bin/env bash
# The GPU speed suite, unattended, about 10 minutes on one H100/H200 (each item has a time cap).
#
#   bash benchmarks/fetch_wheels.sh          # here, with network: wheels/ to carry along
#   bash benchmarks/gpu_suite.sh [RESULTS]   # there: results in RESULTS (default $OUT or runs/gpu_suite)
#
# Expects jax (CUDA), flax, optax, orbax-checkpoint, chex and numpy preinstalled; installs this
# project with --no-deps and the carried wheels (ml-collections, absl-py) where missing, with
# no network. Items: memory bandwidth; training throughput for W=1024 (M=1,8,32,64) and W=256
# (M=1,64,256) in float32 and bfloat16, each M with both bpUNet backward rules (network.backward
# 'jax' and 'rowmajor', one after the other; SUITE_BACKWARD=auto times only the backend's default
# and brings the suite back to about 7 minutes); one evaluation of 64 models x 1024 samples x 200
# steps at W=1024 in both dtypes. Ends with a table: model-steps/s, fraction of the memory
# roofline (SPEC section 6), speed-up over the authors' PyTorch reference, and rowmajor / jax.
# SUITE_SMOKE=1 shrinks every item to seconds and installs nothing (a plumbing check on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
results="${1:-${OUT:-runs/gpu_suite}}"
mkdir -p "$results"
out="$results/gpu_suite.jsonl"
log="$results/gpu_suite.log"
: > "$out"
py="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
start=$(date +%s)
say() { echo "[$(($(date +%s) - start)) s] $*" | tee -a "$log"; }

# --- install (no network): the project without dependencies, the carried wheels where missing
if [ "${SUITE_SMOKE:-0}" != 1 ]; then  # the smoke check uses the environment as it is
for pair in ml_collections:ml_collections absl:absl_py; do
  module="${pair%%:*}"; wheel="${pair##*:}"
  if ! "$py" -c "import $module" 2>/dev/null; then
    if ls wheels/${wheel}-*.whl >/dev/null 2>&1; then
      "$py" -m pip install -q --no-deps --no-index wheels/${wheel}-*.whl 2>&1 | tail -1 | tee -a "$log"
    else
      say "missing $module and no wheels/${wheel}-*.whl (run benchmarks/fetch_wheels.sh where there is network)"
    fi
  fi
done
if ! timeout 60 "$py" -m pip install -q --no-deps --no-build-isolation -e . >>"$log" 2>&1; then
  say "editable install failed (see $log); using PYTHONPATH=$PWD instead"
fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import jax, rhm_jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$log"

# --- items: name, time cap in seconds, arguments of benchmarks/gpu_suite.py
rules="--backward ${SUITE_BACKWARD:-jax,rowmajor}"  # jax first: the GPU default; a time cap cuts the last
if [ "${SUITE_SMOKE:-0}" = 1 ]; then
  big="--width 32"; small="--width 16"; bigM=1,2; smallM=1,4; evalM=2
  extra="--seconds 0.5 --steps-per-call 4"; samples="--samples 32"; gib="--gib 0.25"
else
  big="--width 1024"; small="--width 256"; bigM=1,64,8,32; smallM=1,256,64; evalM=64  # headline sizes first: a time cap cuts the last
  extra="--seconds 2 --steps-per-call 50"; samples="--samples 1024"; gib="--gib 4"
fi
items=(
  "bandwidth|20|bandwidth $gib"
  "train fp32 W=1024|160|train $big --models $bigM --dtype float32 $extra $rules"
  "train fp32 W=256|85|train $small --models $smallM --dtype float32 $extra $rules"
  "train bf16 W=1024|145|train $big --models $bigM --dtype bfloat16 $extra $rules"
  "train bf16 W=256|70|train $small --models $smallM --dtype bfloat16 $extra $rules"
  "eval fp32 W=1024 M=64|70|eval $big --models $evalM --dtype float32 $samples"
  "eval bf16 W=1024 M=64|50|eval $big --models $evalM --dtype bfloat16 $samples"
)
for item in "${items[@]}"; do
  IFS='|' read -r name cap args <<< "$item"
  say "start: $name (cap $cap s)"
  # shellcheck disable=SC2086
  timeout --kill-after=5 "$cap" "$py" benchmarks/gpu_suite.py $args --out "$out" >>"$log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || say "  $name ended with status $rc (124: time cap; its finished rows are kept)"
done
say "done"
"$py" benchmarks/gpu_suite.py table "$out" | tee "$results/gpu_suite_table.txt"
