#!/usr/bin/env bash
# README command 1: install everything, then run the main job on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/geolabel demo "$@"
