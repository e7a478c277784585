#!/usr/bin/env bash
# Set up a virtual environment in .venv (Python 3.12 where it exists, else python3) and run
#   quick: the main job on a small default (quick sweep, results and plots in runs/quick)
#   test:  the test suite
# jax's accelerator wheels: RHM_EXTRA=cuda12|cuda13|tpu installs that extra of pyproject.toml too,
# RHM_EXTRA=cpu never does; unset (auto), cuda12 is chosen where nvidia-smi lists a GPU, CPU jax
# otherwise. The choice is printed in one line.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-quick}"
if [ ! -x .venv/bin/python ]; then
  py=python3
  if PYENV_VERSION=3.12.1 python3.12 --version >/dev/null 2>&1; then
    py="env PYENV_VERSION=3.12.1 python3.12"
  elif command -v python3.12 >/dev/null 2>&1; then
    py=python3.12
  fi
  $py -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
extra="${RHM_EXTRA:-auto}"
if [ "$extra" = auto ]; then
  extra=cpu
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    extra=cuda12
  fi
fi
case "$extra" in
  cpu) extras=test ;;
  cuda12|cuda13|tpu) extras="test,$extra"; echo "setup.sh: installing jax[$extra] (RHM_EXTRA=cpu for CPU jax)" >&2 ;;
  *) echo "setup.sh: RHM_EXTRA=$extra must be one of auto, cpu, cuda12, cuda13, tpu" >&2; exit 2 ;;
esac
.venv/bin/python -m pip install -q -e ".[$extras]"
case "$what" in
  test) exec .venv/bin/python -m pytest -q -n auto --dist loadfile "${@:2}" ;;
  quick) exec .venv/bin/python -m launch.quickstart "${@:2}" ;;
  *) echo "usage: launch/setup.sh {quick|test} [args]" >&2; exit 2 ;;
esac
