#!/usr/bin/env bash
# Creates the Label Studio virtualenv (.venv-ls) apart from the app's: Label Studio 1.23 pins clash with Prefect 3.8.
set -euo pipefail
cd "$(dirname "$0")/.."
LS_VERSION=${GEOLABEL_LABEL_STUDIO_VERSION:-1.23.2}
PY=${GEOLABEL_PYTHON:-$(command -v python3.11 || true)}
if [ -f .venv-ls/.geolabel-stamp ] && [ "$(cat .venv-ls/.geolabel-stamp)" = "$LS_VERSION" ]; then exit 0; fi
echo "setup: creating the Label Studio $LS_VERSION environment in .venv-ls (first time ~1 min, ~1 GB)"
[ -x .venv-ls/bin/python ] || "$PY" -m venv .venv-ls
.venv-ls/bin/python -m pip install -q --disable-pip-version-check "label-studio==$LS_VERSION" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$LS_VERSION" > .venv-ls/.geolabel-stamp
