#!/bin/bash
# Build the CPU image with buildah (no daemon) and check that it serves: the entrypoint starts the server as
# uid 10001 and `trtserve health` inside the image answers SERVING. Opt-in (`make image-smoke`, root, Debian):
# not part of `make test`, since it downloads a Debian root filesystem and the Python wheels (minutes).
#
# Where docker.io cannot be reached (as on this project's machines), the python:3.11 slim base is replaced by a
# stand-in made with debootstrap from Debian's packages (bookworm: Python 3.11), given this host's CA bundle for
# pip; the Dockerfile itself is unchanged. Set PYTHON_IMAGE=python:3.11.11-slim-bookworm to use the real base.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=(buildah --storage-driver vfs)
PORT=${PORT:-18731}
export DEBIAN_FRONTEND=noninteractive
command -v buildah >/dev/null || apt-get install -y -qq --no-install-recommends buildah >/dev/null
if [ -z "${PYTHON_IMAGE:-}" ]; then
    PYTHON_IMAGE=localhost/trtserve-smoke-base:bookworm
    if ! "${B[@]}" inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
        rootfs=$(mktemp -d)
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm \
            "$rootfs" http://deb.debian.org/debian >/dev/null
        ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb
        c=$("${B[@]}" from scratch)
        cp -a "$rootfs/." "$("${B[@]}" mount "$c")/"
        "${B[@]}" umount "$c" >/dev/null
        "${B[@]}" commit -q "$c" "$PYTHON_IMAGE" >/dev/null
        "${B[@]}" rm "$c" >/dev/null
        rm -rf "$rootfs"
    fi
fi
cd "$ROOT"
"${B[@]}" bud -q --format docker --isolation chroot --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
    -f docker/Dockerfile.cpu -t localhost/trtserve:0.1.0-cpu . >/dev/null
"${B[@]}" inspect --format 'image: user {{.Docker.Config.User}}, healthcheck {{.Docker.Config.Healthcheck.Test}}' \
    localhost/trtserve:0.1.0-cpu; echo
c=$("${B[@]}" from localhost/trtserve:0.1.0-cpu)
run() { "${B[@]}" run --isolation chroot --env "TRTSERVE_GRPC_PORT=$PORT" "$c" -- "$@"; }
run id
run /usr/local/bin/trtserve-entrypoint serve &
server=$!
status=1
for _ in $(seq 1 120); do
    if run trtserve health >/dev/null 2>&1; then status=0; break; fi
    sleep 1
done
run trtserve health || true
descendants() { for k in $(ps -o pid= --ppid "$1"); do descendants "$k"; echo "$k"; done; }
# SIGTERM to the server process itself (the deepest one: the entrypoint exec'd it), as a container stop would;
# it drains and exits, and buildah run with it
kill -TERM "$(descendants "$server" | head -n 1)" 2>/dev/null || true
wait "$server" 2>/dev/null || true
"${B[@]}" rm "$c" >/dev/null
[ "$status" = 0 ] && echo "image-smoke: OK, the CPU image serves and reports SERVING" || echo "image-smoke: FAILED"
exit "$status"
