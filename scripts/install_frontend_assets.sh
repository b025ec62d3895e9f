#!/usr/bin/env bash
# Front-end assets for the web UI, from the npm registry into static/vendor/ (git-ignored), where the service
# serves them at /static/vendor/. Nothing is loaded from a CDN and nothing third-party is committed.
# htmx runs the pages; axe-core is only for the browser tests' accessibility check (tests/ui), which inject it.
# Idempotent: does nothing when the pinned versions are already in place. Needs npm (Debian: apt-get install npm).
set -euo pipefail

# package version sha512 (the registry's dist.integrity; `npm pack` checks it too, this pins it against a changed
# registry) file-in-the-tarball installed-name
PACKAGES=(
  "htmx.org 2.0.11 Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA== dist/htmx.min.js htmx.min.js"
  "axe-core 4.14.1 FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ== axe.min.js axe.min.js"
)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendor="$root/static/vendor"

# each installed file has a stamp beside it naming its version: .htmx-2.0.11
installed() {
  local version="$2" file="$5"
  [[ -f "$vendor/.${file%%.*}-$version" && -f "$vendor/$file" ]]
}

missing=()
for package in "${PACKAGES[@]}"; do
  # shellcheck disable=SC2086
  if ! installed $package; then missing+=("$package"); fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  touch "$vendor/htmx.min.js"  # up to date: newer than this script, for make
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  else
    echo "install_frontend_assets: npm is needed to fetch ${missing[*]%% *} (apt-get install npm)" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$vendor"
for package in "${missing[@]}"; do
  read -r name version sha512 source file <<<"$package"
  (cd "$work" && npm pack --silent "$name@$version" >/dev/null)
  tarball="$work/$name-$version.tgz"
  actual="$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [[ "$actual" != "$sha512" ]]; then
    echo "install_frontend_assets: $name-$version.tgz has sha512 $actual, expected $sha512" >&2
    exit 1
  fi
  rm -rf "$work/package"
  tar -xzf "$tarball" -C "$work" "package/$source" package/LICENSE
  rm -f "$vendor/.${file%%.*}-"*
  install -m 0644 "$work/package/$source" "$vendor/$file"
  install -m 0644 "$work/package/LICENSE" "$vendor/${file%%.*}.LICENSE"
  touch "$vendor/.${file%%.*}-$version"
  echo "install_frontend_assets: $name@$version -> static/vendor/$file"
done
