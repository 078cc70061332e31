#!/usr/bin/env bash
# Remove what an interrupted Molecule run of this project may have left on the host, and only
# that: containers labelled durable-mx=molecule, podman networks named dmx-mol-*, and loop
# devices whose backing file lies under /var/lib/durable-mx/molecule/ (deleted files included).
# The lab (make lab) uses other names and is left alone.
set -euo pipefail
disk_root=/var/lib/durable-mx/molecule

mapfile -t containers < <(podman ps -a --filter label=durable-mx=molecule --format '{{.Names}}')
if [ ${#containers[@]} -gt 0 ]; then
  echo "removing stale containers: ${containers[*]}"
  podman rm -f "${containers[@]}" >/dev/null
fi

mapfile -t networks < <(podman network ls --format '{{.Name}}' | grep '^dmx-mol-' || true)
if [ ${#networks[@]} -gt 0 ]; then
  echo "removing stale networks: ${networks[*]}"
  podman network rm -f "${networks[@]}" >/dev/null
fi

while read -r dev backing; do
  case $backing in
    "$disk_root"/*)
      echo "detaching stale loop device $dev ($backing)"
      losetup -d "$dev" ;;
  esac
done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null || true)

rm -rf --one-file-system "$disk_root"
