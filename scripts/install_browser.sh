#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/ui), driven by Playwright for Python at /usr/bin/chromium.
# Playwright's own browser download (`playwright install`) is never used. Idempotent; needs root for apt-get.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
  echo "install_browser: /usr/bin/chromium is missing; as root run: apt-get update && apt-get install -y chromium" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
