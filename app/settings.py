"""Settings of the control plane, read once from MLOPS_* environment variables."""

import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.cpu_limit import cpu_quota

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RuntimeKind(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore")

    runtime: RuntimeKind = RuntimeKind.LOCAL
    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn worker processes; unset: 1 locally, one per core (at most 4) on Kubernetes.
    workers: int | None = Field(default=None, ge=1)
    log_level: str = "info"
    # One JSON object per log line (models/logs.py); "text" for a terminal.
    log_format: Literal["json", "text"] = "json"
    # One line per request (app/access_log.py), on by default since operators read it.
    access_log: bool = True

    profiles_path: Path = PROJECT_ROOT / "model_profiles.yaml"
    # Unset: `python -m app` starts an embedded MLflow server (SQLite + local artifacts).
    mlflow_uri: str | None = None
    # Log streams (?follow=true) one API worker keeps open; past it a follower is answered 429.
    max_log_followers: int = Field(default=64, ge=1, le=1024)
    # Where a browser opens MLflow's UI, for the links in training statuses (unset: mlflow_uri).
    mlflow_ui_url: str | None = None
    mlflow_port: int = 5000
    s3_endpoint_url: str | None = None

    # Local runtime: tasks, logs, the embedded MLflow database and artifacts live here.
    data_dir: Path = PROJECT_ROOT / ".mlops"
    # How often the local runtime checks its processes and its readiness probes.
    local_probe_interval_seconds: float = Field(default=0.5, gt=0)

    # Kubernetes runtime.
    # Unset: the pod's own namespace in a cluster, else the kubeconfig context's, else "default".
    namespace: str | None = None
    # Outside a cluster: which kubeconfig file and context (unset: $KUBECONFIG or ~/.kube/config, and
    # its current context). Setting kubeconfig also makes a pod use it instead of its ServiceAccount.
    kubeconfig: Path | None = None
    kube_context: str | None = None
    # How predict requests reach a model's Service: "service-dns" (http://<svc>.<ns>.svc, from inside
    # the cluster), "api-proxy" (the API server's service proxy, with the kubeconfig's credentials,
    # so a developer's laptop can predict), "auto" (service-dns in a pod, else api-proxy).
    predict_route: Literal["auto", "service-dns", "api-proxy"] = "auto"
    # Longest a single Kubernetes API request may take; transient failures are retried a few times.
    kube_request_timeout_seconds: float = Field(default=10.0, gt=0)
    # ConfigMap and Secret the workload pods read by reference (see kubernetes/).
    config_map_name: str = "mlops-config"
    s3_secret_name: str = "mlops-s3-credentials"

    # Largest body of a train, deploy or other management request, in bytes.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Hard cap on a predict body; each profile's own max_request_bytes applies below it.
    max_predict_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    # Authentication: `<role>:<token>` entries (roles admin, predict), comma- or line-separated,
    # from the variable and/or a file (a mounted Secret). A token may be given as sha256:<hex>.
    api_tokens: SecretStr | None = None
    auth_tokens_file: Path | None = None
    # With no tokens, the local runtime runs open (it listens on 127.0.0.1) and the Kubernetes
    # runtime refuses to start, unless this says so explicitly.
    auth_disabled: bool = False

    def worker_count(self) -> int:
        return self.worker_plan()[0]

    def worker_plan(self) -> tuple[int, str]:
        """How many uvicorn workers, and why (the start-up line says it)."""
        if self.workers:
            return self.workers, "MLOPS_WORKERS"
        # Local: one worker, since each worker's probes learn readiness on their own (a fresh Ready
        # may be answered 503 by another worker for a probe interval).
        if self.runtime == RuntimeKind.LOCAL:
            return 1, "the local runtime"
        # On a cluster every worker reads readiness from the same watch: one per CPU the container
        # may use (its limit, rounded down), not per core of the node; at most 4.
        quota = cpu_quota()
        if quota is not None:
            return max(1, min(int(quota), 4)), f"the container's CPU limit, {quota:g} CPU"
        cores = os.cpu_count() or 1
        return max(1, min(cores, 4)), f"no CPU limit; {cores} cores"
