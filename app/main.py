"""The FastAPI application, built from what it is given: `create_app(settings, runtime, tracking)`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.core.deployments import DeploymentService
from app.core.manifests import ClusterRefs
from app.core.proxy import PredictProxy
from app.core.tracking import Tracking
from app.core.training import TrainingService
from app.errors import install_error_handlers
from app.profiles import load_profiles
from app.routers import health, inference, training
from app.runtime.base import Runtime
from app.settings import RuntimeKind, Settings
from models import HANDLERS


def build_runtime(settings: Settings) -> Runtime:
    if settings.runtime == RuntimeKind.KUBERNETES:
        from app.runtime.kubernetes import KubernetesRuntime

        return KubernetesRuntime.from_settings(settings)
    from app.runtime.local import LocalRuntime

    s3 = settings.s3_endpoint_url
    config_values = {
        "MLFLOW_TRACKING_URI": settings.mlflow_uri,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "MLOPS_S3_ENDPOINT_URL": s3,
    }
    return LocalRuntime(settings.data_dir, config_values, probe_interval=settings.local_probe_interval_seconds)


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None, tracking: Tracking | None = None
) -> FastAPI:
    settings = settings or Settings()
    if settings.mlflow_uri is None and tracking is None:
        raise ValueError("MLOPS_MLFLOW_URI is not set: start the API with `python -m app` (make run)")
    # A bad profiles file stops the service here, with a message naming the profile and field.
    profiles = load_profiles(settings.profiles_path, known_handlers=set(HANDLERS))
    runtime = runtime or build_runtime(settings)
    tracking = tracking or Tracking(settings.mlflow_uri or "")
    refs = ClusterRefs(config_map=settings.config_map_name, s3_secret=settings.s3_secret_name)
    proxy = PredictProxy(runtime.endpoints, profiles)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        await proxy.start()
        try:
            yield
        finally:
            await proxy.close()
            await runtime.close()

    app = FastAPI(
        title="MLOps control plane",
        version="0.1.0",
        description="Train models as Jobs, deploy them as inference servers, and predict through one API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.profiles = profiles
    app.state.runtime = runtime
    app.state.proxy = proxy
    app.state.training = TrainingService(runtime, profiles, tracking, refs)
    app.state.deployments = DeploymentService(runtime, profiles, tracking, refs)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(training.router)
    app.include_router(inference.router)
    return app
