#!/usr/bin/env bash
# monitor_all.sh: the MLOps platform in one namespace on one screen: pods, jobs, deployments and
# statefulsets, services, volumes, GPU allocation per node, predict traffic per deployment (rate,
# p99 latency, errors; from Prometheus when deploy_all_k3s.sh --with-observability installed it),
# recent warning events, and the last lines of the control plane's log. With -w it redraws the
# screen every few seconds.
# Read-only: it only runs `kubectl get` (Prometheus is read through the API server's service
# proxy, `kubectl get --raw`: no port-forward, nothing left running) and `kubectl logs`.
set -euo pipefail

readonly SCRIPT_NAME="monitor_all.sh"

# The helpers all three scripts share (die, log, namespace checks), beside this script.
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE != "${BASH_SOURCE[0]}" ]] || HERE=.
# shellcheck source=SCRIPTDIR/kubernetes/k3s-common.sh
source "${HERE}/kubernetes/k3s-common.sh"
readonly GPU_RESOURCE="nvidia.com/gpu"
readonly LOG_LINES=20
readonly EVENT_LINES=10
# Prometheus' Service as the API server's proxy names it (scheme:name:port).
readonly PROMETHEUS_PROXY="http:prometheus:9090"
# The recording rules the traffic table reads (kubernetes/observability/prometheus/recording-rules.yaml).
readonly TRAFFIC_SERIES=(
    mlops:deployment_replicas:ready
    mlops:deployment_replicas:desired
    mlops:predict_requests:rate5m
    mlops:predict_latency_seconds:p99_5m
    mlops:predict_errors_4xx:rate5m
    mlops:predict_errors_5xx:rate5m
)

usage() {
    cat <<EOF
Usage: ./${SCRIPT_NAME} [-w] [--interval SECONDS] [--count N] [NAMESPACE]

Show the state of the MLOps platform in NAMESPACE (default: default).

Options:
  -w, --watch          redraw the screen every --interval seconds until Ctrl-C
  --interval SECONDS   seconds between two screens with -w (default: 5)
  --count N            with -w, stop after N screens
  -h, --help           show this help
EOF
}

parse_args() {
    NAMESPACE=""
    WATCH=false
    INTERVAL=5
    COUNT=0
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            -w | --watch) WATCH=true ;;
            --interval) (($# > 1)) || die_usage "--interval needs a value"; INTERVAL=$2; shift ;;
            --interval=*) INTERVAL=${1#*=} ;;
            --count) (($# > 1)) || die_usage "--count needs a value"; COUNT=$2; shift ;;
            --count=*) COUNT=${1#*=} ;;
            --) shift; break ;;
            -*) die_usage "unknown option '$1'" ;;
            *) set_namespace_arg "$1" ;;
        esac
        shift
    done
    finish_namespace "$@"
    [[ $INTERVAL =~ ^[0-9]+$ ]] || die_usage "--interval must be a whole number of seconds, not '${INTERVAL}'"
    [[ $COUNT =~ ^[0-9]+$ ]] || die_usage "--count must be a whole number, not '${COUNT}'"
}

section() {
    printf '\n=== %s ===\n' "$1"
}

# show COMMAND...: prints what the command prints; when it fails, one line saying so, so that
# one unavailable section (no permission, no such deployment yet) never hides the others.
show() {
    local out
    if out=$("$@" 2>&1); then
        printf '%s\n' "${out:-(none)}"
    else
        printf '(unavailable: %s)\n' "${out##*$'\n'}"
    fi
}

# GPUs per node: allocatable from the node status, allocated as the sum of the GPU limits of
# the pods running or pending there (in every namespace: other workloads use GPUs too).
gpu_allocation() {
    local nodes pods
    if ! nodes=$(kubectl get nodes --no-headers \
        --output "custom-columns=NODE:.metadata.name,GPU:.status.allocatable.nvidia\\.com/gpu" 2>&1); then
        printf '(unavailable: %s)\n' "${nodes##*$'\n'}"
        return 0
    fi
    if ! pods=$(kubectl get pods --all-namespaces \
        --field-selector 'status.phase!=Succeeded,status.phase!=Failed' \
        --output 'jsonpath={range .items[*]}{.spec.nodeName}{"|"}{range .spec.containers[*]}{.resources.limits.nvidia\.com/gpu}{" "}{end}{"\n"}{end}' 2>&1); then
        pods=""
        echo "(GPUs allocated unknown: cannot list pods in all namespaces)"
    fi
    printf '%s\n' "$pods" | awk -F'|' -v nodes="$nodes" -v resource="$GPU_RESOURCE" '
        NF == 2 && $1 != "" {
            n = split($2, counts, " ")
            for (i = 1; i <= n; i++) used[$1] += counts[i]
        }
        END {
            printf "%-40s %12s %10s   (%s)\n", "NODE", "ALLOCATABLE", "ALLOCATED", resource
            count = split(nodes, lines, "\n")
            for (i = 1; i <= count; i++) {
                split(lines[i], field, " ")
                if (field[1] == "") continue
                allocatable = (field[2] == "" || field[2] == "<none>") ? 0 : field[2]
                printf "%-40s %12s %10d\n", field[1], allocatable, used[field[1]]
            }
        }'
}

