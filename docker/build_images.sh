#!/usr/bin/env bash
# Builds the platform's container images from docker/, from the repository root as context:
#   fastapi    REGISTRY/fastapi-mlops-api:latest  the control plane (docker/Dockerfile.fastapi)
#   gpu-base   REGISTRY/mlops-gpu-base:latest     Python, torch and the workloads' packages (docker/Dockerfile.gpu-base)
#   trainer    REGISTRY/mlflow-trainer:latest     training Jobs, FROM gpu-base
#   inference  REGISTRY/mlflow-inference:latest   inference Deployments (and vLLM), FROM gpu-base
# REGISTRY is $MLOPS_REGISTRY (default localhost:5002). The engine is Docker or podman
# ($MLOPS_CONTAINER_TOOL). deploy_all_k3s.sh calls this script; it can also be run on its own
# (`make images`).
set -euo pipefail

readonly DEFAULT_REGISTRY="localhost:5002"
# Build order: trainer and inference are built FROM the gpu-base image.
readonly ALL_IMAGES=(fastapi gpu-base trainer inference)

usage() {
    cat <<EOF
Usage: docker/build_images.sh [--push] [IMAGE...]

Build the platform images (all of them when no IMAGE is named), in this order:
  fastapi    \${MLOPS_REGISTRY}/fastapi-mlops-api:latest
  gpu-base   \${MLOPS_REGISTRY}/mlops-gpu-base:latest
  trainer    \${MLOPS_REGISTRY}/mlflow-trainer:latest     (FROM gpu-base: build gpu-base first)
  inference  \${MLOPS_REGISTRY}/mlflow-inference:latest   (FROM gpu-base: build gpu-base first)

Options:
  --push      push each image to its registry after building it
  -h, --help  show this help

Environment:
  MLOPS_REGISTRY            registry prefix of the image names (default ${DEFAULT_REGISTRY})
  MLOPS_CONTAINER_TOOL      docker or podman (default: docker if installed, else podman)
  MLOPS_PYTHON_BUILD_IMAGE  image of the build stages only, in place of the Python base image (the
                            stand-in docker/dev/python_standin.sh makes); shipped stages never use it
EOF
}

die() {
    echo "build_images.sh: $*" >&2
    exit 2
}

# image_repository NAME: the repository (without tag) of one of ALL_IMAGES.
image_repository() {
    case $1 in
        fastapi) echo "${REGISTRY}/fastapi-mlops-api" ;;
        gpu-base) echo "${REGISTRY}/mlops-gpu-base" ;;
        trainer) echo "${REGISTRY}/mlflow-trainer" ;;
        inference) echo "${REGISTRY}/mlflow-inference" ;;
        *) die "unknown image '$1' (known: ${ALL_IMAGES[*]})" ;;
    esac
}

# choose_tool: the container engine, MLOPS_CONTAINER_TOOL, else docker if installed, else podman.
choose_tool() {
    if [[ -n ${MLOPS_CONTAINER_TOOL:-} ]]; then
        case $MLOPS_CONTAINER_TOOL in
            docker | podman) ;;
            *) die "MLOPS_CONTAINER_TOOL='${MLOPS_CONTAINER_TOOL}' must be docker or podman" ;;
        esac
        command -v "$MLOPS_CONTAINER_TOOL" >/dev/null 2>&1 ||
            die "${MLOPS_CONTAINER_TOOL} not found (MLOPS_CONTAINER_TOOL=${MLOPS_CONTAINER_TOOL})"
        TOOL=$MLOPS_CONTAINER_TOOL
    elif command -v docker >/dev/null 2>&1; then
        TOOL=docker
    elif command -v podman >/dev/null 2>&1; then
        TOOL=podman
    else
        die "no container engine: install Docker or podman (see README, 'Images'), or set MLOPS_CONTAINER_TOOL"
    fi
}

build_image() {
    local name=$1
    local ref
    ref="$(image_repository "$name"):latest"
    local args=(build --file "${ROOT_DIR}/docker/Dockerfile.${name}" --tag "$ref")
    if [[ $TOOL == podman ]]; then
        # Docker's image format: OCI's has no HEALTHCHECK, podman would drop it.
        args+=(--format docker)
    fi
    if [[ $name == trainer || $name == inference ]]; then
        args+=(--build-arg "GPU_BASE_IMAGE=$(image_repository gpu-base):latest")
    fi
    # The trainer has no build stage.
    if [[ -n ${MLOPS_PYTHON_BUILD_IMAGE:-} && $name != trainer ]]; then
        args+=(--build-arg "PYTHON_BUILD_IMAGE=${MLOPS_PYTHON_BUILD_IMAGE}")
    fi
    echo "==> ${TOOL} build ${ref}"
    local started=$SECONDS
    "$TOOL" "${args[@]}" "$ROOT_DIR"
    echo "==> built ${ref} in $((SECONDS - started)) s"
    if [[ $PUSH == true ]]; then
        echo "==> ${TOOL} push ${ref}"
        "$TOOL" push "$ref"
    fi
}

main() {
    PUSH=false
    REGISTRY=${MLOPS_REGISTRY:-$DEFAULT_REGISTRY}
    # The prefix ends up in image names and in YAML written by deploy_all_k3s.sh.
    if [[ ! $REGISTRY =~ ^[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*$ ]]; then
        die "MLOPS_REGISTRY='${REGISTRY}' is not a valid registry prefix (e.g. localhost:5002 or registry.example.com/team)"
    fi
    local requested=()
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --push) PUSH=true ;;
            -*) die "unknown option '$1' (see --help)" ;;
            *) image_repository "$1" >/dev/null; requested+=("$1") ;;
        esac
        shift
    done

    choose_tool

    ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    local name wanted
    # Build in the fixed order whatever order the names were given in.
    for name in "${ALL_IMAGES[@]}"; do
        if ((${#requested[@]} == 0)); then
            build_image "$name"
            continue
        fi
        for wanted in "${requested[@]}"; do
            if [[ $wanted == "$name" ]]; then
                build_image "$name"
                break
            fi
        done
    done
}

main "$@"
