#!/usr/bin/env bash
# Debian's chromium for the browser tests. Playwright drives it (executable_path); it
# downloads no browser of its own, which this network would not allow anyway.
set -euo pipefail
command -v chromium >/dev/null && exit 0
echo "installing Debian's chromium for the browser tests"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
install || { $sudo apt-get update -q >/dev/null && install; }
