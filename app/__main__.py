"""`python -m app` (what `make run` runs): check the profiles, start MLflow if none is configured,
then serve the API with uvicorn."""

import logging
import os
import shutil
import sys
import tempfile

import uvicorn

from app.core.auth import TokenConfigError
from app.logging_config import log_config
from app.main import build_authenticator
from app.metrics import MULTIPROCESS_DIR
from app.profiles import ProfileError, load_profiles
from app.settings import RuntimeKind, Settings
from app.startup_checks import startup_problem
from models import HANDLERS
from models.logs import formatter


def share_metrics_between_workers(workers: int) -> str | None:
    """With several workers, each counts into files of one fresh directory that a scrape sums
    (prometheus_client's multiprocess mode); the workers read it from the environment when they
    start. Returns the directory made, to remove at exit."""
    if workers < 2 or os.environ.get(MULTIPROCESS_DIR):
        return None
    directory = tempfile.mkdtemp(prefix="mlops-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    return directory


def announce(settings: Settings, base: str, profiles: dict, auth: str) -> None:
    """Where everything is: readable lines for a terminal, one log line in the JSON format."""
    facts = {"url": base, "docs": f"{base}/docs", "metrics": f"{base}/metrics", "runtime": settings.runtime.value,
             "profiles": sorted(profiles), "auth": auth, "workers": settings.worker_count(),
             "workersBecause": settings.worker_plan()[1],
             "mlflowUi": settings.mlflow_uri, "dataDir": str(settings.data_dir)}
    if settings.log_format == "json":
        record = logging.LogRecord("mlops", logging.INFO, __file__, 0, "control plane starting", None, None)
        record.__dict__.update(facts)
        print(formatter("json").format(record), flush=True)
        return
    print(
        f"MLOps control plane: {base} (API docs: {base}/docs, metrics: {base}/metrics)\n"
        f"  runtime: {facts['runtime']}, profiles: {', '.join(facts['profiles'])}\n"
        f"  auth: {auth}\n"
        f"  workers: {facts['workers']} ({facts['workersBecause']})\n"
        f"  MLflow UI: {facts['mlflowUi']}\n"
        f"  data directory: {facts['dataDir']}",
        flush=True,
    )


def main() -> int:
    settings = Settings()
    if (problem := startup_problem(settings)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        profiles = load_profiles(settings.profiles_path, known_handlers=set(HANDLERS))
        authenticator = build_authenticator(settings)
    except (ProfileError, TokenConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mlflow_process = None
    if settings.mlflow_uri is None:
        if settings.runtime == RuntimeKind.KUBERNETES:
            print("error: MLOPS_MLFLOW_URI must be set on the Kubernetes runtime", file=sys.stderr)
            return 2
        from app import embedded_mlflow

        try:
            uri, mlflow_process = embedded_mlflow.start(settings.data_dir, settings.mlflow_port)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        # Workers build their Settings from the environment.
        os.environ["MLOPS_MLFLOW_URI"] = uri
        settings = Settings()
    metrics_dir = share_metrics_between_workers(settings.worker_count())
    base = f"http://{settings.host}:{settings.port}"
    announce(settings, base, profiles, authenticator.describe())
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.worker_count(),
            log_level=settings.log_level,
            log_config=log_config(settings.log_level, settings.log_format),
            # The control plane writes one access line per request itself (app/access_log.py).
            access_log=False,
            # Never hang on a client that will not finish; log streams end at once (app/shutdown.py).
            timeout_graceful_shutdown=30,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if mlflow_process is not None:
            from app import embedded_mlflow

            embedded_mlflow.stop(mlflow_process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
