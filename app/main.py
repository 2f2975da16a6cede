"""The API, built from what it is given: `create_app(settings, runtime, tracking)`: the data plane
in front of the FastAPI application that serves every other route."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import shutdown
from app.access_log import AccessLog, AccessLogMiddleware
from app.core.auth import Authenticator, authenticator_from
from app.core.canary_guard import CanaryGuard
from app.core.deployments import DeploymentService
from app.core.log_streams import LogStreams
from app.core.manifests import ClusterRefs
from app.core.tracking import Tracking
from app.core.training import TrainingService
from app.dataplane import DataPlane, UpstreamClient
from app.dataplane.admission import Admission
from app.dataplane.plane import DataPlaneRoutes
from app.dataplane.revision_stats import RevisionStats
from app.dataplane.routes import openapi_paths
from app.errors import install_error_handlers
from app.metrics import RequestMetrics
from app.middleware import AuthMiddleware, BodyLimitMiddleware
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


def build_authenticator(settings: Settings) -> Authenticator:
    """Raises TokenConfigError for a bad token entry, or no tokens on the Kubernetes runtime."""
    tokens = settings.api_tokens.get_secret_value() if settings.api_tokens else None
    on_cluster = settings.runtime == RuntimeKind.KUBERNETES
    return authenticator_from(tokens, settings.auth_tokens_file, settings.auth_disabled, on_cluster)


def document(app: FastAPI) -> None:
    """The OpenAPI document: FastAPI's routes, the data plane's (served before FastAPI's routing),
    and bearer auth, so /docs has an Authorize button and the 401/403."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema["paths"].update(openapi_paths())
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "a token with role admin, or predict for the predict routes"}
            }
            for path, operations in schema["paths"].items():
                if not path.startswith("/api/v1"):
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearerAuth": []}]
                    responses = operation.setdefault("responses", {})
                    responses.setdefault("401", {"description": "No valid bearer token (when auth is on)"})
                    responses.setdefault("403", {"description": "The token's role may not call this route"})
                    responses.setdefault("413", {"description": "Request body too large"})
                    if "requestBody" in operation:
                        responses.setdefault("400", {"description": "The body cannot be decoded (not UTF-8 JSON)"})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None, tracking: Tracking | None = None
) -> DataPlaneRoutes:
    settings = settings or Settings()
    if settings.mlflow_uri is None and tracking is None:
        raise ValueError("MLOPS_MLFLOW_URI is not set: start the API with `python -m app` (make run)")
    # A bad profiles file stops the service here, with a message naming the profile and field.
    profiles = load_profiles(settings.profiles_path, known_handlers=set(HANDLERS))
    authenticator = build_authenticator(settings)
    runtime = runtime or build_runtime(settings)
    tracking = tracking or Tracking(settings.mlflow_uri or "", settings.mlflow_ui_url)
    refs = ClusterRefs(config_map=settings.config_map_name, s3_secret=settings.s3_secret_name)
    access_log = AccessLog(settings.access_log)
    request_metrics = RequestMetrics()
    revision_stats = RevisionStats()
    data_plane = DataPlane(Admission(runtime.endpoints, profiles, authenticator, settings.max_predict_body_bytes),
                           UpstreamClient(), access_log, request_metrics, revision_stats)
    deployments = DeploymentService(runtime, profiles, tracking, refs, revision_stats)
    guard = CanaryGuard(deployments, runtime.endpoints, revision_stats)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shutdown.watch_signals()
        await runtime.start()
        guard.start()
        try:
            yield
        finally:
            await guard.stop()
            await data_plane.close()
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
    app.state.data_plane = data_plane
    app.state.training = TrainingService(runtime, profiles, tracking, refs, LogStreams(settings.max_log_followers))
    app.state.deployments = deployments
    install_error_handlers(app)
    # Added last = outermost. A caller without a token is refused before its body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, authenticator=authenticator)
    app.add_middleware(AccessLogMiddleware, access_log=access_log, metrics=request_metrics)
    document(app)
    app.include_router(health.router)
    app.include_router(training.router)
    app.include_router(inference.router)
    # The data plane sits in front of the FastAPI application, not among its middleware: Starlette
    # would wrap it in its error and telemetry layers, a quarter of a forwarded call's CPU
    # (docs/benchmarks.md). It admits its own calls by the same rules (app/dataplane/admission.py)
    # and answers its own errors; every other request (and the lifespan) goes on to `app`.
    return DataPlaneRoutes(app, data_plane)
