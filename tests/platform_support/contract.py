"""Names the platform files and the application agree on, shared by the platform's tests."""

# The Secrets deploy_all_k3s.sh creates (random values, never in the repository) and their keys.
SECRET_KEYS: dict[str, set[str]] = {
    "mlops-s3-credentials": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "mlops-postgres-credentials": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    # Bearer tokens of the API, `<role>:<token>` entries (app/core/auth.py).
    "mlops-api-tokens": {"tokens"},
}
# The Secret deploy_all_k3s.sh --with-observability adds: Grafana's admin (kubernetes/observability).
OBSERVABILITY_SECRET_KEYS: dict[str, set[str]] = {
    "mlops-grafana-admin": {"admin-user", "admin-password"},
}
# The GPU node agent's namespace (kubernetes/gpu-metrics), shared by every platform namespace.
GPU_METRICS_NAMESPACE = "mlops-gpu-metrics"

DEFAULT_REGISTRY = "localhost:5002"
# The images the cluster runs, in the order deploy_all_k3s.sh imports them into k3s.
RUNTIME_IMAGES = [
    f"{DEFAULT_REGISTRY}/fastapi-mlops-api:latest",
    f"{DEFAULT_REGISTRY}/mlflow-trainer:latest",
    f"{DEFAULT_REGISTRY}/mlflow-inference:latest",
]

PART_OF = ("app.kubernetes.io/part-of", "mlops-platform")
MANAGED_BY_API = ("app.kubernetes.io/managed-by", "fastapi-mlops-api")

# The metric families the control plane and the model servers export (the metrics contract of issue
# 14, the README's Observability section): dashboards, rules and scripts use these names only.
API_METRICS = {
    "mlops_api_requests_total", "mlops_api_request_duration_seconds", "mlops_predict_requests_total",
    "mlops_predict_request_duration_seconds", "mlops_upstream_failures_total", "mlops_endpoints",
    "mlops_deployment_replicas", "mlops_training_tasks", "mlops_deployments",
    "mlops_training_time_to_succeeded_seconds",
}
MODEL_SERVER_METRICS = {
    "model_infer_request_success_total", "model_infer_request_failure_total",
    "model_infer_request_duration_seconds", "model_infer_rows_total", "model_info",
}
# What other exporters name their series: vLLM, NVIDIA's DCGM exporter, the kubelet and cAdvisor,
# and Prometheus' own `up`.
FOREIGN_METRIC_PATTERN = r"vllm:[a-z0-9_:]+|DCGM_FI_[A-Z_]+|container_[a-z_]+|kubelet_[a-z_]+|up"
# The scrape annotations on pods (kubernetes/base for the API, app/core/manifests.py for model servers).
SCRAPE_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
