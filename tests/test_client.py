"""The Python client (mlops_client.Client) and the `mlops` command line against a running API
(`python -m app` on the local runtime): every route, typed errors, 503 retries, `-o json` parsed
by a script, and the client's types checked against the API's OpenAPI document."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.alias_generators import to_camel
from typer.testing import CliRunner

from app.main import create_app
from app.settings import Settings
from mlops_client import Client, InvalidSpec, NotFound, Unauthorized
from mlops_client.cli import app as cli_app
from mlops_client.cli import model_choice, rows_from_csv
from mlops_client.models import OPENAPI_COMPONENTS
from tests.support import free_port, regression_csv

PROFILE = "tabular_regression_sklearn"
ADMIN = "admin-token-for-client-tests-0123456789"


def test_every_client_type_matches_the_apis_openapi_document(tmp_path: Path) -> None:
    api = create_app(Settings(data_dir=tmp_path, mlflow_uri=f"http://127.0.0.1:{free_port()}"))
    components = api.app.openapi()["components"]["schemas"]
    for model, name in OPENAPI_COMPONENTS.items():
        schema = components[name]
        fields = {field.alias or to_camel(key): field for key, field in model.model_fields.items()}
        assert set(fields) == set(schema["properties"]), (name, set(fields) ^ set(schema["properties"]))
        required_by_client = {alias for alias, field in fields.items() if field.is_required()}
        assert required_by_client <= set(schema.get("required", [])), (name, required_by_client)


def test_a_model_argument_names_a_run_a_registered_version_or_a_reference() -> None:
    run = "0123456789abcdef0123456789abcdef"
    assert model_choice(run) == {"mlflow_run_id": run}
    assert model_choice(f"runs:/{run}/model") == {"mlflow_run_id": run}
    assert model_choice("houses@champion") == {"model_name": "houses", "model_alias": "champion"}
    assert model_choice("models:/houses/3") == {"model_name": "houses", "model_version": "3"}
    assert model_choice("Qwen/Qwen2.5-0.5B-Instruct") == {"model_reference": "Qwen/Qwen2.5-0.5B-Instruct"}


def test_csv_rows_skip_a_header_and_read_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n1,2.5,-3\n4,5,6e2\n")
    assert rows_from_csv(path) == [[1.0, 2.5, -3.0], [4.0, 5.0, 600.0]]
    path.write_text("1,2\n3,4\n")
    assert rows_from_csv(path) == [[1.0, 2.0], [3.0, 4.0]]


def mlops(api_url: str, *args: str, token: str | None = ADMIN, input: str | None = None) -> Any:
    """The command line as a script runs it; the result's exit code, stdout and stderr."""
    env = {"MLOPS_API_URL": api_url, "MLOPS_CONFIG": "/nonexistent/config.yaml", "COLUMNS": "200"}
    env["MLOPS_API_TOKEN"] = token or ""
    return CliRunner().invoke(cli_app, list(args), env=env, input=input)


