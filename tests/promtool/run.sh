#!/usr/bin/env bash
# Check the Prometheus rules and run their unit tests with promtool.
# Uses promtool from PATH when there is one; otherwise takes it out of Debian's prometheus
# package, downloaded (not installed: no service appears on this host) into .cache/promtool/.
# Run from anywhere; paths are relative to the repository root. Exit status: promtool's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="$ROOT/.cache/promtool"
cd "$ROOT"

find_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    return
  fi
  local bin="$CACHE/root/usr/bin/promtool"
  if [[ ! -x "$bin" ]]; then
    mkdir -p "$CACHE"
    # apt-get download writes into the current directory; as root it warns that the _apt user
    # cannot write there and downloads unsandboxed, which is fine for a cache directory.
    if ! (cd "$CACHE" && apt-get download -q prometheus >&2); then
      echo "apt-get download prometheus failed; refreshing the package lists and retrying" >&2
      apt-get update -q >&2
      (cd "$CACHE" && apt-get download -q prometheus >&2)
    fi
    local deb
    deb=$(ls -t "$CACHE"/prometheus_*.deb | head -n 1)
    rm -rf "$CACHE/root"
    dpkg-deb -x "$deb" "$CACHE/root"
  fi
  echo "$bin"
}

PROMTOOL=$(find_promtool)
echo "promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n 1))"

shopt -s nullglob
rules=(files/prometheus/rules/*.yml)
tests=(tests/promtool/*.test.yml)
if (( ${#rules[@]} == 0 || ${#tests[@]} == 0 )); then
  echo "no rule files or no test files found" >&2
  exit 1
fi

"$PROMTOOL" check rules "${rules[@]}"
"$PROMTOOL" test rules "${tests[@]}"
