"""`python -m app` (what `make run` runs): check the profiles, start MLflow if none is configured,
then serve the API with uvicorn."""

import os
import sys

import uvicorn

from app.core.auth import TokenConfigError
from app.main import build_authenticator
from app.profiles import ProfileError, load_profiles
from app.settings import RuntimeKind, Settings
from app.startup_checks import startup_problem
from models import HANDLERS


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
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"MLOps control plane: {base} (API docs: {base}/docs)\n"
        f"  runtime: {settings.runtime.value}, profiles: {', '.join(sorted(profiles))}\n"
        f"  auth: {authenticator.describe()}\n"
        f"  workers: {settings.worker_count()}\n"
        f"  MLflow UI: {settings.mlflow_uri}\n"
        f"  data directory: {settings.data_dir}",
        flush=True,
    )
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.worker_count(),
            log_level=settings.log_level,
            access_log=settings.access_log,
            # uvicorn's httptools protocol, with predict calls forwarded from the parser.
            http="app.predict_protocol:PredictProtocol",
            # Never hang on a client that will not finish; log streams end at once (app/shutdown.py).
            timeout_graceful_shutdown=30,
        )
    finally:
        if mlflow_process is not None:
            from app import embedded_mlflow

            embedded_mlflow.stop(mlflow_process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
