#!/usr/bin/env bash
# Headless Chromium and its ChromeDriver from Debian's packages, for the browser tests (tests/test_playground.py):
# `make test` runs this first. Installed once; nothing is downloaded by the test tools themselves.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
if [ "$(id -u)" = 0 ]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
  say "the browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"
  say "(or set TINYTITAN_SKIP_BROWSER=1 to skip them, reported as skipped)"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  say "no apt-get here: install Chromium and ChromeDriver at /usr/bin/chromium and /usr/bin/chromedriver for the browser tests"
  exit 0
fi
started=$(date +%s)
say "installing chromium and chromium-driver (Debian packages, for the browser tests)"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
say "chromium installed in $(( $(date +%s) - started )) s"
