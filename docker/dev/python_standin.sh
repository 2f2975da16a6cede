#!/usr/bin/env bash
# Development and test helper, never shipped: stand-ins for the images' Python base image where no
# image registry can be reached (as on this project's development machines), made with debootstrap
# and podman:
#   PYTHON_IMAGE (docker.io/library/python:<tag>, the tag of docker/Dockerfile.fastapi's ARG):
#       Debian bookworm's python3 (the official image's Debian release), imported under the official
#       image's name, so that the Dockerfiles build unchanged;
#   localhost/mlops-python-build:<tag>: the same, plus this host's extra CA certificates (so that pip
#       trusts the package mirror's certificate) and the host's local wheels (so that torch==2.13.0
#       resolves to the CPU build, +cpu, instead of several GB of CUDA libraries). Builds use it only
#       for their build stages (--build-arg PYTHON_BUILD_IMAGE); every shipped stage is FROM
#       PYTHON_IMAGE, so neither the certificates nor the wheels reach an image.
# Each is made only when missing (--force remakes both). Needs root, debootstrap and podman.
set -euo pipefail

readonly DEBIAN_SUITE=bookworm
readonly DEBIAN_MIRROR=${MLOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly BUILD_REPOSITORY=localhost/mlops-python-build
# Extra CA certificates of this host (Debian's place for them) and local wheel directories.
readonly HOST_CA_DIR=${MLOPS_HOST_CA_DIR:-/usr/local/share/ca-certificates}
readonly HOST_WHEELS=${MLOPS_HOST_WHEELS:-${PIP_FIND_LINKS:-}}

usage() {
    cat <<USAGE
Usage: docker/dev/python_standin.sh [--force] [--print-build-image]

Makes the stand-in Python base images with podman (see the comment at the top of this file):
  docker.io/library/python:TAG     Debian ${DEBIAN_SUITE}'s python3, under the official image's name
  ${BUILD_REPOSITORY}:TAG  the same + this host's CA certificates and local wheels (build stages only)
TAG is the one docker/Dockerfile.fastapi pins.

Options:
  --force              remake both images even if they exist
  --print-build-image  print the build image's name and exit
Environment:
  MLOPS_DEBIAN_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
  MLOPS_HOST_CA_DIR    extra CA certificates (*.crt) to trust in builds (default /usr/local/share/ca-certificates)
  MLOPS_HOST_WHEELS    a directory of wheels pip may install from in builds (default \$PIP_FIND_LINKS)
USAGE
}

die() {
    echo "python_standin.sh: $*" >&2
    exit 2
}

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK_DIR=$(mktemp -d)
trap 'rm -rf "$WORK_DIR"' EXIT

python_tag() {
    sed -n 's/^ARG PYTHON_IMAGE=python:\(.*\)$/\1/p' "${ROOT_DIR}/docker/Dockerfile.fastapi"
}

make_python_image() {
    local image=$1 work
    echo "==> debootstrap ${DEBIAN_SUITE} with python3 -> ${image}"
    work=$(mktemp -d -p "$WORK_DIR")
    # python-is-python3 gives `python`, python3-venv `python -m venv`, python3-dev Python's headers
    # (which compilers at run time need, e.g. Triton's), as the official image has.
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,python-is-python3,ca-certificates \
        "$DEBIAN_SUITE" "${work}/rootfs" "$DEBIAN_MIRROR" >"${work}/debootstrap.log" 2>&1 ||
        { tail -20 "${work}/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "${work}/rootfs/var/cache/apt/archives/"*.deb "${work}/rootfs/var/lib/apt/lists/"*
    tar -C "${work}/rootfs" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$image" >/dev/null
}

make_build_image() {
    local base=$1 image=$2 work cert
    echo "==> ${image}: ${base} + CA certificates from ${HOST_CA_DIR} + wheels from ${HOST_WHEELS:-nowhere}"
    work=$(mktemp -d -p "$WORK_DIR")
    mkdir -p "${work}/certs" "${work}/wheels"
    for cert in "${HOST_CA_DIR}"/*.crt; do
        [[ -e $cert ]] && cp "$cert" "${work}/certs/"
    done
    if [[ -n $HOST_WHEELS && -d $HOST_WHEELS ]]; then
        find "$HOST_WHEELS" -maxdepth 1 -name '*.whl' -exec cp {} "${work}/wheels/" \;
    fi
    cat >"${work}/Containerfile" <<CONTAINERFILE
FROM ${base}
COPY certs/ /usr/local/share/ca-certificates/
COPY wheels/ /opt/wheels/
RUN update-ca-certificates >/dev/null
# pip inside a virtual environment reads its own certificate bundle unless told otherwise.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    PIP_FIND_LINKS=/opt/wheels
CONTAINERFILE
    podman build --quiet --pull=never --tag "$image" "$work" >/dev/null
}

main() {
    local force=false
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --force) force=true ;;
            --print-build-image) echo "${BUILD_REPOSITORY}:$(python_tag)"; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
    local tag python_image build_image
    tag=$(python_tag)
    [[ -n $tag ]] || die "no 'ARG PYTHON_IMAGE=python:TAG' in docker/Dockerfile.fastapi"
    python_image="docker.io/library/python:${tag}"
    build_image="${BUILD_REPOSITORY}:${tag}"
    command -v podman >/dev/null 2>&1 || die "podman not found (apt-get install podman buildah)"
    if [[ $force == true ]] || ! podman image exists "$python_image"; then
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (apt-get install debootstrap)"
        ((EUID == 0)) || die "debootstrap needs root"
        make_python_image "$python_image"
    fi
    if [[ $force == true ]] || ! podman image exists "$build_image"; then
        make_build_image "$python_image" "$build_image"
    fi
    echo "stand-ins ready: ${python_image} (shipped stages), ${build_image} (build stages only)"
}

main "$@"
