#!/usr/bin/env bash
# Debian packages the tests need, installed with apt-get when missing (as root; otherwise it says what to run):
#   chromium  the browser the UI tests drive with Playwright at /usr/bin/chromium (`playwright install` is never used)
#   sox       the program the `sox` Python package calls, which the Step-Audio-EditX code imports (the image has it too)
#   strace    watches the real Step-Audio-EditX code for network attempts (tests/engines/test_step_audio_checkout.py)
# Idempotent: does nothing when every one is there.
set -euo pipefail

missing=()
for package in chromium sox strace; do
  if [[ ! -x "/usr/bin/$package" ]]; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
  echo "install_system_packages: missing ${missing[*]}; as root run: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
echo "install_system_packages: installed ${missing[*]}"
