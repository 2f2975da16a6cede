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
