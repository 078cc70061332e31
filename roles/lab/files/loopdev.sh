#!/usr/bin/env bash
# Attach or detach the loop device of a lab disk image, idempotently.
#   loopdev.sh attach FILE  -> prints "attached /dev/loopN" or "present /dev/loopN"
#   loopdev.sh detach FILE  -> prints "detached /dev/loopN ..." or "absent"
# Only loop devices backed by FILE are touched, so other users of loop devices are left alone.
set -euo pipefail
action=${1:?usage: loopdev.sh attach|detach FILE}
file=${2:?usage: loopdev.sh attach|detach FILE}
current=$(losetup -n -O NAME -j "$file" 2>/dev/null || true)
case $action in
  attach)
    if [ -n "$current" ]; then echo "present ${current%%$'\n'*}"; exit 0; fi
    echo "attached $(losetup -f --show "$file")" ;;
  detach)
    if [ -z "$current" ]; then echo "absent"; exit 0; fi
    for dev in $current; do losetup -d "$dev"; done
    echo "detached $current" ;;
  *) echo "unknown action: $action (want attach or detach)" >&2; exit 2 ;;
esac
