"""What stops `python -m app` before it serves: the settings its runtime cannot start without.

Checked once in the main process, before uvicorn starts workers: a worker that fails while
starting is restarted by uvicorn again and again, so whatever can be known up front is found
here and reported in one line that names what to set.
"""

import os
from pathlib import Path

from app import embedded_mlflow
from app.core.auth import TokenConfigError
from app.errors import DependencyUnavailable
from app.main import build_authenticator
from app.settings import RuntimeKind, Settings


def kubernetes_problems(settings: Settings) -> list[str]:
    problems = []
    if settings.mlflow_uri is None:
        problems.append("set MLOPS_MLFLOW_URI to the MLflow tracking server's URL")
    try:
        build_authenticator(settings)
    except TokenConfigError as exc:
        problems.append(str(exc))
    # Only what is configured is read here (no request is made): an unreachable cluster is not a
    # reason to stop, /readyz answers 503 until it can be reached.
    from app.runtime.kubernetes.connection import connect

    try:
        connect(settings)
    except DependencyUnavailable as exc:
        problems.append(exc.message)
    return problems


def unwritable_directory(path: Path) -> str | None:
    """Why `path` cannot be made or written, judged from it or its nearest existing parent: nothing is created."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    why = None
    if not existing.is_dir():
        why = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    if why is None:
        return None
    return (f"the data directory {path} cannot be written by uid {os.getuid()} ({why}): "
            "set MLOPS_DATA_DIR to a directory it can write")


def local_problems(settings: Settings) -> list[str]:
    problems = []
    if (problem := unwritable_directory(settings.data_dir)) is not None:
        problems.append(problem)
    if settings.mlflow_uri is None and (problem := embedded_mlflow.unavailable_reason()) is not None:
        problems.append(problem)
    return problems


def startup_problem(settings: Settings) -> str | None:
    """One line naming everything the runtime lacks to start, or None when it can start."""
    kubernetes = settings.runtime == RuntimeKind.KUBERNETES
    problems = kubernetes_problems(settings) if kubernetes else local_problems(settings)
    if not problems:
        return None
    return f"the {settings.runtime.value} runtime cannot start: " + "; ".join(problems)
