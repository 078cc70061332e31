#!/usr/bin/env bash
# Move an existing Postfix queue from the root disk onto the (already formatted) queue volume.
# Postfix must be stopped. Nothing is deleted: the old tree stays as MOUNTPOINT.root-disk until
# an operator removes it. Usage: migrate-queue.sh DEVICE MOUNTPOINT
set -euo pipefail
device=${1:?usage: migrate-queue.sh DEVICE MOUNTPOINT}
mountpoint=${2:?usage: migrate-queue.sh DEVICE MOUNTPOINT}
old="$mountpoint.root-disk"

if pgrep -x master >/dev/null; then
  echo "Postfix (master) is still running: stop it before migrating the queue" >&2
  exit 1
fi
if [ -e "$old" ]; then
  echo "$old already exists: an earlier migration was interrupted; inspect it and move it away" >&2
  exit 1
fi

stage=$(mktemp -d /run/durable-mx-queue-migrate.XXXXXX)
mount -t xfs "$device" "$stage"
trap 'umount "$stage" 2>/dev/null || true; rmdir "$stage"' EXIT

# Sockets and fifos are recreated by Postfix at start; copy everything else as it is.
(cd "$mountpoint" && find . -mindepth 1 \( -type s -o -type p \) -prune -o -print0 \
  | cpio --null --pass-through --make-directories --preserve-modification-time --quiet "$stage")

# Directory sizes differ between filesystems, so only files are compared by size.
inventory() {
  (cd "$1" && { find . -mindepth 1 -type d -printf 'd %m %u %g %p\n'
                find . -mindepth 1 ! -type d ! -type s ! -type p -printf '%y %m %u %g %s %p\n'; } | sort | sha256sum)
}
if [ "$(inventory "$mountpoint")" != "$(inventory "$stage")" ]; then
  echo "copy of $mountpoint differs from the original (names, types, modes, owners or sizes); nothing was switched" >&2
  exit 1
fi
files=$(cd "$stage" && find . -type f | wc -l)
sync -f "$stage"

owner=$(stat -c '%u:%g' "$mountpoint")
mode=$(stat -c '%a' "$mountpoint")
mv "$mountpoint" "$old"
mkdir "$mountpoint"
chown "$owner" "$mountpoint"
chmod "$mode" "$mountpoint"
echo "migrated $files files from the root disk onto $device; old copy kept at $old"
