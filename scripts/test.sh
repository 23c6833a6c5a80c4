#!/usr/bin/env bash
# The README's test command: sets itself up, then lint, the type check (mypy.ini) and the whole
# suite against SQLite, a fresh MariaDB database per test, the local RabbitMQ and headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh build test
bash scripts/venv.sh
bash scripts/ensure-services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
mkdir -p test-artifacts
exec .venv/bin/python -m pytest "$@"
