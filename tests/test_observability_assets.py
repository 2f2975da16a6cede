"""The observability platform's files (kubernetes/observability, kubernetes/gpu-metrics) as
Prometheus' own tools read them and as they fit together: promtool on the configuration (laid
out as the pod sees it), the rules and their unit cases; every dashboard query parsed by
Prometheus' parser and named after the metrics contract; and the paths, ports, labels, data
sources and permissions the manifests give each program.
(tests/test_platform_assets.py validates the rendered objects and their pod security;
tests/test_observability_live.py runs the rules and dashboards on a real Prometheus.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.manifests import LABEL_MODEL_ID, LABEL_NAME, LABEL_TASK_ID, LABEL_TASK_KIND
from tests.platform_support.contract import (
    API_METRICS,
    FOREIGN_METRIC_PATTERN,
    GPU_METRICS_NAMESPACE,
    MODEL_SERVER_METRICS,
    SCRAPE_ANNOTATIONS,
)
from tests.platform_support.fake_cluster import REPO_ROOT
from tests.platform_support.prometheus import OBSERVABILITY, PROMETHEUS_DIR, RULE_FILES, check_expressions, promtool
from tests.platform_support.renders import containers, find, mounted_file, pod_templates, render_observability

NS = "mlops-test"
DASHBOARDS = sorted((OBSERVABILITY / "dashboards").glob("*.json"))
GPU_METRICS = REPO_ROOT / "kubernetes" / "gpu-metrics"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Grafana's own variables; any other $name must be a variable of the dashboard.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def docs() -> list[dict[str, Any]]:
    return render_observability(NS)


def workload(kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod template and first container of a workload."""
    template = dict(pod_templates(docs()))[f"{kind}/{name}"]
    return template, template["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(name + "=")]
    assert len(values) == 1, f"{name} in {args}"
    return values[0]


def meta_label(kind: str, key: str) -> str:
    """The discovery label Prometheus (and Alloy) make of a pod label or annotation key."""
    return f"__meta_kubernetes_pod_{kind}_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())


def job(name: str) -> dict[str, Any]:
    (found,) = [j for j in prometheus_config()["scrape_configs"] if j["job_name"] == name]
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: label matchers, ranges, strings, grouping lists and
    function calls taken out, the identifiers left are metric names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def contracted(name: str, recorded: set[str]) -> bool:
    """Whether a series name is the contract's (a histogram's _bucket, _sum and _count included),
    a recording rule's, or another exporter's."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in API_METRICS | MODEL_SERVER_METRICS:
            name = name.removesuffix(suffix)
    return name in API_METRICS | MODEL_SERVER_METRICS | recorded or bool(re.fullmatch(FOREIGN_METRIC_PATTERN, name))


def dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def targets(board: dict[str, Any], datasource: str) -> list[tuple[str, str]]:
    """(panel title, query) of every target of that data source type."""
    return [(panel["title"], target["expr"]) for panel in panels(board) for target in panel["targets"]
            if target["datasource"]["type"] == datasource]


def substitute(expr: str, board: dict[str, Any]) -> str:
    """The query as Grafana sends it: its variables replaced (a dashboard's own by a regex that
    matches any value, as their "All" does)."""
    defined = {variable["name"] for variable in board["templating"]["list"]}

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in GRAFANA_VARIABLES:
            return GRAFANA_VARIABLES[name]
        assert name in defined, f"${name} is not a variable of {board['uid']}"
        return ".+"

    return re.sub(r"\$(\w+)", value, expr)


def alloy_stream_labels() -> set[str]:
    text = (OBSERVABILITY / "alloy" / "config.alloy").read_text()
    return set(re.findall(r'target_label\s*=\s*"(\w+)"', text))


# ----------------------------------------------------------------------------- rules


def test_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_FILES)


def test_alert_rules_behave_as_their_unit_cases_say() -> None:
    """Synthetic series through the real rule engine: each alert fires when it should, with the
    labels and texts it should, and stays silent otherwise (tests/platform_support/alert-rules-test.yaml)."""
    cases = REPO_ROOT / "tests" / "platform_support" / "alert-rules-test.yaml"
    done = promtool("test", "rules", cases.name, cwd=cases.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {case["alertname"] for test in yaml.safe_load(cases.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert tested == {rule["alert"] for rule in rules(PROMETHEUS_DIR / "alert-rules.yaml")}, "every alert has cases"


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    alerts = {rule["alert"]: rule for rule in rules(PROMETHEUS_DIR / "alert-rules.yaml")}
    assert {"MLOpsDeploymentNoReadyReplica", "MLOpsPredict5xxRatioHigh", "MLOpsApi5xxRatioHigh",
            "MLOpsTrainingTaskFailed"} <= set(alerts)
    for name in ("MLOpsPredict5xxRatioHigh", "MLOpsApi5xxRatioHigh"):
        assert alerts[name]["for"] == "5m" and alerts[name]["expr"].endswith("> 0.05"), name
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_use_the_contracted_metric_names_only() -> None:
    recorded = {rule["record"] for rule in rules(PROMETHEUS_DIR / "recording-rules.yaml")}
    assert all(re.fullmatch(r"mlops:[a-z0-9_]+:[a-z0-9_]+", name) for name in recorded), "level:metric:operations"
    for path in RULE_FILES:
        for rule in rules(path):
            for name in metric_names(rule["expr"]):
                assert contracted(name, recorded), f"{path.name}: {name} is not a contracted metric"


# ----------------------------------------------------------------------------- Prometheus configuration


def test_prometheus_config_passes_promtool_check_as_mounted_in_the_pod(tmp_path: Path) -> None:
    """The configuration and rule files laid out as the StatefulSet mounts them (so the rule_files
    glob must find the ConfigMap's files), checked by promtool with every referenced file.
    Debian's promtool is built without Kubernetes discovery, so each kubernetes_sd_configs block is
    checked against the fields Prometheus documents and then replaced by a static target."""
    template, container = workload("StatefulSet", "prometheus")
    config_path = flag(container["args"], "--config.file")
    config_map, key = mounted_file(docs(), template, container, config_path)
    text = config_map["data"][key]
    assert text == (PROMETHEUS_DIR / "prometheus.yml").read_text()
    config = yaml.safe_load(text)

    root = tmp_path / "pod"
    (root / SERVICE_ACCOUNT_DIR.lstrip("/")).mkdir(parents=True)
    for name in ("token", "ca.crt"):
        (root / SERVICE_ACCOUNT_DIR.lstrip("/") / name).write_text("placeholder\n")
    (rule_glob,) = config["rule_files"]
    rules_map, _ = mounted_file(docs(), template, container, rule_glob)
    rules_dir = root / Path(rule_glob).parent.relative_to("/")
    rules_dir.mkdir(parents=True)
    for name, content in rules_map["data"].items():
        (rules_dir / name).write_text(content)
    assert sorted(rules_map["data"]) == sorted(path.name for path in RULE_FILES)

    for scrape in config["scrape_configs"]:
        for sd in scrape.pop("kubernetes_sd_configs", []):
            assert set(sd) <= {"role", "namespaces", "selectors", "attach_metadata"}, scrape["job_name"]
            assert sd["role"] in {"node", "pod", "service", "endpoints", "endpointslice", "ingress"}
            namespaces = sd.get("namespaces", {})
            assert set(namespaces) <= {"own_namespace", "names"}
            assert isinstance(namespaces.get("own_namespace", False), bool)
            assert all(isinstance(name, str) for name in namespaces.get("names", []))
            scrape.setdefault("static_configs", []).append({"targets": ["127.0.0.1:9"]})
    checked = yaml.safe_dump(config, sort_keys=False).replace(SERVICE_ACCOUNT_DIR, str(root) + SERVICE_ACCOUNT_DIR)
    checked = checked.replace(str(Path(rule_glob).parent), str(rules_dir))
    (tmp_path / "prometheus.yml").write_text(checked)
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in done.stdout


def test_each_scrape_job_discovers_what_it_should() -> None:
    """Annotated pods of the platform's own namespace; every node's kubelet and cAdvisor over
    https with the ServiceAccount; the DCGM exporter's pods in their namespace, by their port name."""
    pods = job("mlops-pods")
    assert pods["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"own_namespace": True}}]
    sources = {label for rule in pods["relabel_configs"] for label in rule.get("source_labels", [])}
    assert {meta_label("annotation", key) for key in SCRAPE_ANNOTATIONS} <= sources
    # The control plane's own task labels become series labels (joins with DCGM and cAdvisor by pod).
    mapped = {rule["source_labels"][0]: rule["target_label"] for rule in pods["relabel_configs"]
              if rule.get("action", "replace") == "replace" and len(rule.get("source_labels", [])) == 1
              and rule.get("target_label") and not rule["target_label"].startswith("__")}
    assert mapped[meta_label("label", LABEL_TASK_ID)] == "task_id"
    assert mapped[meta_label("label", LABEL_MODEL_ID)] == "model_id"
    assert mapped[meta_label("label", LABEL_NAME)] == "app"
    assert {"__meta_kubernetes_namespace": "namespace", "__meta_kubernetes_pod_name": "pod"}.items() <= mapped.items()

    for name, path in (("kubelet", None), ("kubelet-cadvisor", "/metrics/cadvisor")):
        kubelet = job(name)
        assert kubelet["kubernetes_sd_configs"] == [{"role": "node"}]
        assert kubelet["scheme"] == "https" and kubelet.get("metrics_path") == path
        assert kubelet["authorization"] == {"credentials_file": f"{SERVICE_ACCOUNT_DIR}/token"}
        assert kubelet["tls_config"] == {"ca_file": f"{SERVICE_ACCOUNT_DIR}/ca.crt"}, "verified, never skipped"
        assert kubelet["metric_relabel_configs"][0]["action"] == "keep", "a bounded set of series"

    dcgm = job("dcgm-exporter")
    assert dcgm["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": [GPU_METRICS_NAMESPACE]}}]
    keep = dcgm["relabel_configs"][0]
    daemonset = find(docs(), "DaemonSet", "dcgm-exporter")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    (port,) = daemonset["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert keep["source_labels"] == [meta_label("label", LABEL_NAME), "__meta_kubernetes_pod_container_port_name"]
    assert re.fullmatch(keep["regex"], f"{pod_labels[LABEL_NAME]};{port['name']}")
    # The exporter's pod/namespace labels name the GPU's holder: kept as exported.
    assert dcgm["honor_labels"] is True


def test_the_control_plane_pod_asks_to_be_scraped_on_its_port() -> None:
    template, container = workload("Deployment", "fastapi-mlops-api")
    annotations = template["metadata"]["annotations"]
    scrape, port, path = SCRAPE_ANNOTATIONS
    assert annotations[scrape] == "true" and annotations[path] == "/metrics"
    assert [int(annotations[port])] == [p["containerPort"] for p in container["ports"]]


def test_prometheus_keeps_its_data_on_its_claim() -> None:
    _, container = workload("StatefulSet", "prometheus")
    data = flag(container["args"], "--storage.tsdb.path")
    statefulset = find(docs(), "StatefulSet", "prometheus")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": data} in container["volumeMounts"]
    retention = flag(container["args"], "--storage.tsdb.retention.size")
    claimed = claim["spec"]["resources"]["requests"]["storage"]
    assert int(retention.removesuffix("GB")) < int(claimed.removesuffix("Gi"))
    assert re.fullmatch(r"quay\.io/prometheus/prometheus:v3\.\d+\.\d+", container["image"])


def rbac(kind: str, name: str) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in find(docs(), kind, name)["rules"]:
        assert "resourceNames" not in rule and "*" not in rule["verbs"] + rule["resources"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_prometheus_and_alloy_get_least_privilege() -> None:
    """Exactly what discovery, the kubelet scrape and the log tailer call; nothing that reads
    Secrets, execs into pods or proxies to nodes."""
    assert rbac("Role", "prometheus") == {("", "pods"): {"list", "watch"}}
    assert rbac("ClusterRole", f"mlops-prometheus-{NS}") == {("", "nodes"): {"list", "watch"},
                                                             ("", "nodes/metrics"): {"get"}}
    assert rbac("Role", "alloy") == {("", "pods"): {"get", "list", "watch"}, ("", "pods/log"): {"get"}}
    assert rbac("Role", "dcgm-exporter-discovery") == {("", "pods"): {"list", "watch"}}
    for kind, name, role_kind, role, account in (
        ("RoleBinding", "prometheus", "Role", "prometheus", "prometheus"),
        ("ClusterRoleBinding", f"mlops-prometheus-{NS}", "ClusterRole", f"mlops-prometheus-{NS}", "prometheus"),
        ("RoleBinding", "alloy", "Role", "alloy", "alloy"),
        ("RoleBinding", f"prometheus-from-{NS}", "Role", "dcgm-exporter-discovery", "prometheus"),
    ):
        binding = find(docs(), kind, name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NS}]
    for name in ("prometheus", "alloy"):
        kind = "StatefulSet" if name == "prometheus" else "Deployment"
        template, _ = workload(kind, name)
        assert template["spec"]["serviceAccountName"] == name
    # Each rule is commented with its verbs, as the control plane's Role is.
    for path in (OBSERVABILITY / "prometheus.yaml", OBSERVABILITY / "alloy.yaml", GPU_METRICS / "dcgm-exporter.yaml"):
        text = path.read_text()
        roles = [d for d in yaml.safe_load_all(text) if d and d["kind"] in ("Role", "ClusterRole")]
        for rule in (r for role in roles for r in role["rules"]):
            for resource in rule["resources"]:
                assert f"# {resource}: {', '.join(rule['verbs'])}." in text, f"{path.name}: {resource}"


# ----------------------------------------------------------------------------- dashboards


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_json_with_provisioned_data_sources_and_a_sound_layout(path: Path) -> None:
    board = dashboard(path)
    datasources = yaml.safe_load((OBSERVABILITY / "grafana" / "datasources.yaml").read_text())["datasources"]
    uids = {source["uid"]: source["type"] for source in datasources}
    assert board["uid"].startswith("mlops-") and board["title"].startswith("MLOps / ")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["id"]
        assert uids.get(panel["datasource"]["uid"]) == panel["datasource"]["type"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    for variable in board["templating"]["list"]:
        assert uids.get(variable["datasource"]["uid"]) == "prometheus"
        assert re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])


def test_dashboard_uids_and_titles_are_unique() -> None:
    boards = [dashboard(path) for path in DASHBOARDS]
    assert len({board["uid"] for board in boards}) == len({board["title"] for board in boards}) == len(boards) == 4


def test_every_prometheus_query_of_the_dashboards_parses(tmp_path: Path) -> None:
    """Every panel query and variable query, variables substituted as Grafana does, through
    Prometheus' own parser (promtool reads them as recording rules)."""
    expressions = {}
    for path in DASHBOARDS:
        board = dashboard(path)
        for title, expr in targets(board, "prometheus"):
            expressions[f"{path.name}: {title}: {expr}"] = substitute(expr, board)
        for variable in board["templating"]["list"]:
            selector = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"]).group(1)
            expressions[f"{path.name}: ${variable['name']}"] = substitute(selector, board)
    assert len(expressions) > 40
    done = check_expressions(expressions, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in done.stdout


def test_a_broken_query_is_caught(tmp_path: Path) -> None:
    """The parse check above can fail."""
    done = check_expressions({"broken": 'sum by (task_id (rate(mlops_predict_requests_total[1m]))'}, tmp_path)
    assert done.returncode != 0 and "parse error" in done.stdout + done.stderr


def test_dashboards_query_the_contracted_metric_names_only() -> None:
    recorded = {rule["record"] for rule in rules(PROMETHEUS_DIR / "recording-rules.yaml")}
    for path in DASHBOARDS:
        board = dashboard(path)
        for title, expr in targets(board, "prometheus"):
            for name in metric_names(expr):
                assert contracted(name, recorded), f"{path.name}: {title}: {name}"


def expressions_of(name: str) -> str:
    board = dashboard(OBSERVABILITY / "dashboards" / name)
    return "\n".join(expr for _, expr in targets(board, "prometheus"))


def test_dashboards_show_what_the_issue_asks_for() -> None:
    control = expressions_of("control-plane.json")
    for fragment in ("sum by (route) (rate(mlops_api_requests_total", 'status=~"[45].."',
                     "histogram_quantile(0.5, sum by (le, route)", "histogram_quantile(0.99, sum by (le, route)",
                     "histogram_quantile(0.5, sum by (le, task_id)", "histogram_quantile(0.99, sum by (le, task_id)",
                     "sum by (task_id) (rate(mlops_predict_requests_total", "mlops:predict_5xx_ratio:rate5m"):
        assert fragment in control, fragment
    training = expressions_of("training.json")
    for fragment in ("mlops:training_tasks:by_status", 'status=~"Pending|Running"',
                     "mlops_training_time_to_succeeded_seconds_bucket", "container_cpu_usage_seconds_total"):
        assert fragment in training, fragment
    inference = expressions_of("inference.json")
    for fragment in ("rate(mlops_predict_requests_total", "mlops_predict_request_duration_seconds_bucket",
                     "model_infer_request_duration_seconds_bucket", "mlops:deployment_replicas:ready",
                     "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"):
        assert fragment in inference, fragment
    language = expressions_of("language-models.json")
    for fragment in ("rate(vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                     "vllm:num_requests_waiting", "vllm:num_requests_running"):
        assert fragment in language, fragment


def test_log_panels_select_streams_by_the_labels_alloy_sets() -> None:
    labels = alloy_stream_labels()
    assert {"namespace", "pod", "container", "app", "task_id", "task_kind"} <= labels
    queries = [expr for path in DASHBOARDS for _, expr in targets(dashboard(path), "loki")]
    assert len(queries) == len(DASHBOARDS)
    for query in queries:
        selector = re.fullmatch(r"\{([^}]*)\}.*", query, re.S)
        assert selector, query
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector.group(1))
        assert matchers and {name for name, _, _ in matchers} <= labels, query
        # Loki needs one matcher that cannot match the empty string.
        assert any(op == "=" and value for _, op, value in matchers), query


def test_alloy_and_prometheus_read_the_task_labels_the_control_plane_sets() -> None:
    text = (OBSERVABILITY / "alloy" / "config.alloy").read_text()
    for key, target in ((LABEL_TASK_ID, "task_id"), (LABEL_TASK_KIND, "task_kind"), (LABEL_MODEL_ID, "model_id"),
                        (LABEL_NAME, "app")):
        assert re.search(r'source_labels\s*=\s*\["' + meta_label("label", key) + r'"\]\s*\n\s*target_label\s*=\s*"'
                         + target + '"', text), key
    assert re.search(r"namespaces\s*\{\s*own_namespace\s*=\s*true\s*\}", text), "this namespace only"


# ----------------------------------------------------------------------------- Grafana


def test_grafana_is_provisioned_from_the_repository_files() -> None:
    template, container = workload("Deployment", "grafana")
    provisioning = "/etc/grafana/provisioning"
    providers_map, key = mounted_file(docs(), template, container, f"{provisioning}/dashboards/dashboards.yaml")
    providers = providers_map["data"][key]
    assert providers == (OBSERVABILITY / "grafana" / "dashboards.yaml").read_text()
    (provider,) = yaml.safe_load(providers)["providers"]
    assert provider["allowUiUpdates"] is False
    dashboards_map, _ = mounted_file(docs(), template, container, provider["options"]["path"] + "/x.json")
    assert dashboards_map["data"] == {path.name: path.read_text() for path in DASHBOARDS}
    sources_map, key = mounted_file(docs(), template, container, f"{provisioning}/datasources/datasources.yaml")
    assert sources_map["data"][key] == (OBSERVABILITY / "grafana" / "datasources.yaml").read_text()
    env = {item["name"]: item.get("value") for item in container["env"]}
    home, _ = mounted_file(docs(), template, container, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is dashboards_map
    assert env["GF_PLUGINS_PREINSTALL_DISABLED"] == "true" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_grafana_admin_comes_from_the_secret_files() -> None:
    template, container = workload("Deployment", "grafana")
    env = {item["name"]: item for item in container["env"]}
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env and "GF_SECURITY_ADMIN_USER" not in env
    for name, key in (("GF_SECURITY_ADMIN_USER__FILE", "admin-user"),
                      ("GF_SECURITY_ADMIN_PASSWORD__FILE", "admin-password")):
        volume, file = mounted_file(docs(), template, container, env[name]["value"])
        assert volume["secret"]["secretName"] == "mlops-grafana-admin" and file == key
        # Without the Secret, no pod (instead of one with admin/admin).
        assert volume["secret"].get("optional") is not True
        assert volume["secret"]["defaultMode"] == 0o440
    claim = next(v for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v)
    assert find(docs(), "PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    assert {"name": claim["name"], "mountPath": "/var/lib/grafana"} in container["volumeMounts"]
    assert find(docs(), "Deployment", "grafana")["spec"]["strategy"] == {"type": "Recreate"}


def service_url(name: str) -> str:
    service = find(docs(), "Service", name)
    (port,) = service["spec"]["ports"]
    return f"http://{name}:{port['port']}"


def test_data_sources_and_the_log_shipper_point_at_the_services() -> None:
    provisioned = yaml.safe_load((OBSERVABILITY / "grafana" / "datasources.yaml").read_text())["datasources"]
    sources = {source["type"]: source for source in provisioned}
    assert sources["prometheus"]["url"] == service_url("prometheus")
    assert sources["loki"]["url"] == service_url("loki")
    assert sources["prometheus"]["jsonData"]["timeInterval"] == prometheus_config()["global"]["scrape_interval"]
    alloy = (OBSERVABILITY / "alloy" / "config.alloy").read_text()
    assert re.search(r'url\s*=\s*"' + re.escape(service_url("loki")) + '/loki/api/v1/push"', alloy)


# ----------------------------------------------------------------------------- Loki and Alloy


def test_loki_reads_its_config_and_keeps_its_data_on_its_claim() -> None:
    template, container = workload("StatefulSet", "loki")
    config_map, key = mounted_file(docs(), template, container, flag(container["args"], "-config.file"))
    text = config_map["data"][key]
    assert text == (OBSERVABILITY / "loki" / "loki.yaml").read_text()
    config = yaml.safe_load(text)
    (claim,) = find(docs(), "StatefulSet", "loki")["spec"]["volumeClaimTemplates"]
    data = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    for path in (config["common"]["path_prefix"], config["common"]["storage"]["filesystem"]["chunks_directory"],
                 config["compactor"]["working_directory"]):
        assert path == data or path.startswith(data + "/"), path
    assert config["compactor"]["retention_enabled"] is True and config["limits_config"]["retention_period"]
    assert config["schema_config"]["configs"][-1]["schema"] == "v13", "structured metadata needs v13"
    assert config["server"]["http_listen_port"] == container["ports"][0]["containerPort"]
    assert config["analytics"]["reporting_enabled"] is False


def test_only_alloy_and_grafana_reach_loki() -> None:
    policy = find(docs(), "NetworkPolicy", "loki")["spec"]
    loki_labels = find(docs(), "StatefulSet", "loki")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= loki_labels.items()
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    (expression,) = source["podSelector"]["matchExpressions"]
    admitted = {name for name, template in pod_templates(docs())
                if template["metadata"]["labels"].get(expression["key"]) in expression["values"]}
    assert admitted == {"Deployment/alloy", "Deployment/grafana"}
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]


def test_alloy_reads_logs_through_the_api_without_host_access() -> None:
    template, container = workload("Deployment", "alloy")
    assert container["args"][0] == "run"
    config_map, key = mounted_file(docs(), template, container, container["args"][1])
    assert config_map["data"][key] == (OBSERVABILITY / "alloy" / "config.alloy").read_text()
    assert "loki.source.kubernetes" in config_map["data"][key] and "loki.source.file" not in config_map["data"][key]
    assert not [v for v in template["spec"]["volumes"] if "hostPath" in v]
    storage = flag(container["args"], "--storage.path")
    assert any(m["mountPath"] == storage for m in container["volumeMounts"])
    assert find(docs(), "Deployment", "alloy")["spec"]["replicas"] == 1, "a second replica would ship every line twice"


# ----------------------------------------------------------------------------- DCGM exporter


def test_dcgm_exporter_runs_on_gpu_nodes_only_with_the_access_it_documents() -> None:
    namespace = find(docs(), "Namespace", GPU_METRICS_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    template, container = workload("DaemonSet", "dcgm-exporter")
    pod = template["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"]), "it must not take a GPU from the workloads"
    # Its only departures from the restricted standard: root (for the kubelet's socket) and that
    # one read-only host path. No capability, no privilege, no host network or PID.
    context = container["securityContext"]
    assert context == {"runAsNonRoot": False, "runAsUser": 0, "allowPrivilegeEscalation": False,
                       "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"))
    host_paths = [v for v in pod["volumes"] if "hostPath" in v]
    assert [v["hostPath"]["path"] for v in host_paths] == ["/var/lib/kubelet/pod-resources"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == host_paths[0]["name"]]
    assert mount["readOnly"] is True
    assert pod["automountServiceAccountToken"] is False
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s/dcgm-exporter:\d+\.\d+\.\d+-\d+\.\d+\.\d+-[a-z0-9.]+", container["image"])


def test_dcgm_exporter_reads_fields_that_need_no_capability() -> None:
    template, container = workload("DaemonSet", "dcgm-exporter")
    counters = container["args"][container["args"].index("-f") + 1]
    counters_map, key = mounted_file(docs(), template, container, counters)
    text = counters_map["data"][key]
    assert text == (GPU_METRICS / "dcgm-counters.csv").read_text()
    fields = [line.split(",")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"} <= set(fields)
    assert not [field for field in fields if field.startswith("DCGM_FI_PROF_")], "profiling fields need SYS_ADMIN"
    # The dashboards ask only for fields it exports.
    for path in DASHBOARDS:
        for _, expr in targets(dashboard(path), "prometheus"):
            for name in re.findall(r"DCGM_FI_[A-Z_]+", expr):
                assert name in fields, f"{path.name}: {name}"


def test_only_prometheus_reaches_the_dcgm_exporter() -> None:
    policy = find(docs(), "NetworkPolicy", "dcgm-exporter")["spec"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    prometheus_labels = find(docs(), "StatefulSet", "prometheus")["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= prometheus_labels.items()
    others = [name for name, template in pod_templates(docs()) if name != "StatefulSet/prometheus"
              and source["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()]
    assert others == []
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    for container in containers(find(docs(), "DaemonSet", "dcgm-exporter")["spec"]["template"]):
        assert [port["name"] for port in container.get("ports", [])] == ["metrics"]


def test_fetching_prometheus_without_apt_get_says_the_tests_are_skipped(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(shutil.which("bash"))
    done = subprocess.run([str(bin_dir / "bash"), str(REPO_ROOT / "tests/platform_support/fetch_prometheus.sh"),
                           str(tmp_path / "tools")], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert done.returncode == 0, "make test goes on; the tests that need Prometheus say why they skip"
    assert "apt-get not found" in done.stderr and "skipped" in done.stderr
    assert not (tmp_path / "tools").exists()
