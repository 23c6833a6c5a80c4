#!/usr/bin/env bash
# Create .venv (once) and install chimp-worker with its test extra. Idempotent and quick when
# nothing changed. torch and torchvision come from this machine's local wheel store via pip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh build
if [[ ! -x .venv/bin/python ]]; then
    python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
stamp=.venv/.chimp-installed
if [[ ! -f $stamp || setup.cfg -nt $stamp ]]; then
    .venv/bin/pip install -q --upgrade pip wheel setuptools
    .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi
