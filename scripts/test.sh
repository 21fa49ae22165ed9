#!/usr/bin/env bash
# The project's test command: create .venv if needed, install torchkeep with its dev extras,
# lint (ruff), type-check (mypy) and run the whole test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# torch's CUDA wheel needs ~6 GB in .venv: say so plainly instead of failing deep inside pip
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ ! -x .venv/bin/python ] && [ "${free_kb:-0}" -lt 8000000 ]; then
  echo "warning: only $((free_kb / 1024)) MiB free here; installing torch needs about 7 GiB" >&2
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --no-cache-dir -e '.[dev]' 2>&1 | grep -v -E "^WARNING: Location|is ignored" || true
.venv/bin/python -c "import torchkeep, torch, torchvision" # fail early if the install did not work
# Debian's chromium + chromedriver for the page test of torchkeep serve (skipped there when absent)
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/dev/null 2>&1 || echo "note: could not install chromium (the browser test will be skipped)"
fi
echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -n 2 -q "$@"
