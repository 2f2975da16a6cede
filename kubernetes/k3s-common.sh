# Shell helpers shared by deploy_all_k3s.sh, clear_all_k3s.sh and monitor_all.sh (sourced, not run).
# The caller sets SCRIPT_NAME, and NAMESPACE before parsing its arguments.
# shellcheck shell=bash

die() {
    echo "${SCRIPT_NAME}: $*" >&2
    exit 1
}

die_usage() {
    echo "${SCRIPT_NAME}: $*" >&2
    echo "Try './${SCRIPT_NAME} --help'." >&2
    exit 2
}

log() {
    printf '==> %s\n' "$*"
}

# A namespace name is a DNS-1123 label; checking it here also makes it safe on any command line.
validate_namespace() {
    local ns=$1
    if ((${#ns} > 63)) || [[ ! $ns =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]]; then
        die_usage "invalid namespace '${ns}': a namespace is a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
    fi
}

set_namespace_arg() {
    [[ -n $1 ]] || die_usage "the namespace must not be empty"
    [[ -z $NAMESPACE ]] || die_usage "only one namespace may be given (got '${NAMESPACE}' and '$1')"
    NAMESPACE=$1
}

# After the options: what follows `--` names the namespace too; then default it and check it.
finish_namespace() {
    while (($#)); do
        set_namespace_arg "$1"
        shift
    done
    NAMESPACE=${NAMESPACE:-default}
    validate_namespace "$NAMESPACE"
}
