#!/usr/bin/env bash
# Set up a virtual environment in .venv (Python 3.12 where it exists, else python3) and run
#   quick: the main job on a small default (quick sweep, results and plots in runs/quick)
#   test:  the test suite
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
.venv/bin/python -m pip install -q -e '.[test]'
case "$what" in
  test) exec .venv/bin/python -m pytest -q -n auto --dist loadfile "${@:2}" ;;
  quick) exec .venv/bin/python -m launch.quickstart "${@:2}" ;;
  *) echo "usage: launch/setup.sh {quick|test} [args]" >&2; exit 2 ;;
esac
