#!/usr/bin/env bash
# README's test command: creates .venv if needed, installs the project with its test extras,
# then runs lint, types and the test suite (unit + integration through a real Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
envoy --version
ruff check extproc tests e2e
ruff format --check extproc tests e2e
mypy
lint-imports
set +e
python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$status"
