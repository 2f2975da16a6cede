#!/usr/bin/env bash
# deploy_all_k3s.sh: installs the whole MLOps platform into one namespace of a k3s cluster (any
# cluster reachable with kubectl works; the image step has a k3s and a registry mode):
#   1. checks the tools it needs,
#   2. creates the namespace and the Secrets (random credentials and API tokens) when absent,
#   3. builds the images (docker/build_images.sh) and makes them available to the cluster:
#      imported into k3s's containerd, or pushed to the registry,
#   4. applies kubernetes/base through a generated overlay that sets the namespace (with
#      --with-observability also the component kubernetes/observability: Prometheus, Loki,
#      Alloy, Grafana, and kubernetes/gpu-metrics: NVIDIA's DCGM exporter on GPU nodes),
#   5. waits for every rollout and prints how to reach the API and MLflow (and Grafana).
# Running it again changes nothing that is already in place: existing Secrets are kept, and the
# applied manifests are the same unless the sources or the images changed.
set -euo pipefail

readonly SCRIPT_NAME="deploy_all_k3s.sh"

# The helpers all three scripts share (die, log, namespace checks), beside this script.
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE != "${BASH_SOURCE[0]}" ]] || HERE=.
# shellcheck source=SCRIPTDIR/kubernetes/k3s-common.sh
source "${HERE}/kubernetes/k3s-common.sh"
readonly DEFAULT_REGISTRY="localhost:5002"
readonly DEFAULT_TIMEOUT_SECONDS=300
readonly PART_OF="mlops-platform"
# The GPU node agent's namespace (kubernetes/gpu-metrics), shared by every platform namespace.
readonly GPU_METRICS_NAMESPACE="mlops-gpu-metrics"
# The images the cluster runs (gpu-base is only the base the workload images are built on).
readonly RUNTIME_IMAGES=(fastapi-mlops-api mlflow-trainer mlflow-inference)

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK_DIR=""

usage() {
    cat <<EOF
Usage: ./${SCRIPT_NAME} [OPTIONS] [NAMESPACE]

Install the MLOps platform (PostgreSQL, SeaweedFS, MLflow and the fastapi-mlops-api control plane)
into NAMESPACE (default: default), creating it when absent.

Options:
  --with-observability  also install Prometheus, Loki, Grafana Alloy and Grafana (dashboards and alert
                        rules) into NAMESPACE, and NVIDIA's DCGM exporter on GPU nodes into namespace
                        ${GPU_METRICS_NAMESPACE}; the Grafana admin password is a random Secret
  --skip-build          use the images already in the cluster's reach: build, import and push nothing
  --image-load MODE     how built images reach the cluster (default: \$MLOPS_IMAGE_LOAD or auto):
                          k3s       docker save | k3s ctr images import -  (this node's containerd; uses sudo when not root)
                          registry  docker push to \$MLOPS_REGISTRY (k3s must be able to pull from it)
                        (podman instead of docker with MLOPS_CONTAINER_TOOL=podman)
                          auto      k3s when the k3s command is here, otherwise registry
  --timeout SECONDS     how long to wait for each rollout (default: ${DEFAULT_TIMEOUT_SECONDS})
  --render              print the manifests that would be applied to NAMESPACE and exit
                        (no cluster access; needs only kubectl; with --with-observability, also
                        those of namespace ${GPU_METRICS_NAMESPACE})
  -h, --help            show this help

Environment:
  MLOPS_REGISTRY        registry prefix of the image names (default: ${DEFAULT_REGISTRY})
  MLOPS_IMAGE_LOAD      default of --image-load
  MLOPS_CONTAINER_TOOL  docker (default) or podman: builds, saves and pushes the images

Afterwards:
  ./monitor_all.sh NAMESPACE                                            status at a glance (with
                                                                        Prometheus: rate, p99, errors)
  kubectl port-forward svc/fastapi-mlops-api-service 8000:80 -n NAMESPACE  then http://localhost:8000/docs
  ./clear_all_k3s.sh NAMESPACE                                          remove it again
EOF
}

cleanup() {
    if [[ -n $WORK_DIR ]]; then
        rm -rf -- "$WORK_DIR"
    fi
}

parse_args() {
    NAMESPACE=""
    SKIP_BUILD=false
    RENDER_ONLY=false
    WITH_OBSERVABILITY=false
    IMAGE_LOAD=${MLOPS_IMAGE_LOAD:-auto}
    CONTAINER_TOOL=${MLOPS_CONTAINER_TOOL:-docker}
    TIMEOUT_SECONDS=$DEFAULT_TIMEOUT_SECONDS
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --skip-build) SKIP_BUILD=true ;;
            --render) RENDER_ONLY=true ;;
            --with-observability) WITH_OBSERVABILITY=true ;;
            --image-load) (($# > 1)) || die_usage "--image-load needs a value"; IMAGE_LOAD=$2; shift ;;
            --image-load=*) IMAGE_LOAD=${1#*=} ;;
            --timeout) (($# > 1)) || die_usage "--timeout needs a value"; TIMEOUT_SECONDS=$2; shift ;;
            --timeout=*) TIMEOUT_SECONDS=${1#*=} ;;
            --) shift; break ;;
            -*) die_usage "unknown option '$1'" ;;
            *) set_namespace_arg "$1" ;;
        esac
        shift
    done
    finish_namespace "$@"
    [[ $TIMEOUT_SECONDS =~ ^[1-9][0-9]*$ ]] || die_usage "--timeout must be a whole number of seconds, not '${TIMEOUT_SECONDS}'"
    case $IMAGE_LOAD in
        auto | k3s | registry) ;;
        *) die_usage "--image-load must be k3s, registry or auto, not '${IMAGE_LOAD}'" ;;
    esac
    case $CONTAINER_TOOL in
        docker | podman) ;;
        *) die_usage "MLOPS_CONTAINER_TOOL must be docker or podman, not '${CONTAINER_TOOL}'" ;;
    esac
    REGISTRY=${MLOPS_REGISTRY:-$DEFAULT_REGISTRY}
    # The prefix is written into the overlay YAML and image names: allow only what they allow.
    if [[ ! $REGISTRY =~ ^[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*$ ]]; then
        die_usage "MLOPS_REGISTRY='${REGISTRY}' is not a valid registry prefix (e.g. localhost:5002 or registry.example.com/team)"
    fi
}

