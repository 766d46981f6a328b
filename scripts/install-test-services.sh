#!/usr/bin/env bash
# What the test suite needs beyond Python packages (part of the README's test command).
# - Chromium from Debian's packages, for the Dagster UI check in a real browser
#   (Playwright drives it; its own browser download is not used).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing chromium (Debian package) for the UI tests"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
