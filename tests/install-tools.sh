#!/usr/bin/env bash
# Installs the system tools some tests drive, when they are missing (Debian packages).
# Each line: the command the tests look for, and the package that provides it.
set -euo pipefail
needed=()
while read -r cmd pkg; do
  [ -z "$cmd" ] && continue
  command -v "$cmd" >/dev/null 2>&1 || needed+=("$pkg")
done <<'LIST'
promtool prometheus
chromium chromium
LIST
if [ ${#needed[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${needed[@]}"
fi
