#!/usr/bin/env bash
# `make images-test`: builds the four images and starts each one (tests/test_images.py): the API
# image on the Kubernetes runtime against the fake Kubernetes API (and with no settings at all),
# the trainer image training against a real MLflow server, the inference image serving that run,
# predicts through the API image. Development and CI helper; not part of `make test`.
#
# With podman (the default here; MLOPS_CONTAINER_TOOL=docker for Docker), using
# docker/dev/containers.conf unless CONTAINERS_CONF names another. Where no image registry can be
# reached, MLOPS_STANDIN=1 (the default) first makes the stand-in Python base images
# (docker/dev/python_standin.sh); MLOPS_STANDIN=0 builds on the real python image instead.
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-${ROOT_DIR}/.venv/bin/python}
export MLOPS_CONTAINER_TOOL=${MLOPS_CONTAINER_TOOL:-podman}

# A cold build needs about 25 GB at its peak (the images, their build stages, a layer being
# committed); earlier builds' layers stay behind until pruned. Stop before filling the disk.
readonly NEEDED_GB=30

if [[ $MLOPS_CONTAINER_TOOL == podman ]]; then
    export CONTAINERS_CONF=${CONTAINERS_CONF:-${ROOT_DIR}/docker/dev/containers.conf}
    storage=$(podman info --format '{{.Store.GraphRoot}}')
    free_gb=$(($(df --output=avail -k "$storage" | tail -1) / 1024 / 1024))
    if ((free_gb < NEEDED_GB)); then
        echo "images_test.sh: ${free_gb} GB free where podman stores images (${storage}), ${NEEDED_GB} GB needed:" \
            "free some, e.g. 'podman image prune' (earlier builds' layers)" >&2
        exit 2
    fi
    if [[ ${MLOPS_STANDIN:-1} == 1 ]]; then
        "${ROOT_DIR}/docker/dev/python_standin.sh"
        MLOPS_PYTHON_BUILD_IMAGE=$("${ROOT_DIR}/docker/dev/python_standin.sh" --print-build-image)
        export MLOPS_PYTHON_BUILD_IMAGE
    fi
fi

started=$SECONDS
"${ROOT_DIR}/docker/build_images.sh"
echo "==> all images built in $((SECONDS - started)) s"
"$MLOPS_CONTAINER_TOOL" images --filter "reference=${MLOPS_REGISTRY:-localhost:5002}/*" \
    --format '{{.Repository}}:{{.Tag}} {{.Size}}'

cd "$ROOT_DIR"
MLOPS_IMAGES_TEST=1 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_images.py
