#!/usr/bin/env bash
# Read-only probe for the queue_volume role. Prints one JSON object:
#   device: what the device holds (fstype, label, uuid, partition table, blank = no signature
#           and only zeros in its first MiB);
#   mountpoint: whether it is a mount point, of which source, and whether the directory holds
#           anything (an existing queue on the root disk to migrate).
# Usage: probe-queue-volume.sh DEVICE MOUNTPOINT
set -euo pipefail
device=${1:?usage: probe-queue-volume.sh DEVICE MOUNTPOINT}
mountpoint=${2:?usage: probe-queue-volume.sh DEVICE MOUNTPOINT}

if [ ! -b "$device" ]; then
  printf '{"error": "%s is not a block device"}\n' "$device"
  exit 0
fi

declare -A sig=()
while IFS='=' read -r key value; do
  [ -n "$key" ] && sig[$key]=$value
done < <(blkid -p -o export "$device" 2>/dev/null || true)

blank=false
if [ -z "${sig[TYPE]:-}${sig[PTTYPE]:-}" ] && cmp -s -n 1048576 "$device" /dev/zero; then
  blank=true
fi

mounted=false source=""
if findmnt -n --mountpoint "$mountpoint" >/dev/null 2>&1; then
  mounted=true
  source=$(findmnt -n -o SOURCE --mountpoint "$mountpoint")
fi
has_content=false
if [ -d "$mountpoint" ] && [ -n "$(find "$mountpoint" -mindepth 1 -maxdepth 1 -print -quit)" ]; then
  has_content=true
fi
# The device node the kernel reports for a mount may differ from the path given (symlinks).
device_real=$(readlink -f "$device")

printf '{"device": {"path": "%s", "real": "%s", "fstype": "%s", "label": "%s", "uuid": "%s", "pttype": "%s", "blank": %s},' \
  "$device" "$device_real" "${sig[TYPE]:-}" "${sig[LABEL]:-}" "${sig[UUID]:-}" "${sig[PTTYPE]:-}" "$blank"
printf ' "mountpoint": {"path": "%s", "mounted": %s, "source": "%s", "has_content": %s}}\n' \
  "$mountpoint" "$mounted" "$source" "$has_content"
