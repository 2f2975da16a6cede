"""Fixtures: one real MLflow server for the session, and API processes on the local runtime."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from app import embedded_mlflow
from tests.support import ApiProcess, free_port, kill_workloads


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("mlflow")
    uri, process = embedded_mlflow.start(data_dir, free_port())
    yield uri
    if process is not None:
        embedded_mlflow.stop(process)


@pytest.fixture
def api_factory(tmp_path: Path, mlflow_uri: str) -> Iterator:
    """Start API processes on one data directory; every workload they made is stopped afterwards."""
    started: list[ApiProcess] = []
    data_dir = tmp_path / "data"

    def start(**extra_env: str) -> ApiProcess:
        api = ApiProcess(data_dir, mlflow_uri, extra_env).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()
    kill_workloads(data_dir)


@pytest.fixture
def api(api_factory) -> ApiProcess:
    return api_factory()
