#!/usr/bin/env bash
# Rootful podman as a Docker-API engine, and a local debian:bookworm base image, with no image registry.
# Idempotent: a second run only starts the API service if it is not running. Run as root:
#   bash deploy/podman-setup.sh            # then: DOCKER_HOST=unix:///run/podman/podman.sock docker-compose ...
# What it does (measured recipe: docs/deploy.md, "Compose on podman"):
#   1. Debian packages: podman, runc, debootstrap, the dnsname CNI plugin (service names resolve), docker-compose.
#      busybox-static: localhost/local/busybox:min, the 2 MB image of the container connector tests.
#   2. /etc/containers/{containers,storage}.conf for a systemd-less host (cgroupfs, file events, CNI).
#   3. localhost/debian:bookworm from debootstrap (mirror of the host's apt sources) with the host's CA
#      certificates, so `FROM debian:bookworm` and pip inside a build work without a registry.
#   4. `podman system service` on unix:///run/podman/podman.sock (Docker Engine API 1.41).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SOCK=/run/podman/podman.sock
BASE_IMAGE=localhost/debian:bookworm

packages="podman runc debootstrap golang-github-containernetworking-plugin-dnsname docker-compose iptables curl ca-certificates busybox-static"
missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "apt-get install" $missing
  apt-get update -qq
  apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# podman lowers its own hard RLIMIT_NPROC to 32768 and root here may lack CAP_SYS_RESOURCE:
# container rlimits must not exceed the current hard limits.
NOFILE=$(ulimit -Hn)
NPROC=32768
if [ "$(ulimit -Hu)" != unlimited ] && [ "$(ulimit -Hu)" -lt 32768 ]; then NPROC=$(ulimit -Hu); fi
mkdir -p /etc/containers
if [ ! -f /etc/containers/containers.conf ] || ! grep -q 'netsonde podman-setup' /etc/containers/containers.conf; then
  cat > /etc/containers/containers.conf <<EOF
# written by netsonde podman-setup
[containers]
default_ulimits = ["nofile=${NOFILE}:${NOFILE}", "nproc=${NPROC}:${NPROC}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "cni"
EOF
fi
if [ ! -f /etc/containers/storage.conf ]; then
  cat > /etc/containers/storage.conf <<'EOF'
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
fi

if ! podman image exists "$BASE_IMAGE"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d /var/tmp/netsonde-debootstrap.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # pip inside a build verifies TLS against these (a proxy's CA may be among them)
  mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  tar -C "$root" -c . | podman import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "imported $BASE_IMAGE"
fi

# localhost/local/busybox:min: a 2 MB image of the busybox-static binary, for the container connector's tests
BUSYBOX_IMAGE=localhost/local/busybox:min
if ! podman image exists "$BUSYBOX_IMAGE"; then
  bb=$(mktemp -d /var/tmp/netsonde-busybox.XXXXXX)
  mkdir -p "$bb/bin" "$bb/etc" "$bb/proc" "$bb/sys" "$bb/dev" "$bb/tmp" "$bb/root"
  cp /bin/busybox "$bb/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$bb/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$bb/etc/passwd"
  echo 'root:x:0:' > "$bb/etc/group"
  tar -C "$bb" -c . | podman import -q --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$BUSYBOX_IMAGE" >/dev/null
  rm -rf "$bb"
  echo "imported $BUSYBOX_IMAGE"
fi

mkdir -p /run/podman
if ! curl -fs --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  # setsid: the service outlives this script (and the test that ran it) as its own session
  setsid podman system service --time=0 "unix://$SOCK" >/run/podman/service.log 2>&1 < /dev/null &
  echo $! > /run/podman/service.pid
  for _ in $(seq 100); do
    curl -fs --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs --unix-socket "$SOCK" http://d/_ping >/dev/null || { echo "podman service did not come up" >&2; exit 1; }
fi
echo "podman API ready on unix://$SOCK"
