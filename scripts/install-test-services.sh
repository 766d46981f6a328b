#!/usr/bin/env bash
# What the test suite needs beyond Python packages (part of the README's test command).
# - Chromium from Debian's packages, for the Dagster UI check in a real browser
#   (Playwright drives it; its own browser download is not used).
# - unixODBC from Debian's packages, so that `import pyodbc` works and the SQL Server /
#   Synapse dialect (mssql+pyodbc) can compile the publisher's statements.
# - PostgreSQL is expected on 127.0.0.1:5432 (trust auth); started here if it is stopped.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ldconfig -p 2>/dev/null | grep -q 'libodbc.so.2' || missing+=(unixodbc)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
# - Azurite (the Azure Storage emulator) from npm, for the lake-on-ADLS tests. 3.35.0 is the
#   newest release that runs on Node 20 (3.36 needs Node 21, 3.37 Node 22). Installed into a
#   cache folder, not globally; a second run finds it and returns at once.
AZURITE_VERSION=3.35.0
AZURITE_DIR="${MMP_AZURITE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mmp-azurite}"
if [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ] \
  && grep -q "\"version\": \"$AZURITE_VERSION\"" "$AZURITE_DIR/node_modules/azurite/package.json" 2>/dev/null; then
  :
elif command -v npm >/dev/null 2>&1; then
  echo "installing Azurite $AZURITE_VERSION into $AZURITE_DIR"
  mkdir -p "$AZURITE_DIR"
  npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
else
  echo "npm not found: install Node.js 20+ to run the Azurite tests" >&2
fi
