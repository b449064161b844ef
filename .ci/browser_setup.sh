#!/usr/bin/env bash
# Installs Debian's chromium + chromium-driver (and a font) for the viewer's browser test
# (tests/test_viz.py) when either binary is missing. Idempotent; needs root or sudo.
# Usage: .ci/browser_setup.sh
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  echo "browser_setup: chromium or chromedriver still missing after apt-get" >&2
  exit 1
fi
echo "browser_setup: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
