#!/usr/bin/env bash
# Front-end assets for the web UI, from the npm registry into static/vendor/ (git-ignored), where the service
# serves them at /static/vendor/. Nothing is loaded from a CDN and nothing third-party is committed.
# Idempotent: does nothing when the pinned version is already in place. Needs npm (Debian: apt-get install npm).
set -euo pipefail

HTMX_VERSION="2.0.11"
# the registry's dist.integrity for that version; `npm pack` checks it too, this pins it against a changed registry
HTMX_SHA512="Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA=="

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendor="$root/static/vendor"
stamp="$vendor/.htmx-$HTMX_VERSION"

if [[ -f "$stamp" && -f "$vendor/htmx.min.js" ]]; then
  touch "$vendor/htmx.min.js"  # up to date: newer than this script, for make
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  else
    echo "install_frontend_assets: npm is needed to fetch htmx.org@$HTMX_VERSION (apt-get install npm)" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "htmx.org@$HTMX_VERSION" >/dev/null)
tarball="$work/htmx.org-$HTMX_VERSION.tgz"
actual="$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$actual" != "$HTMX_SHA512" ]]; then
  echo "install_frontend_assets: htmx.org-$HTMX_VERSION.tgz has sha512 $actual, expected $HTMX_SHA512" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist/htmx.min.js package/LICENSE

mkdir -p "$vendor"
rm -f "$vendor"/.htmx-*
install -m 0644 "$work/package/dist/htmx.min.js" "$vendor/htmx.min.js"
install -m 0644 "$work/package/LICENSE" "$vendor/htmx.LICENSE"
touch "$stamp"
echo "install_frontend_assets: htmx.org@$HTMX_VERSION -> static/vendor/htmx.min.js"
