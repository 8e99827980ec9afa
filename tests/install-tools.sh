#!/usr/bin/env bash
# The tools some tests drive that PyPI does not ship, kept inside the checkout in
# .tools/bin (gitignored). Nothing is installed on the system and no service is enabled
# or started: Debian's package is downloaded (`apt-get download`, no root needed once the
# package lists exist) and only the binary is extracted from it (`dpkg-deb -x`).
#
#   promtool   Prometheus' checker: `promtool check metrics` on a scrape and `check
#              config` / `check rules` / `test rules` on deploy/prometheus
#              (tests/operations/test_metrics_catalogue.py, test_deploy.py). From the
#              `prometheus` package, whose installation would enable a systemd service.
#
#   chromium   the browser the console tests drive headless through Playwright
#              (tests/e2e/test_console*.py, at /usr/bin/chromium). It needs dozens of
#              shared libraries, so it cannot run from an extracted binary: Debian's
#              `chromium` package is installed (no recommends; it enables no service).
#
# A tool already in .tools/bin or on PATH is used as is; this script then does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.tools/bin

fetch_deb_binary() { # command, Debian package, path inside the package
  local cmd=$1 pkg=$2 path=$3
  [ -x "$bin/$cmd" ] && return 0
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "tests/install-tools.sh: $cmd is missing: extracting it from Debian's $pkg package" \
    "into $bin/ (the package is not installed)" >&2
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  if ! (cd "$tmp" && apt-get download "$pkg" >"$tmp/apt.log" 2>&1); then
    if [ "$(id -u)" -eq 0 ]; then
      # Package lists are missing on a fresh image: fetch them (this installs nothing).
      apt-get update -qq >>"$tmp/apt.log" 2>&1 || true
      (cd "$tmp" && apt-get download "$pkg" >>"$tmp/apt.log" 2>&1)
    else
      cat "$tmp/apt.log" >&2
      echo "tests/install-tools.sh: run 'sudo apt-get update' (package lists), then retry" >&2
      return 1
    fi
  fi
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
  mkdir -p "$bin"
  cp "$tmp/root/$path" "$bin/$cmd"
  chmod +x "$bin/$cmd"
}

fetch_deb_binary promtool prometheus usr/bin/promtool

install_deb() { # file the tests use, Debian package: installed (as root) when missing
  local file=$1 pkg=$2
  [ -x "$file" ] && return 0
  echo "tests/install-tools.sh: $file is missing: installing Debian's $pkg package" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$pkg"
}

install_deb /usr/bin/chromium chromium
