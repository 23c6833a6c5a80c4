#!/usr/bin/env bash
# The README's first command: the worker's whole job on a mock plate, on this machine alone.
# Sets itself up (.venv via scripts/venv.sh), then runs `chimp-worker demo` with any arguments
# given here (e.g. --flavour xchem --wells 4 --schedule 3). No broker, no database server and
# no model files are needed: an SQLite ISPyB, the images and the report go to ./chimp-worker-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/chimp-worker demo "$@"
