#!/usr/bin/env bash
# README command 2: install everything, then run the whole test suite (real services started by the fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/env.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "test: no tests were collected: treating that as a failure" >&2; exit 1; fi
exit "$rc"