def test_the_client_and_the_command_line_against_a_running_api(api_factory, tmp_path: Path) -> None:
    api = api_factory(MLOPS_API_TOKENS=f"admin:{ADMIN}")
    csv = regression_csv(tmp_path / "houses.csv", rows=120, features=3)
    train_file = tmp_path / "train.yaml"
    train_file.write_text(yaml.safe_dump({
        "taskId": "houses-1", "experimentName": "houses", "modelProfile": PROFILE, "datasetPath": str(csv),
        "targetColumn": "price", "customModelName": "housePrices"}))

    # Wrong input: exit status 1, the API's message naming the field on stderr, nothing made.
    refused = mlops(api.url, "train", "-f", str(train_file), "--profile", "no_such_profile")
    assert refused.exit_code == 1 and "modelProfile" in refused.stderr and "no_such_profile" in refused.stderr
    unauthorized = mlops(api.url, "ls", token="not-a-token-0123456789")
    assert unauthorized.exit_code == 1 and "401" in unauthorized.stderr

    # Train and follow: the outcome, as JSON a script parses.
    trained = mlops(api.url, "train", "-f", str(train_file), "--follow", "-o", "json")
    assert trained.exit_code == 0, trained.stderr
    task = json.loads(trained.stdout)
    assert task["status"] == "Succeeded" and len(task["mlflowRunId"]) == 32
    assert task["registeredModelVersion"] == "1" and task["mlflowRunUrl"].endswith(f"/runs/{task['mlflowRunId']}")
    assert task["metrics"] and all(isinstance(value, float) for value in task["metrics"].values())

    # Deploy by run id (the profile found from the training), wait, predict from a CSV.
    deployed = mlops(api.url, "deploy", task["mlflowRunId"], "--task-id", "houses-api", "--model-id", "houses",
                     "--wait", "-o", "json")
    assert deployed.exit_code == 0, deployed.stderr
    assert json.loads(deployed.stdout)["status"] == "Ready"
    rows = tmp_path / "rows.csv"
    rows.write_text("f0,f1,f2\n0,0,0\n1,1,1\n")
    predicted = mlops(api.url, "predict", "houses-api", "--csv", str(rows), "-o", "json")
    assert predicted.exit_code == 0, predicted.stderr
    predictions = json.loads(predicted.stdout)["predictions"]
    assert len(predictions) == 2 and predictions[1] - predictions[0] == pytest.approx(6.0, abs=0.5)  # 1+2+3

    listed = json.loads(mlops(api.url, "ls", "-o", "json").stdout)
    assert [t["taskId"] for t in listed["trainings"]] == ["houses-1"]
    assert [d["taskId"] for d in listed["deployments"]] == ["houses-api"]
    table = mlops(api.url, "ls")
    assert table.exit_code == 0 and "houses-api" in table.stdout and "\x1b[" not in table.stdout  # no colour piped
    ready = json.loads(mlops(api.url, "ls", "--status", "Ready", "-o", "json").stdout)
    assert (ready["trainings"], [d["taskId"] for d in ready["deployments"]]) == ([], ["houses-api"])
    assert json.loads(mlops(api.url, "ls", "--profile", "llm_chat", "-o", "json").stdout) == \
        {"trainings": [], "deployments": []}
    unknown = mlops(api.url, "ls", "--status", "Done")
    assert unknown.exit_code != 0 and "--status" in unknown.stderr
    logs = mlops(api.url, "logs", "houses-1")
    assert logs.exit_code == 0 and logs.stdout.strip()
    assert yaml.safe_load(mlops(api.url, "status", "houses-api", "-o", "yaml").stdout)["modelId"] == "houses"

    # The client: typed errors, every deployment verb, a 503 retried until the server is Ready.
    with Client(api.url, ADMIN, retries=60) as client:
        with pytest.raises(InvalidSpec) as invalid:
            client.deploy("bad", "bad", PROFILE, mlflow_run_id="0" * 32, model_version="3")
        assert invalid.value.field and invalid.value.code == "invalid_spec"
        with pytest.raises(NotFound):
            client.deployment("nobody")
        with pytest.raises(Unauthorized):
            Client(api.url, "wrong-token-0123456789").trainings()
        assert client.training("houses-1").registered_model_version == "1"
        second = client.deploy("houses-by-name", "houses-2", PROFILE, model_name="housePrices", model_version="1")
        assert second.model.model_name == "housePrices"
        # Not Ready yet: 503 with Retry-After, retried until the model answers.
        assert len(client.predict("houses-by-name", [[0, 0, 0]])["predictions"]) == 1
        updated = client.update_deployment("houses-api", mlflow_run_id=task["mlflowRunId"], replicas=1)
        assert updated.revision == 2
        client.wait_for_deployment("houses-api", timeout=120)
        assert [r.revision for r in client.revisions("houses-api")] == [2, 1]
        dry = client.rollback("houses-api", revision=1, dry_run=True)
        assert dry.dry_run and dry.manifests
        canary = client.start_canary("houses-api", 20, model_name="housePrices", model_version="1")
        assert canary.canary is not None and canary.canary.weight == 20
        assert client.set_canary_weight("houses-api", 30).canary.weight == 30
        assert client.abort_canary("houses-api").canary is None
        assert "houses-api" in [d.task_id for d in client.deployments()]
        paged = Client(api.url, ADMIN, page_size=1)  # every list read one task at a time, to the end
        assert [d.task_id for d in paged.deployments()] == ["houses-api", "houses-by-name"]
        assert [t.task_id for t in paged.trainings(status="Succeeded", profile=PROFILE)] == ["houses-1"]
        paged.close()
        follow = client.follow_training_logs("houses-1")
        assert any(line for line in follow)  # the job has ended: the stream ends too

    removed = mlops(api.url, "rm", "houses-api", "houses-by-name", "houses-1", "-o", "json")
    assert removed.exit_code == 0, removed.stderr
    assert {item["taskId"] for item in json.loads(removed.stdout)} == {"houses-api", "houses-by-name", "houses-1"}
    gone = mlops(api.url, "status", "houses-api")
    assert gone.exit_code == 1 and "houses-api" in gone.stderr


def test_the_mlops_command_is_installed_with_completion() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "mlops"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--install-completion" in done.stdout
    for command in ("train", "deploy", "predict", "chat", "logs", "ls", "rm", "canary"):
        assert command in done.stdout
