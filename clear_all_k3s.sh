#!/usr/bin/env bash
# clear_all_k3s.sh: removes the MLOps platform from one namespace: first the control plane (so
# it starts nothing new), then the training Jobs and inference Deployments/Services the API
# created (label app.kubernetes.io/managed-by=fastapi-mlops-api), then everything
# deploy_all_k3s.sh applied (label app.kubernetes.io/part-of=mlops-platform).
# The data survives unless --purge: the PersistentVolumeClaims of PostgreSQL and SeaweedFS, and the
# credential Secrets, without which that data could not be read again after a new deploy.
set -euo pipefail

readonly SCRIPT_NAME="clear_all_k3s.sh"

# The helpers all three scripts share (die, log, namespace checks), beside this script.
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE != "${BASH_SOURCE[0]}" ]] || HERE=.
# shellcheck source=SCRIPTDIR/kubernetes/k3s-common.sh
source "${HERE}/kubernetes/k3s-common.sh"
readonly PLATFORM_SELECTOR="app.kubernetes.io/part-of=mlops-platform"
readonly API_OBJECTS_SELECTOR="app.kubernetes.io/managed-by=fastapi-mlops-api"
# What the API creates (app/runtime/permissions.py grants it no other kind).
readonly API_KINDS="jobs,deployments,services"
# What kubernetes/base holds; pods and ReplicaSets go with their owners.
readonly PLATFORM_KINDS="deployments,statefulsets,jobs,services,configmaps,networkpolicies,serviceaccounts,roles,rolebindings"
readonly DATA_KINDS="persistentvolumeclaims,secrets"

usage() {
    cat <<EOF
Usage: ./${SCRIPT_NAME} [-y] [--purge] [NAMESPACE]

Remove the MLOps platform from NAMESPACE (default: default): the control plane, the training
Jobs and inference servers it created, MLflow, SeaweedFS, PostgreSQL and their configuration.

Options:
  -y, --yes    do not ask for confirmation
  --purge      also delete the data: the PersistentVolumeClaims of PostgreSQL and SeaweedFS and the
               credential Secrets, and the namespace itself when deploy_all_k3s.sh created it
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
        echo "  the control plane, its training Jobs and inference servers, MLflow, SeaweedFS, PostgreSQL."
        if [[ $PURGE == true ]]; then
            echo "  --purge: ALSO the stored data (PostgreSQL and SeaweedFS volumes), the credential Secrets,"
            echo "  and the namespace itself if deploy_all_k3s.sh created it."
        else
            echo "  Kept: the PostgreSQL and SeaweedFS volumes and the credential Secrets (use --purge to delete them)."
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

delete_platform() {
    log "Stopping the control plane"
    kubectl delete deployment fastapi-mlops-api --namespace "$NAMESPACE" --ignore-not-found
    log "Deleting the training Jobs and inference servers the API created"
    kubectl delete "$API_KINDS" --namespace "$NAMESPACE" --selector "$API_OBJECTS_SELECTOR" --ignore-not-found
    log "Deleting the platform (MLflow, SeaweedFS, PostgreSQL, configuration, network policy, RBAC)"
    kubectl delete "$PLATFORM_KINDS" --namespace "$NAMESPACE" --selector "$PLATFORM_SELECTOR" --ignore-not-found
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
    delete_platform
    if [[ $PURGE == true ]]; then
        purge_data
    else
        log "Kept the PersistentVolumeClaims and credential Secrets (data of PostgreSQL and SeaweedFS); --purge deletes them"
    fi
    log "Done: the MLOps platform is removed from namespace ${NAMESPACE}"
}

main "$@"
