#!/usr/bin/env bash
# Builds the fetcher's Cloud Run image on a machine with no container registry: the runtime
# stage of ./Dockerfile on a Debian bookworm base image made here with debootstrap (cached
# in podman's image store), shipping a `fetcher` binary built by cargo.
#
#   deploy/cloudrun/build-local.sh [--binary PATH] [--tag IMAGE]
#
#   --binary PATH  the fetcher binary to ship (default: `cargo build --release` builds it)
#   --tag IMAGE    the image to build (default: localhost/alldocs-fetcher:local)
#
# Environment: ALLDOCS_BASE_IMAGE (default localhost/alldocs-base:bookworm), DEBIAN_MIRROR
# (default: the Debian mirror apt already uses here). Needs root, podman, runc, debootstrap.
# Prints the image's name and size on its last line.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tag=localhost/alldocs-fetcher:local
binary=
base="${ALLDOCS_BASE_IMAGE:-localhost/alldocs-base:bookworm}"

# Temporary directories, removed however the script ends.
temporary=()
trap 'rm -rf "${temporary[@]}"' EXIT

die() {
  echo "build-local.sh: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs an image name"; tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done

# What this needs, said before anything is done.
missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  die "needs podman, runc and debootstrap; not installed here: ${missing[*]}. On Debian or Ubuntu, as root:
    apt-get install -y --no-install-recommends podman runc buildah debootstrap uidmap fuse-overlayfs"
fi
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, and podman building and running as root): run it as root, e.g. sudo $0"
if [ -n "$binary" ] && [ ! -x "$binary" ]; then
  die "--binary $binary is not an executable file"
fi

# The Debian mirror apt already uses here (the first `debian` repository that is not the
# security one), unless DEBIAN_MIRROR says otherwise; none found is an error naming it.
debian_mirror() {
  local uri
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -n -E 's/^[[:space:]]*(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\3/p' \
    | grep -E '/debian/?$' | head -n 1 || true)"
  [ -n "$uri" ] || die "found no Debian mirror in apt's sources (/etc/apt/sources.list*); set DEBIAN_MIRROR to one, such as http://mirror.example/debian"
  echo "$uri"
}

# The base image: a minimal bookworm root filesystem, made once and kept in podman's store.
# A lock keeps two builds at once from making it twice.
make_base() {
  local mirror rootfs
  mirror="${DEBIAN_MIRROR:-}"
  [ -n "$mirror" ] || mirror="$(debian_mirror)" || exit 2
  mirror="${mirror%/}"
  rootfs="$(mktemp -d /var/tmp/alldocs-rootfs.XXXXXX)"
  temporary+=("$rootfs")
  echo "build-local.sh: making $base with debootstrap from $mirror (once; about 2 minutes)" >&2
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2 \
    || die "debootstrap from $mirror failed (see above); set DEBIAN_MIRROR to a reachable Debian mirror"
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    echo "deb ${mirror%/debian}/debian-security bookworm-security main"
  } >"$rootfs/etc/apt/sources.list"
  # As debian:*-slim: apt keeps no package caches (the official images' `docker-clean`),
  # dpkg installs no documentation, manuals or translations.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
  # Nothing of this machine's: the runtime provides DNS and the host name.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  tar -C "$rootfs" --numeric-owner -c . | podman import --change 'CMD ["bash"]' - "$base" >/dev/null
}

exec 9>/var/tmp/alldocs-base.lock
flock 9
podman image exists "$base" || make_base
flock -u 9

if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --locked -p alldocs-fetcher --bin fetcher) >&2
  binary="$root/target/release/fetcher"
fi

# The binary is the only thing in the build context of the `fetcher-binary` stage.
context="$(mktemp -d /var/tmp/alldocs-fetcher-context.XXXXXX)"
temporary+=("$context")
cp "$binary" "$context/fetcher"

# Chroot isolation builds without a container runtime (this machine's cgroup v1 hybrid mode
# stops podman's default one); `apt-get install` in the Dockerfile reaches the mirror.
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
podman build --isolation=chroot --layers \
  -f "$here/Dockerfile" \
  --build-arg RUNTIME_BASE="$base" \
  --build-arg FETCHER_FROM=prebuilt \
  --build-context fetcher-binary="$context" \
  --iidfile "$context/id" -t "$tag" "$context" >&2
id="$(cat "$context/id")"
id="${id#sha256:}"

# The tag's previous image (if nothing else uses it) and the `prebuilt` stage's copy of the
# binary would only take up disk.
if [ -n "$previous" ] && [ "$previous" != "$id" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
podman image prune --force --filter label=org.alldocs.stage=prebuilt >/dev/null 2>&1 || true

size="$(podman image inspect --format '{{.Size}}' "$id")"
echo "built $tag (image $id, $((size / 1000000)) MB)"
