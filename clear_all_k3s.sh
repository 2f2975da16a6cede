#!/usr/bin/env bash
# clear_all_k3s.sh: removes the MLOps platform from one namespace: first the control plane (so
# it starts nothing new), then the training Jobs and inference Deployments/Services the API
# created (label app.kubernetes.io/managed-by=fastapi-mlops-api), then everything
# deploy_all_k3s.sh applied (label app.kubernetes.io/part-of=mlops-platform). With the
# observability platform (--with-observability) also Prometheus' ClusterRole and binding of this
# namespace, and its access to the GPU metrics exporter; the exporter's namespace
# (mlops-gpu-metrics) goes when no other platform namespace uses it.
# The data survives unless --purge: the PersistentVolumeClaims of PostgreSQL, SeaweedFS, Prometheus,
# Loki and Grafana, and the credential Secrets, without which that data could not be read again
# after a new deploy.
set -euo pipefail

readonly SCRIPT_NAME="clear_all_k3s.sh"

# The helpers all three scripts share (die, log, namespace checks), beside this script.
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE != "${BASH_SOURCE[0]}" ]] || HERE=.
# shellcheck source=SCRIPTDIR/kubernetes/k3s-common.sh
source "${HERE}/kubernetes/k3s-common.sh"
readonly PART_OF="mlops-platform"
readonly PLATFORM_SELECTOR="app.kubernetes.io/part-of=${PART_OF}"
readonly API_OBJECTS_SELECTOR="app.kubernetes.io/managed-by=fastapi-mlops-api"
# What the API creates (app/runtime/permissions.py grants it no other kind).
readonly API_KINDS="jobs,deployments,services"
# What kubernetes/base holds; pods and ReplicaSets go with their owners.
readonly PLATFORM_KINDS="deployments,statefulsets,jobs,services,configmaps,networkpolicies,serviceaccounts,roles,rolebindings"
readonly DATA_KINDS="persistentvolumeclaims,secrets"
# Prometheus' cluster-scoped RBAC (kubernetes/observability), labelled with the namespace it serves.
readonly CLUSTER_KINDS="clusterrolebindings,clusterroles"
readonly GPU_METRICS_NAMESPACE="mlops-gpu-metrics"

usage() {
    cat <<EOF
Usage: ./${SCRIPT_NAME} [-y] [--purge] [NAMESPACE]

Remove the MLOps platform from NAMESPACE (default: default): the control plane, the training
Jobs and inference servers it created, MLflow, SeaweedFS, PostgreSQL and their configuration, and
the observability platform when it was deployed (Prometheus, Loki, Alloy, Grafana; namespace
${GPU_METRICS_NAMESPACE} too once no other platform namespace uses it).

Options:
  -y, --yes    do not ask for confirmation
  --purge      also delete the data: the PersistentVolumeClaims (PostgreSQL, SeaweedFS, Prometheus,
               Loki, Grafana) and the credential Secrets, and the namespace itself when
               deploy_all_k3s.sh created it
  -h, --help   show this help
EOF
}

parse_args() {
    NAMESPACE=""
    ASSUME_YES=false
    PURGE=false
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            -y | --yes) ASSUME_YES=true ;;
            --purge) PURGE=true ;;
            --) shift; break ;;
            -*) die_usage "unknown option '$1'" ;;
            *) set_namespace_arg "$1" ;;
        esac
        shift
    done
    finish_namespace "$@"
}

# Asks on the terminal (or stdin); anything but y/yes, or no input at all, answers no.
confirm() {
    local context answer=""
    context=$(kubectl config current-context 2>/dev/null) || context="(none)"
    {
        echo "This removes the MLOps platform from namespace '${NAMESPACE}' (kubectl context '${context}'):"
        echo "  the control plane, its training Jobs and inference servers, MLflow, SeaweedFS, PostgreSQL,"
        echo "  and Prometheus, Loki, Alloy and Grafana where they were deployed."
        if [[ $PURGE == true ]]; then
            echo "  --purge: ALSO the stored data (the volumes of PostgreSQL, SeaweedFS, Prometheus, Loki and"
            echo "  Grafana), the credential Secrets, and the namespace itself if deploy_all_k3s.sh created it."
        else
            echo "  Kept: the volumes and the credential Secrets (use --purge to delete them)."
        fi
        printf 'Continue? [y/N] '
    } >&2
    read -r answer || true
    case $answer in
        y | Y | yes | YES | Yes) ;;
        *) echo "Aborted: nothing was deleted." >&2; exit 1 ;;
    esac
}

