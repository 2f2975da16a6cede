"""ml_pipeline_end_to_end: check the dataset, train, wait, compare with the champion, deploy or
update, smoke-test, through the control plane's API (mlops_client) and MLflow.

    check_dataset >> start_training >> wait_for_training >> evaluate >> choose_deployment
    choose_deployment >> [first_deploy, update_deployment, skip_deployment]
    [first_deploy, update_deployment] >> smoke_test

Airflow 3 (airflow.sdk). Put this file and pipeline_tasks.py in the dags folder; the steps are
plain functions there. The API is found from MLOPS_API_URL / MLOPS_API_TOKEN (or the mlops
config file), MLflow from MLFLOW_TRACKING_URI. Trigger it with a conf that overrides the params
(see README.md).
"""

import os
from datetime import datetime, timedelta
from typing import Any

import pipeline_tasks as steps
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task

from mlops_client import Client

# How often the sensor asks the API about the training (its worker slot is freed in between).
POKE_SECONDS = float(os.environ.get("MLOPS_PIPELINE_POKE_SECONDS", "30"))
TRAINING_TIMEOUT = timedelta(hours=6)  # the profiles' activeDeadlineSeconds: a Job never runs longer
TRAINING_FIELDS = ("experimentName", "modelProfile", "customModelName", "datasetPath", "targetColumn",
                   "hyperparameters", "trainerImage", "useGpu", "initialModelFilePath")

PARAMS = {
    # The training body (the specification's fields); taskId null: one task per DAG run.
    "taskId": Param(None, type=["null", "string"], description="training task id; null: from the run id"),
    "experimentName": Param("houses", type="string"),
    "modelProfile": Param("tabular_regression_sklearn", type="string"),
    "customModelName": Param("housePrices", type="string", minLength=1,
                             description="the registered model the pipeline deploys and promotes"),
    "datasetPath": Param("/data/houses.csv", type="string", description="a local path, file:// or s3://"),
    "targetColumn": Param("price", type=["null", "string"]),
    "hyperparameters": Param({}, type="object"),
    "trainerImage": Param(None, type=["null", "string"], description="null: the profile's image"),
    "useGpu": Param(False, type="boolean"),
    "initialModelFilePath": Param(None, type=["null", "string"]),
    # The evaluation: which metric of the run, and which way is better.
    "metric": Param("val_rmse", type="string"),
    "higherIsBetter": Param(False, type="boolean"),
    # The deployment the winner goes to.
    "deploymentTaskId": Param("houses-api", type="string"),
    "modelId": Param("houses", type="string"),
    "deployTimeoutSeconds": Param(600, type="integer", minimum=1),
    # The smoke test: these rows, or (null) the first rows of the dataset without the target.
    "smokeTestRows": Param(None, type=["null", "array"]),
    "smokeTestRowCount": Param(3, type="integer", minimum=1),
}


def api_client() -> Client:
    """The API from the worker's environment (MLOPS_API_URL, MLOPS_API_TOKEN) or mlops config."""
    return Client(retries=5)


def params() -> dict[str, Any]:
    return get_current_context()["params"]


def tracking_uri() -> str:
    """MLflow's address, required: without it MlflowClient would read a local ./mlruns and never
    find a champion."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RuntimeError("set MLFLOW_TRACKING_URI to the MLflow server the control plane uses")
    return uri


def training_body(given: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The training request from the params, the ones left null left out."""
    body = {name: given[name] for name in TRAINING_FIELDS if given.get(name) is not None}
    body["taskId"] = given.get("taskId") or steps.training_task_id(given["customModelName"], run_id)
    return body


@dag(dag_id="ml_pipeline_end_to_end", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
     params=PARAMS, tags=["mlops", "example"], default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
     doc_md=__doc__)
def ml_pipeline_end_to_end() -> None:
    @task
    def check_dataset() -> str:
        return steps.check_dataset(params()["datasetPath"])

    @task
    def start_training(dataset_path: str) -> str:
        given = {**params(), "datasetPath": dataset_path}
        with api_client() as client:
            return steps.start_training(client, training_body(given, get_current_context()["run_id"]))

    @task.sensor(poke_interval=POKE_SECONDS, timeout=TRAINING_TIMEOUT.total_seconds(), mode="reschedule")
    def wait_for_training(task_id: str) -> bool:
        with api_client() as client:
            return steps.training_finished(client, task_id)

    @task
    def evaluate(task_id: str) -> dict[str, Any]:
        given = params()
        with api_client() as client:
            return steps.evaluate(client, task_id, given["metric"], given["higherIsBetter"], tracking_uri())

    @task.branch
    def choose_deployment(evaluation: dict[str, Any]) -> str:
        """The run lost (or tied): skip. It won: the first deploy, or an update of the deployment."""
        if evaluation["decision"] != steps.DEPLOY:
            return "skip_deployment"
        with api_client() as client:
            exists = steps.deployment_exists(client, params()["deploymentTaskId"])
        return "update_deployment" if exists else "first_deploy"

    @task
    def first_deploy(task_id: str) -> dict[str, Any]:
        given = params()
        with api_client() as client:
            deployed = steps.first_deploy(client, task_id, given["deploymentTaskId"], given["modelId"],
                                          given["modelProfile"], timeout=given["deployTimeoutSeconds"])
        return deployed.to_wire()

    @task
    def update_deployment(task_id: str) -> dict[str, Any]:
        given = params()
        with api_client() as client:
            updated = steps.update_to_version(client, task_id, given["deploymentTaskId"],
                                              timeout=given["deployTimeoutSeconds"])
        return updated.to_wire()

    @task
    def skip_deployment(evaluation: dict[str, Any]) -> None:
        print(f"kept the champion: {evaluation['metric']} {evaluation['candidate_value']:g} of "
              f"v{evaluation['candidate_version']} does not beat {evaluation['champion_value']:g} of "
              f"v{evaluation['champion_version']}")

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def smoke_test() -> list[Any]:
        given = params()
        rows = given["smokeTestRows"] or steps.sample_rows(given["datasetPath"], given["targetColumn"],
                                                           given["smokeTestRowCount"])
        with api_client() as client:
            return steps.smoke_test(client, given["deploymentTaskId"], rows)

    training = start_training(check_dataset())
    finished = wait_for_training(training)
    evaluation = evaluate(training)
    finished >> evaluation
    branch = choose_deployment(evaluation)
    deployed = [first_deploy(training), update_deployment(training)]
    branch >> [*deployed, skip_deployment(evaluation)]
    deployed >> smoke_test()


ml_pipeline_end_to_end()
