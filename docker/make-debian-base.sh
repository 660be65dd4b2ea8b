#!/bin/sh
# A base image for docker/Dockerfile made without a container registry: Debian from Debian's
# own package mirror (debootstrap), with Python 3.11 in a virtual environment at /opt/python
# whose `python` and `pip` come first on the PATH, as python:3.11-slim's do. As root:
#
#     docker/make-debian-base.sh localhost/cpusweep-base:bookworm
#     podman build -f docker/Dockerfile --build-arg BASE_IMAGE=localhost/cpusweep-base:bookworm .
#
# Arguments: IMAGE [SUITE [MIRROR]] (bookworm, http://deb.debian.org/debian: bookworm's
# python3 is 3.11, the image's Python). CONTAINER_ENGINE=docker imports into Docker instead
# of podman. The root file system is made in a temporary folder, removed at the end.
# docs/containers.md has the whole procedure.
set -eu

image=${1:?usage: make-debian-base.sh IMAGE [SUITE [MIRROR]]}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
engine=${CONTAINER_ENGINE:-podman}

root=$(mktemp -d "${TMPDIR:-/tmp}/cpusweep-base.XXXXXX")
cleanup() {
    # An interrupted debootstrap can leave /proc and /sys mounted inside the new root.
    awk -v root="$root/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mount; do umount -l "$mount" || true; done
    rm -rf "$root"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$root" "$mirror"
chroot "$root" /usr/bin/python3 -m venv /opt/python
chroot "$root" /opt/python/bin/python -c \
    'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is needed: " + sys.version'
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | "$engine" import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python"]' \
    --change "LABEL org.cpusweep.base=debian-$suite" \
    - "$image"