resolve_image_load() {
    if [[ $IMAGE_LOAD == auto ]]; then
        if command -v k3s >/dev/null 2>&1; then IMAGE_LOAD=k3s; else IMAGE_LOAD=registry; fi
    fi
}

# Names every missing tool at once, each with what it is needed for.
check_tools() {
    local missing=()
    command -v kubectl >/dev/null 2>&1 ||
        missing+=("kubectl: talks to the cluster (install kubectl, or on a k3s node link it to 'k3s kubectl')")
    if [[ $RENDER_ONLY == false && $SKIP_BUILD == false ]]; then
        command -v "$CONTAINER_TOOL" >/dev/null 2>&1 ||
            missing+=("${CONTAINER_TOOL}: builds the images (install Docker or podman and set MLOPS_CONTAINER_TOOL, or deploy with --skip-build when the images are already in the cluster)")
        if [[ $IMAGE_LOAD == k3s ]]; then
            command -v k3s >/dev/null 2>&1 ||
                missing+=("k3s: imports the images into k3s's containerd (or use --image-load registry)")
            if ((EUID != 0)); then
                command -v sudo >/dev/null 2>&1 ||
                    missing+=("sudo: 'k3s ctr images import' needs root (or run this script as root)")
            fi
        fi
    fi
    if ((${#missing[@]})); then
        local tool
        for tool in "${missing[@]}"; do
            echo "${SCRIPT_NAME}: missing ${tool}" >&2
        done
        exit 1
    fi
}

# The hex digits od prints are safe in URLs (MLflow's database URI) and need no quoting.
random_hex() {
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# object_exists KIND NAME: whether the object is in the namespace; dies when the cluster cannot
# be asked (--ignore-not-found makes "absent" an empty answer rather than an error).
object_exists() {
    local found
    found=$(kubectl get "$1" "$2" --namespace "$NAMESPACE" --ignore-not-found --output name) ||
        die "cannot read $1/$2 in namespace '${NAMESPACE}' (is the cluster reachable? on k3s: export KUBECONFIG=/etc/rancher/k3s/k3s.yaml)"
    [[ -n $found ]]
}

ensure_namespace() {
    local found
    found=$(kubectl get namespace "$NAMESPACE" --ignore-not-found --output name) ||
        die "cannot reach the cluster with kubectl (check KUBECONFIG; on k3s: export KUBECONFIG=/etc/rancher/k3s/k3s.yaml)"
    if [[ -n $found ]]; then
        log "Namespace ${NAMESPACE} exists"
        return
    fi
    log "Creating namespace ${NAMESPACE}"
    # created-by tells clear_all_k3s.sh --purge that this script made the namespace. The Pod
    # Security labels report (warn, audit) pods that break the restricted standard, which every
    # platform pod and the API's workload pods meet; they block nothing.
    kubectl create --filename - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: "${NAMESPACE}"
  labels:
    mlops.dev/created-by: deploy_all_k3s
    pod-security.kubernetes.io/warn: restricted
    pod-security.kubernetes.io/audit: restricted
EOF
}

# create_secret NAME KEY=VALUE...: the manifest goes through stdin, so no value is ever on a
# command line, where ps would show it.
create_secret() {
    local name=$1
    shift
    local pair manifest
    manifest="apiVersion: v1
kind: Secret
metadata:
  name: ${name}
  labels:
    app.kubernetes.io/name: ${name}
    app.kubernetes.io/part-of: ${PART_OF}
type: Opaque
stringData:"
    for pair in "$@"; do
        manifest+=$'\n'"  ${pair%%=*}: \"${pair#*=}\""
    done
    kubectl create --namespace "$NAMESPACE" --filename - <<<"$manifest"
}

ensure_secrets() {
    local access_key secret_key password admin_token predict_token
    if object_exists secret mlops-s3-credentials; then
        log "Secret mlops-s3-credentials exists: kept"
    else
        log "Creating Secret mlops-s3-credentials (random S3 access key and secret key)"
        access_key=$(random_hex 8)
        secret_key=$(random_hex 20)
        create_secret mlops-s3-credentials \
            "AWS_ACCESS_KEY_ID=mlops${access_key}" \
            "AWS_SECRET_ACCESS_KEY=${secret_key}"
    fi
    if object_exists secret mlops-postgres-credentials; then
        log "Secret mlops-postgres-credentials exists: kept"
    else
        log "Creating Secret mlops-postgres-credentials (random password)"
        password=$(random_hex 16)
        create_secret mlops-postgres-credentials \
            "POSTGRES_USER=mlflow" \
            "POSTGRES_PASSWORD=${password}" \
            "POSTGRES_DB=mlflow"
    fi
    # The control plane on a cluster refuses to start without bearer tokens.
    if object_exists secret mlops-api-tokens; then
        log "Secret mlops-api-tokens exists: kept"
    else
        log "Creating Secret mlops-api-tokens (random admin and predict bearer tokens)"
        admin_token=$(random_hex 24)
        predict_token=$(random_hex 24)
        create_secret mlops-api-tokens "tokens=admin:${admin_token},predict:${predict_token}"
    fi
    # Grafana starts only with this Secret (it would otherwise take admin/admin). Grafana writes
    # the password into its database at its first start; later changes go through Grafana.
    if [[ $WITH_OBSERVABILITY == true ]]; then
        if object_exists secret mlops-grafana-admin; then
            log "Secret mlops-grafana-admin exists: kept"
        else
            log "Creating Secret mlops-grafana-admin (Grafana's admin user, random password)"
            create_secret mlops-grafana-admin "admin-user=admin" "admin-password=$(random_hex 20)"
        fi
    fi
}

image_ref() {
    echo "${REGISTRY}/$1:latest"
}

as_root() {
    if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

build_and_load_images() {
    if [[ $SKIP_BUILD == true ]]; then
        log "Images: skipped (--skip-build)"
        return
    fi
    log "Building images (registry prefix ${REGISTRY})"
    MLOPS_REGISTRY="$REGISTRY" MLOPS_CONTAINER_TOOL="$CONTAINER_TOOL" "${ROOT_DIR}/docker/build_images.sh"
    local refs=() image
    for image in "${RUNTIME_IMAGES[@]}"; do
        refs+=("$(image_ref "$image")")
    done
    case $IMAGE_LOAD in
        k3s)
            log "Importing ${refs[*]} into k3s's containerd"
            # One archive for all three: the workload images share the gpu-base layers.
            local save=(save)
            [[ $CONTAINER_TOOL != podman ]] || save+=(--multi-image-archive)
            "$CONTAINER_TOOL" "${save[@]}" "${refs[@]}" | as_root k3s ctr images import -
            ;;
        registry)
            for image in "${refs[@]}"; do
                log "Pushing ${image}"
                "$CONTAINER_TOOL" push "$image"
            done
            ;;
        *) die "unknown image load mode '${IMAGE_LOAD}'" ;;
    esac
}

# The control plane image's ID, written into its pod template so that a rebuilt image rolls
# the pods (its tag, :latest, does not change) and an unchanged one leaves them alone. With
# --skip-build the ID already on the Deployment is kept.
api_image_id() {
    local id
    if [[ $SKIP_BUILD == false ]]; then
        id=$("$CONTAINER_TOOL" image inspect --format '{{.Id}}' "$(image_ref fastapi-mlops-api)")
    else
        id=$(kubectl get deployment fastapi-mlops-api --namespace "$NAMESPACE" --ignore-not-found \
            --output 'jsonpath={.spec.template.metadata.annotations.mlops\.dev/image-id}')
    fi
    if [[ -n $id && ! $id =~ ^[A-Za-z0-9:]+$ ]]; then
        die "unexpected image ID '${id}'"
    fi
    echo "$id"
}

# write_overlay DIR IMAGE_ID: a copy of kubernetes/base plus an overlay that sets the namespace
# (kustomize then also rewrites the RoleBinding's subject), ships the repository's current
# model_profiles.yaml, and applies the registry prefix and the control plane's image ID. With
# --with-observability the overlay adds the component kubernetes/observability.
write_overlay() {
    local dir=$1 image_id=$2
    cp -R "${ROOT_DIR}/kubernetes/base" "${dir}/base"
    if [[ $WITH_OBSERVABILITY == true ]]; then
        cp -R "${ROOT_DIR}/kubernetes/observability" "${dir}/observability"
    fi
    # The profiles name the workload images with the default prefix: give them MLOPS_REGISTRY's.
    # (REGISTRY holds no character that sed's replacement would interpret.)
    sed "s#${DEFAULT_REGISTRY}/#${REGISTRY}/#g" "${ROOT_DIR}/model_profiles.yaml" >"${dir}/base/model_profiles.yaml"
    mkdir "${dir}/overlay"
    {
        cat <<EOF
# Generated by ${SCRIPT_NAME}.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: "${NAMESPACE}"
resources:
  - ../base
EOF
        if [[ $WITH_OBSERVABILITY == true ]]; then
            cat <<EOF
components:
  - ../observability
EOF
        fi
        if [[ $REGISTRY != "$DEFAULT_REGISTRY" ]]; then
            cat <<EOF
images:
  - name: ${DEFAULT_REGISTRY}/fastapi-mlops-api
    newName: ${REGISTRY}/fastapi-mlops-api
EOF
        fi
        # kustomize rewrites the RoleBinding's subject namespace as a bare YAML scalar, so a
        # valid name such as 123, 1e3 or null would come out as a number or null: set it again
        # as a quoted string.
        cat <<EOF
patches:
  - target:
      kind: RoleBinding
      name: fastapi-mlops-api
    patch: |-
      - op: replace
        path: /subjects/0/namespace
        value: "${NAMESPACE}"
EOF
        if [[ $WITH_OBSERVABILITY == true ]]; then
            observability_patches
        fi
        if [[ -n $image_id || $IMAGE_LOAD == registry ]]; then
            cat <<EOF
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: fastapi-mlops-api
      spec:
        template:
EOF
            if [[ -n $image_id ]]; then
                cat <<EOF
          metadata:
            annotations:
              mlops.dev/image-id: "${image_id}"
EOF
            fi
            # From a registry, a node that has an older :latest must pull the new one.
            if [[ $IMAGE_LOAD == registry ]]; then
                cat <<EOF
          spec:
            containers:
              - name: api
                imagePullPolicy: Always
EOF
            fi
        fi
    } >"${dir}/overlay/kustomization.yaml"
}

# The overlay's patches for kubernetes/observability: the ServiceAccount subjects quoted as above;
# Prometheus' ClusterRole and ClusterRoleBinding (cluster-scoped: kustomize's namespace does not
# reach them) named and labelled after the namespace, so that each platform has its own and
# clear_all_k3s.sh finds this one. (kustomize follows the rename into the binding's roleRef.)
observability_patches() {
    local binding
    for binding in prometheus alloy; do
        cat <<EOF
  - target:
      kind: RoleBinding
      name: ${binding}
    patch: |-
      - op: replace
        path: /subjects/0/namespace
        value: "${NAMESPACE}"
EOF
    done
    cat <<EOF
  - target:
      kind: ClusterRole
      name: mlops-prometheus
    patch: |-
      - op: replace
        path: /metadata/name
        value: "mlops-prometheus-${NAMESPACE}"
      - op: add
        path: /metadata/labels/mlops.dev~1platform-namespace
        value: "${NAMESPACE}"
  - target:
      kind: ClusterRoleBinding
      name: mlops-prometheus
    patch: |-
      - op: replace
        path: /metadata/name
        value: "mlops-prometheus-${NAMESPACE}"
      - op: add
        path: /metadata/labels/mlops.dev~1platform-namespace
        value: "${NAMESPACE}"
      - op: replace
        path: /subjects/0/namespace
        value: "${NAMESPACE}"
EOF
}

# write_gpu_metrics_overlay DIR: kubernetes/gpu-metrics (its own namespace) plus the RoleBinding
# that lets this platform's Prometheus find the exporters there.
write_gpu_metrics_overlay() {
    local dir=$1
    cp -R "${ROOT_DIR}/kubernetes/gpu-metrics" "${dir}/gpu-metrics"
    mkdir "${dir}/gpu-metrics-overlay"
    cat >"${dir}/gpu-metrics-overlay/kustomization.yaml" <<EOF
# Generated by ${SCRIPT_NAME}.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../gpu-metrics
  - prometheus-access.yaml
EOF
    cat >"${dir}/gpu-metrics-overlay/prometheus-access.yaml" <<EOF
# Generated by ${SCRIPT_NAME}: Prometheus of namespace ${NAMESPACE} may list the exporter pods.
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: prometheus-from-${NAMESPACE}
  namespace: ${GPU_METRICS_NAMESPACE}
  labels:
    app.kubernetes.io/name: dcgm-exporter
    app.kubernetes.io/component: prometheus-access
    app.kubernetes.io/part-of: ${PART_OF}
    mlops.dev/platform-namespace: "${NAMESPACE}"
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: dcgm-exporter-discovery
subjects:
  - kind: ServiceAccount
    name: prometheus
    namespace: "${NAMESPACE}"
EOF
}

apply_manifests() {
    local image_id
    image_id=$(api_image_id)
    write_overlay "$WORK_DIR" "$image_id"
    if [[ $WITH_OBSERVABILITY == true ]]; then
        log "Applying kubernetes/base and kubernetes/observability to namespace ${NAMESPACE}"
    else
        log "Applying kubernetes/base to namespace ${NAMESPACE}"
    fi
    kubectl apply --kustomize "${WORK_DIR}/overlay"
    if [[ $WITH_OBSERVABILITY == true ]]; then
        write_gpu_metrics_overlay "$WORK_DIR"
        log "Applying kubernetes/gpu-metrics to namespace ${GPU_METRICS_NAMESPACE}"
        kubectl apply --kustomize "${WORK_DIR}/gpu-metrics-overlay"
    fi
}

wait_for_rollouts() {
    local target
    for target in statefulset/postgres statefulset/seaweedfs; do
        log "Waiting for ${target}"
        kubectl rollout status "$target" --namespace "$NAMESPACE" --timeout "${TIMEOUT_SECONDS}s" ||
            die "${target} is not ready after ${TIMEOUT_SECONDS}s: see ./monitor_all.sh ${NAMESPACE}"
    done
    log "Waiting for job/s3-create-buckets"
    kubectl wait --for condition=complete job/s3-create-buckets --namespace "$NAMESPACE" \
        --timeout "${TIMEOUT_SECONDS}s" ||
        die "the bucket Job did not complete after ${TIMEOUT_SECONDS}s: kubectl logs job/s3-create-buckets -n ${NAMESPACE}"
    for target in deployment/mlflow deployment/fastapi-mlops-api; do
        log "Waiting for ${target}"
        kubectl rollout status "$target" --namespace "$NAMESPACE" --timeout "${TIMEOUT_SECONDS}s" ||
            die "${target} is not ready after ${TIMEOUT_SECONDS}s: see ./monitor_all.sh ${NAMESPACE}"
    done
    if [[ $WITH_OBSERVABILITY == true ]]; then
        for target in statefulset/prometheus statefulset/loki deployment/alloy deployment/grafana; do
            log "Waiting for ${target}"
            kubectl rollout status "$target" --namespace "$NAMESPACE" --timeout "${TIMEOUT_SECONDS}s" ||
                die "${target} is not ready after ${TIMEOUT_SECONDS}s: see ./monitor_all.sh ${NAMESPACE}"
        done
        # Done at once on a cluster without GPU nodes (no node asks for an exporter).
        log "Waiting for daemonset/dcgm-exporter in namespace ${GPU_METRICS_NAMESPACE}"
        kubectl rollout status daemonset/dcgm-exporter --namespace "$GPU_METRICS_NAMESPACE" \
            --timeout "${TIMEOUT_SECONDS}s" ||
            die "the DCGM exporter is not ready on every GPU node after ${TIMEOUT_SECONDS}s: kubectl get pods -n ${GPU_METRICS_NAMESPACE}"
    fi
}

# A deploy without --with-observability leaves an observability platform deployed earlier as it
# is (kubectl apply removes nothing); it is neither updated nor removed, and the note says so.
report_kept_observability() {
    if [[ $WITH_OBSERVABILITY == false ]] && object_exists statefulset prometheus; then
        cat >&2 <<EOF
${SCRIPT_NAME}: note: the observability platform (Prometheus, Loki, Alloy, Grafana) deployed earlier is still in
  namespace '${NAMESPACE}' and was not updated: deploy with --with-observability to update it.
EOF
    fi
}

# Platforms deployed before SeaweedFS replaced MinIO still have MinIO's StatefulSet, Service, bucket
# Job and volume: kubectl apply leaves objects the manifests no longer name. They are not deleted
# here (the volume holds that deployment's artifacts and data sets); the note says what to do.
report_retired_minio() {
    if object_exists statefulset minio; then
        cat >&2 <<EOF
${SCRIPT_NAME}: note: StatefulSet minio, from an earlier version of the platform, is still in namespace '${NAMESPACE}'.
  The platform now keeps artifacts and data sets in SeaweedFS (http://seaweedfs:8333); MinIO and its
  volume data-minio-0 were left as they are. Restart MLflow (it read MinIO's address at its start),
  copy the buckets over, then remove MinIO: see "Moving from MinIO" in kubernetes/README.md.
EOF
    fi
}

print_access() {
    cat <<EOF

The MLOps platform is running in namespace '${NAMESPACE}'.
  API (docs at http://localhost:8000/docs):
    kubectl port-forward svc/fastapi-mlops-api-service 8000:80 -n ${NAMESPACE}
  API bearer tokens (role:token, comma-separated; send 'Authorization: Bearer TOKEN'):
    kubectl get secret mlops-api-tokens -n ${NAMESPACE} -o jsonpath='{.data.tokens}' | base64 -d
  MLflow UI (http://localhost:5000):
    kubectl port-forward svc/mlflow 5000:5000 -n ${NAMESPACE}
  S3 store (SeaweedFS; s3://datasets/ and s3://mlflow/, keys in Secret mlops-s3-credentials):
    kubectl port-forward svc/seaweedfs 8333:8333 -n ${NAMESPACE}   then endpoint http://localhost:8333
  Status:  ./monitor_all.sh ${NAMESPACE}
  Removal: ./clear_all_k3s.sh ${NAMESPACE}
EOF
    if [[ $WITH_OBSERVABILITY == true ]]; then
        cat <<EOF
  Grafana (dashboards in the folder MLOps; user admin):
    kubectl port-forward svc/grafana 3000:3000 -n ${NAMESPACE}   then http://localhost:3000
    kubectl get secret mlops-grafana-admin -n ${NAMESPACE} -o jsonpath='{.data.admin-password}' | base64 -d
  Prometheus (alerts at /alerts):
    kubectl port-forward svc/prometheus 9090:9090 -n ${NAMESPACE}   then http://localhost:9090
EOF
    fi
}

main() {
    parse_args "$@"
    resolve_image_load
    check_tools
    WORK_DIR=$(mktemp -d)
    trap cleanup EXIT

    if [[ $RENDER_ONLY == true ]]; then
        write_overlay "$WORK_DIR" ""
        kubectl kustomize "${WORK_DIR}/overlay"
        if [[ $WITH_OBSERVABILITY == true ]]; then
            write_gpu_metrics_overlay "$WORK_DIR"
            echo "---"
            kubectl kustomize "${WORK_DIR}/gpu-metrics-overlay"
        fi
        return
    fi

    ensure_namespace
    ensure_secrets
    build_and_load_images
    apply_manifests
    wait_for_rollouts
    report_retired_minio
    report_kept_observability
    print_access
}

main "$@"
