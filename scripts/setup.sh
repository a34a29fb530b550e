#!/usr/bin/env bash
# Installs what the project needs, idempotently:
#   .venv      the app environment (Python 3.11, pinned torch/torchvision pair from the machine's local files)
#   .venv-ls   Label Studio 1.23 in its own environment (its pins clash with Prefect's)
# With --test (scripts/test.sh) also the test tools: the [dev] extras and Debian's chromium for the browser test.
# Without it (scripts/demo.sh) only what the demo runs. Re-running is cheap: each step is skipped when its stamp
# matches the current pins (a test install also serves the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WITH_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TESTS=1 ;;
    *) echo "setup: unknown option $arg (known: --test)" >&2; exit 2 ;;
  esac
done
PY=${GEOLABEL_PYTHON:-$(command -v python3.11 || true)}
if [ -z "$PY" ]; then echo "setup: Python 3.11 is required (set GEOLABEL_PYTHON to its path)" >&2; exit 2; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
# pip warns once per package about index locations this machine's pip.conf names but does not have: drop that noise.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

app_stamp=$(stamp_of pyproject.toml)
have=$(cat .venv/.geolabel-stamp 2>/dev/null || true)
if [ "$WITH_TESTS" = 1 ]; then want="$app_stamp:test"; target=".[dev]"; else want="$app_stamp:app"; target="."; fi
if [ "$have" != "$want" ] && [ "$have" != "$app_stamp:test" ]; then
  echo "setup: installing the app environment in .venv (first time ~4 min, ~6.5 GB: torch is a CUDA build)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  pip_quiet .venv/bin/python -m pip install -q --upgrade pip
  pip_quiet .venv/bin/python -m pip install -q -e "$target"
  echo "$want" > .venv/.geolabel-stamp
fi

bash scripts/labelstudio_venv.sh

# Debian's chromium for the browser test (tests/integration/test_browser_labelstudio.py drives it headless with
# Playwright): test installs only. Installed only as root where apt works; never fatal: without it that test skips.
if [ "$WITH_TESTS" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium (browser test)"
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
      || echo "setup: could not install chromium with apt; the browser test will be skipped" >&2
  else
    echo "setup: chromium missing and apt-get unavailable (or not root); the browser test will be skipped" >&2
  fi
fi
echo "setup: ready (app: $ROOT/.venv, Label Studio: $ROOT/.venv-ls)"
