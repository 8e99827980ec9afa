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
#              (tests/e2e/test_console*.py). Used from /usr/bin/chromium when the system
#              has it; else Debian's `chromium` package and every dependency the system
#              lacks are downloaded and extracted together into .tools/chromium/, and the
#              tests run .tools/chromium/usr/lib/chromium/chromium with the libraries
#              found there (tests/support/browser.py). Nothing is installed.
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

fetch_deb_tree() { # directory, Debian package: it and its missing dependencies, extracted
  local dir=$1 pkg=$2 tmp=""
  [ -e "$dir/.complete" ] && return 0
  echo "tests/install-tools.sh: extracting Debian's $pkg and the dependencies this system" \
    "lacks into $dir/ (nothing is installed)" >&2
  tmp=$(mktemp -d)
  [ "$(id -u)" -eq 0 ] && { apt-get update -qq >"$tmp/apt.log" 2>&1 || true; }
  local wanted=() p
  while read -r p; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || wanted+=("$p")
  done < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "$pkg" | grep -v '^[ <]' | sort -u)
  if ! (cd "$tmp" && apt-get download "$pkg" "${wanted[@]}" >>"$tmp/apt.log" 2>&1); then
    cat "$tmp/apt.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  local deb
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dir"; done
  rm -rf "$tmp"
  touch "$dir/.complete"
}

[ -x /usr/bin/chromium ] || fetch_deb_tree .tools/chromium chromium
