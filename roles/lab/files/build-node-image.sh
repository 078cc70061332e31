#!/usr/bin/env bash
# Build the lab's Debian 12 systemd node image locally: no registry is needed (debootstrap from
# Debian's mirror + podman import). Usage: build-node-image.sh IMAGE_REF [MIRROR]
set -euo pipefail
image=${1:?usage: build-node-image.sh IMAGE_REF [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/durable-mx-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$root"' EXIT

# python3-apt lets Ansible's apt module work; the rest is what a systemd node needs to boot.
debootstrap --variant=minbase \
  --include=python3,python3-apt,systemd,systemd-sysv,dbus,iproute2,procps,ca-certificates,xfsprogs,less \
  bookworm "$root" "$mirror"

# No getty or udev in a container; an empty machine-id is filled in at first boot.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
chroot "$root" systemctl mask getty@tty1.service console-getty.service systemd-udevd.service \
  systemd-udevd-kernel.socket systemd-udevd-control.socket >/dev/null 2>&1
# Roles run apt-get update themselves, as on a real server: leave no lists, and date the lists
# directory in the past so apt's cache_valid_time does not take the empty cache for a fresh one.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
touch -d @0 "$root/var/lib/apt/lists"

tar -C "$root" -c . | podman import --change 'CMD ["/sbin/init"]' - "$image" >/dev/null
echo "built $image"
