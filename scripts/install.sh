#!/usr/bin/env bash
# Installs vlmfo1 with every extra into the active Python environment.
# torch is pinned by .ci/constraints.txt so pip never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all,dev]"
