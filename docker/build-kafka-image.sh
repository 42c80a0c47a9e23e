#!/usr/bin/env bash
# Build streamsocial-lab/kafka:<version> without any image registry:
#   1. base:  a Debian bookworm minbase root filesystem from debootstrap, plus
#             openjdk-17-jre-headless and a user "appuser" (uid 1000), `docker import`ed;
#   2. kafka: the broker jars the local backend resolves with Maven (`mvn --strict-checksums`;
#             only the jars Maven listed, not every jar in the cache folder), and
#             docker/kafka/run, the entrypoint on the official apache/kafka image's contract.
# Each step is skipped when an image built from the same inputs exists (label
# streamsocial.inputs = hash of the inputs), so a second run with nothing changed takes seconds.
# Needs: root (debootstrap), a Docker daemon, debootstrap, Python with lab_kit (for the jars).
# Env: PY (python with lab_kit; default .venv/bin/python), DEBIAN_MIRROR (default: the first
# Debian mirror in /etc/apt/sources.list*, as https; else https://deb.debian.org/debian; plain
# http only with ALLOW_HTTP_MIRROR=1), KAFKA_IMAGE_TAG (default streamsocial-lab/kafka:<v>).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
PY=${PY:-$repo/.venv/bin/python}
SUITE=bookworm
PACKAGES=openjdk-17-jre-headless
export DOCKER_BUILDKIT=0  # the classic builder: works offline and needs no buildx plugin

log() { printf '[kafka-image %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf 'kafka-image: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers: start it (sudo dockerd &, or Docker Desktop)"

version=$("$PY" -c 'from lab_kit import lab_env; print(lab_env.KAFKA_VERSION)') \
    || die "cannot import lab_kit with $PY: run \`make setup\` first"
tag=${KAFKA_IMAGE_TAG:-streamsocial-lab/kafka:$version}

label_of() { docker image inspect --format '{{ index .Config.Labels "streamsocial.inputs" }}' "$1" 2>/dev/null || true; }

# The mirror debootstrap fetches from, over https (or file://): an http:// one is rewritten to
# https://; an explicit DEBIAN_MIRROR=http://... needs ALLOW_HTTP_MIRROR=1.
debian_mirror() {
    local m
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        m=$DEBIAN_MIRROR
        case "$m" in
            https://*|file://*) ;;
            http://*) [ "${ALLOW_HTTP_MIRROR:-0}" = 1 ] \
                          || die "DEBIAN_MIRROR=$m is plain http: use https (or ALLOW_HTTP_MIRROR=1)" ;;
            *) die "DEBIAN_MIRROR=$m: expected an https:// (or file://) URL" ;;
        esac
        echo "$m"; return
    fi
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -v '^[[:space:]]*#' | grep -oE '(https?|file)://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ')
    m=${m/#http:\/\//https://}
    echo "${m:-https://deb.debian.org/debian}"
}

# --- 1. base image: Debian + JRE -----------------------------------------------------------
base_inputs=$(printf 'suite=%s\npackages=%s\nrecipe=3\n' "$SUITE" "$PACKAGES")
base_hash=$(printf '%s' "$base_inputs" | sha256sum | cut -c1-16)
base_tag="streamsocial-lab/debian-jre17:$SUITE"
if [ "$(label_of "$base_tag")" = "$base_hash" ]; then
    log "base $base_tag is up to date ($base_hash)"
else
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root: run as root (CI does)"
    mirror=$(debian_mirror)
    case "$mirror" in https://*) command -v update-ca-certificates >/dev/null \
        || die "an https mirror needs ca-certificates (apt-get install ca-certificates)" ;; esac
    work=$(mktemp -d /var/tmp/streamsocial-rootfs.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    log "debootstrap $SUITE (minbase + $PACKAGES) from $mirror ..."
    t0=$SECONDS
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$mirror" \
        > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    log "debootstrap took $((SECONDS - t0)) s"
    chroot "$work/rootfs" useradd --uid 1000 --create-home --shell /bin/bash appuser
    mkdir -p "$work/rootfs"/{opt/kafka/config,opt/kafka/libs,var/lib/kafka/data,etc/kafka/docker,etc/kafka/secrets,mnt/shared/config}
    chroot "$work/rootfs" chown -R 1000:1000 /opt/kafka /var/lib/kafka /etc/kafka /mnt/shared/config
    rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/* \
        "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/locale/*
    java_home=$(dirname "$(dirname "$(readlink -f "$work/rootfs/usr/bin/java")")")
    java_home=${java_home#"$work/rootfs"}
    log "docker import -> $base_tag"
    tar -C "$work/rootfs" --numeric-owner -c . | docker import \
        --change "LABEL streamsocial.inputs=$base_hash" \
        --change "ENV JAVA_HOME=$java_home" \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" \
        --change 'CMD ["/bin/bash"]' \
        - "$base_tag" >/dev/null
    rm -rf "$work"; trap - EXIT
fi
base_id=$(docker image inspect --format '{{.Id}}' "$base_tag")

# --- 2. kafka image: jars + entrypoint ---------------------------------------------------
# the jars Maven resolved (its classpath list), one path a line: never other jars of the folder
jars=$("$PY" -c 'from lab_kit.broker.local import broker_jars; print("\n".join(map(str, broker_jars())))') \
    || die "could not resolve the Kafka jars with Maven (see above)"
[ -n "$jars" ] || die "Maven resolved no jar"
kafka_hash=$( { echo "$base_id"; echo "$version"
               sha256sum "$here/kafka/Dockerfile" "$here/kafka/run" "$here/kafka/server.properties" | cut -d' ' -f1
               printf '%s\n' "$jars" | LC_ALL=C sort | xargs sha256sum | sed 's| .*/| |'; } | sha256sum | cut -c1-16)
if [ "$(label_of "$tag")" = "$kafka_hash" ]; then
    log "$tag is up to date ($kafka_hash): nothing to build"
    exit 0
fi
ctx=$(mktemp -d /var/tmp/streamsocial-kafka-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/libs"
printf '%s\n' "$jars" | xargs cp -t "$ctx/libs/"
cp "$here/kafka/Dockerfile" "$here/kafka/run" "$here/kafka/server.properties" "$ctx/"
log "docker build -> $tag"
docker build -q --build-arg "BASE=$base_tag" --label "streamsocial.inputs=$kafka_hash" \
    --label "org.opencontainers.image.version=$version" -t "$tag" "$ctx" >/dev/null
docker image prune -f --filter "label=streamsocial.inputs" >/dev/null 2>&1 || true
log "built $tag ($kafka_hash)"
