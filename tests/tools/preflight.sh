#!/usr/bin/env bash
# Preflight of make lab, test and bench: is every program they run on this host there? Reads
# host-programs.txt (next to this script), the one table of host programs and their packages.
#   preflight.sh             one line per missing program, naming its package; exit 1 if any
#   preflight.sh --packages  the Debian packages make deps installs (the Makefile's HOST_PACKAGES)
# VENV: the venv the `venv` programs live in (default: .venv of the repository).
# Bash builtins only: it works whatever PATH says (that is what it checks) and takes milliseconds.
set -euo pipefail

here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
table=$here/host-programs.txt
venv=${VENV:-$(cd "$here/../.." && pwd)/.venv}

if [[ ${1:-} == --packages ]]; then
  declare -A listed=()
  packages=()
  while read -r program package from _; do
    [[ -z $program || $program == \#* || $from != apt || -n ${listed[$package]:-} ]] && continue
    listed[$package]=1
    packages+=("$package")
  done < "$table"
  echo "${packages[*]}"
  exit 0
fi

missing=0
while read -r program package from _; do
  [[ -z $program || $program == \#* ]] && continue
  case $from in
    apt | base)
      # An absolute path is a helper podman runs from its own directory, not from PATH.
      if [[ $program == /* ]]; then [[ -x $program ]] && continue; else command -v "$program" >/dev/null && continue; fi
      if [[ $from == apt ]]; then
        echo "preflight: missing host program $program (Debian package $package): run make deps, or apt-get install $package"
      else
        echo "preflight: missing host program $program (Debian package $package, part of every Debian 12): apt-get install $package"
      fi ;;
    venv)
      [[ -x $venv/bin/$program ]] && continue
      echo "preflight: missing program $program in $venv/bin (from $package): remove $venv and run make deps" ;;
    *)
      echo "preflight: $table: $program comes from '$from', which is none of apt, base, venv" ;;
  esac
  missing=1
done < "$table"
exit $missing
