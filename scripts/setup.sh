#!/usr/bin/env bash
# Installs everything the project needs, idempotently:
#   .venv      the app environment (Python 3.11, pinned torch/torchvision pair from the machine's local files)
#   .venv-ls   Label Studio 1.23 in its own environment (its pins clash with Prefect's)
# Re-running is cheap: each step is skipped when its stamp matches the current pins.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${GEOLABEL_PYTHON:-$(command -v python3.11 || true)}
if [ -z "$PY" ]; then echo "setup: Python 3.11 is required (set GEOLABEL_PYTHON to its path)" >&2; exit 2; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
# pip warns once per package about index locations this machine's pip.conf names but does not have: drop that noise.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

app_stamp=$(stamp_of pyproject.toml)
if [ ! -f .venv/.geolabel-stamp ] || [ "$(cat .venv/.geolabel-stamp)" != "$app_stamp" ]; then
  echo "setup: creating the app environment in .venv (first time ~4 min, ~6.5 GB: torch is a CUDA build)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  pip_quiet .venv/bin/python -m pip install -q --upgrade pip
  pip_quiet .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$app_stamp" > .venv/.geolabel-stamp
fi

bash scripts/labelstudio_venv.sh

# Debian's chromium for the browser test (tests/integration/test_browser_labelstudio.py drives it headless with Playwright).
# Installed only as root where apt works; never fatal: without it that test skips and says why.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium (browser test)"
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
      || echo "setup: could not install chromium with apt; the browser test will be skipped" >&2
  else
    echo "setup: chromium missing and apt-get unavailable (or not root); the browser test will be skipped" >&2
  fi
fi
echo "setup: ready (app: $ROOT/.venv, Label Studio: $ROOT/.venv-ls)"