warning_events() {
    local out
    if ! out=$(kubectl get events --namespace "$NAMESPACE" --field-selector type=Warning \
        --sort-by .lastTimestamp 2>&1); then
        printf '(unavailable: %s)\n' "${out##*$'\n'}"
        return 0
    fi
    # The header line and the newest events (sorted oldest first).
    if [[ $out == *$'\n'* ]]; then
        printf '%s\n' "${out%%$'\n'*}"
        printf '%s\n' "${out#*$'\n'}" | tail -n "$EVENT_LINES"
    else
        printf '%s\n' "${out:-(none)}"
    fi
}

# Rate, p99 and errors of each deployment's calls over the last five minutes, and its ready
# replicas, from Prometheus' /federate (the recording rules' current values, as plain text).
deployment_traffic() {
    local found query="" series out
    if ! found=$(kubectl get service prometheus --namespace "$NAMESPACE" --ignore-not-found --output name 2>&1); then
        printf '(unavailable: %s)\n' "${found##*$'\n'}"
        return 0
    fi
    if [[ -z $found ]]; then
        echo "(no Prometheus in this namespace: ./deploy_all_k3s.sh --with-observability ${NAMESPACE} installs it)"
        return 0
    fi
    for series in "${TRAFFIC_SERIES[@]}"; do
        query+="${query:+&}match%5B%5D=${series}"
    done
    if ! out=$(kubectl get --raw "/api/v1/namespaces/${NAMESPACE}/services/${PROMETHEUS_PROXY}/proxy/federate?${query}" 2>&1); then
        printf '(unavailable: %s)\n' "${out##*$'\n'}"
        return 0
    fi
    # Lines: name{label="value",...} value [timestamp]. Rows in the order deployments first appear.
    printf '%s\n' "$out" | awk '
        # The value of label key in text (the labels between the braces, a comma put in front).
        function label(text, key) {
            if (match(text, "," key "=\"[^\"]*\"")) return substr(text, RSTART + length(key) + 3, RLENGTH - length(key) - 4)
            return ""
        }
        function number(value, scale, format) {
            if (value == "" || value == "NaN" || value ~ /Inf/) return "-"
            return sprintf(format, value * scale)
        }
        /^#/ || NF == 0 { next }
        {
            name = $0; sub(/[{ ].*/, "", name)
            labels = ""
            if (index($0, "{")) { labels = $0; sub(/^[^{]*\{/, ",", labels); sub(/\}.*/, "", labels) }
            rest = $0; sub(/^[^}]*\} */, "", rest); split(rest, fields, " ")
            task = label(labels, "task_id")
            if (task == "") next
            if (!(task in model)) { order[++count] = task }
            model[task] = label(labels, "model_id")
            value[task, name] = fields[1]
        }
        END {
            if (count == 0) { print "(no deployment series in Prometheus yet)"; exit }
            printf "%-28s %-28s %7s %9s %9s %9s %9s\n", "TASK", "MODEL", "READY", "REQ/S", "P99(ms)", "4XX/S", "5XX/S"
            for (i = 1; i <= count; i++) {
                t = order[i]
                ready = number(value[t, "mlops:deployment_replicas:ready"], 1, "%d")
                desired = number(value[t, "mlops:deployment_replicas:desired"], 1, "%d")
                printf "%-28s %-28s %7s %9s %9s %9s %9s\n", t, model[t], ready "/" desired,
                    number(value[t, "mlops:predict_requests:rate5m"], 1, "%.2f"),
                    number(value[t, "mlops:predict_latency_seconds:p99_5m"], 1000, "%.1f"),
                    number(value[t, "mlops:predict_errors_4xx:rate5m"], 1, "%.2f"),
                    number(value[t, "mlops:predict_errors_5xx:rate5m"], 1, "%.2f")
            }
        }'
}

render_screen() {
    local context
    context=$(kubectl config current-context 2>/dev/null) || context="(none)"
    printf 'MLOps platform | namespace %s | context %s | %s\n' "$NAMESPACE" "$context" "$(date '+%Y-%m-%d %H:%M:%S')"
    section "Pods"
    show kubectl get pods --namespace "$NAMESPACE" --output wide
    section "Jobs (training tasks and the bucket Job)"
    show kubectl get jobs --namespace "$NAMESPACE"
    section "Deployments and StatefulSets"
    show kubectl get deployments,statefulsets --namespace "$NAMESPACE"
    section "Services"
    show kubectl get services --namespace "$NAMESPACE"
    section "Volumes"
    show kubectl get persistentvolumeclaims --namespace "$NAMESPACE"
    section "GPU allocation per node"
    gpu_allocation
    section "Predict traffic per deployment (Prometheus, last 5 minutes)"
    deployment_traffic
    section "Recent warning events"
    warning_events
    section "Control plane log (last ${LOG_LINES} lines)"
    show kubectl logs deployment/fastapi-mlops-api --namespace "$NAMESPACE" --tail "$LOG_LINES"
}

main() {
    parse_args "$@"
    command -v kubectl >/dev/null 2>&1 || {
        echo "${SCRIPT_NAME}: missing kubectl: talks to the cluster (install kubectl, or on a k3s node link it to 'k3s kubectl')" >&2
        exit 1
    }
    if [[ $WATCH == false ]]; then
        render_screen
        return
    fi
    local screens=0 screen
    while :; do
        # Drawn whole, then shown at once: no half-drawn screen while kubectl answers.
        screen=$(render_screen)
        if [[ -t 1 ]]; then printf '\033[H\033[2J'; fi
        printf '%s\n' "$screen"
        screens=$((screens + 1))
        if ((COUNT > 0 && screens >= COUNT)); then break; fi
        sleep "$INTERVAL"
    done
}

main "$@"
