#!/usr/bin/env bash
# The test command: set up, then lint, type-check and run every test (integration tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check src tests bench
echo "== mypy"; .venv/bin/mypy src
echo "== deptry"; .venv/bin/deptry src
echo "== pytest"; .venv/bin/pytest -q "$@"
