#!/usr/bin/env bash
# Set up everything the tests need, then lint, type-check and run the suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k verify).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test

echo "test: ruff"
.venv/bin/ruff check recflow tests bench plugins
.venv/bin/ruff format --check recflow tests bench plugins
echo "test: mypy"
.venv/bin/mypy
echo "test: pytest"
.venv/bin/python -m pytest -q "$@"