namespace_exists() {
    local found
    found=$(kubectl get namespace "$NAMESPACE" --ignore-not-found --output name) ||
        die "cannot reach the cluster with kubectl (check KUBECONFIG; on k3s: export KUBECONFIG=/etc/rancher/k3s/k3s.yaml)"
    [[ -n $found ]]
}

# Whether deploy_all_k3s.sh --with-observability installed Prometheus here (asked before the
# platform's objects are deleted).
has_observability() {
    local found
    found=$(kubectl get statefulset prometheus --namespace "$NAMESPACE" --ignore-not-found --output name)
    [[ -n $found ]]
}

delete_platform() {
    log "Stopping the control plane"
    kubectl delete deployment fastapi-mlops-api --namespace "$NAMESPACE" --ignore-not-found
    log "Deleting the training Jobs and inference servers the API created"
    kubectl delete "$API_KINDS" --namespace "$NAMESPACE" --selector "$API_OBJECTS_SELECTOR" --ignore-not-found
    log "Deleting the platform (MLflow, SeaweedFS, PostgreSQL, configuration, network policy, RBAC)"
    kubectl delete "$PLATFORM_KINDS" --namespace "$NAMESPACE" --selector "$PLATFORM_SELECTOR" --ignore-not-found
}

delete_observability_cluster_objects() {
    log "Deleting Prometheus' ClusterRole and ClusterRoleBinding of namespace ${NAMESPACE}"
    kubectl delete "$CLUSTER_KINDS" --selector "${PLATFORM_SELECTOR},mlops.dev/platform-namespace=${NAMESPACE}" \
        --ignore-not-found
    log "Deleting Prometheus' access to the GPU metrics exporter (namespace ${GPU_METRICS_NAMESPACE})"
    kubectl delete rolebinding "prometheus-from-${NAMESPACE}" --namespace "$GPU_METRICS_NAMESPACE" --ignore-not-found
    # The exporter is a node agent shared by every platform namespace: it goes with the last one.
    local users part_of
    # (kubectl tells "No resources found" on stderr; only the names on stdout count.)
    users=$(kubectl get rolebindings --namespace "$GPU_METRICS_NAMESPACE" \
        --selector app.kubernetes.io/component=prometheus-access --output name 2>/dev/null) ||
        die "cannot list the RoleBindings of namespace ${GPU_METRICS_NAMESPACE}"
    if [[ -n $users ]]; then
        log "Namespace ${GPU_METRICS_NAMESPACE} kept: its GPU metrics exporter serves other platform namespaces"
        return
    fi
    part_of=$(kubectl get namespace "$GPU_METRICS_NAMESPACE" --ignore-not-found \
        --output 'jsonpath={.metadata.labels.app\.kubernetes\.io/part-of}')
    if [[ $part_of == "$PART_OF" ]]; then
        log "Deleting namespace ${GPU_METRICS_NAMESPACE} (the GPU metrics exporter; no platform uses it any more)"
        kubectl delete namespace "$GPU_METRICS_NAMESPACE" --ignore-not-found
    fi
}

purge_data() {
    log "Deleting the data volumes and credential Secrets"
    kubectl delete "$DATA_KINDS" --namespace "$NAMESPACE" --selector "$PLATFORM_SELECTOR" --ignore-not-found
    local created_by
    created_by=$(kubectl get namespace "$NAMESPACE" --output 'jsonpath={.metadata.labels.mlops\.dev/created-by}')
    if [[ $created_by == deploy_all_k3s ]]; then
        log "Deleting namespace ${NAMESPACE} (created by deploy_all_k3s.sh)"
        kubectl delete namespace "$NAMESPACE" --ignore-not-found
    else
        log "Namespace ${NAMESPACE} kept: deploy_all_k3s.sh did not create it"
    fi
}

main() {
    parse_args "$@"
    command -v kubectl >/dev/null 2>&1 || {
        echo "${SCRIPT_NAME}: missing kubectl: talks to the cluster (install kubectl, or on a k3s node link it to 'k3s kubectl')" >&2
        exit 1
    }
    if ! namespace_exists; then
        log "Namespace ${NAMESPACE} does not exist: nothing to remove"
        return
    fi
    if [[ $ASSUME_YES == false ]]; then
        confirm
    fi
    local observability=false
    if has_observability; then observability=true; fi
    delete_platform
    if [[ $observability == true ]]; then
        delete_observability_cluster_objects
    fi
    if [[ $PURGE == true ]]; then
        purge_data
    else
        log "Kept the PersistentVolumeClaims and credential Secrets (the platform's data); --purge deletes them"
    fi
    log "Done: the MLOps platform is removed from namespace ${NAMESPACE}"
}

main "$@"
