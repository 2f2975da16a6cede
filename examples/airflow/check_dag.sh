#!/usr/bin/env bash
# The example DAG in Airflow itself, in a virtualenv of its own (.venv-airflow): Airflow parses the
# dags folder as its DAG processor does (no import errors, the expected tasks and edges), then
# dag.test() runs the DAG three times against a running API, each run taking another branch:
#   1. a noisy dataset: no champion yet       -> first_deploy, smoke_test
#   2. a clean dataset: better than run 1     -> update_deployment, smoke_test
#   3. the clean dataset again: a tie, no win -> skip_deployment (smoke_test skipped)
# The deployment and trainings it made are deleted at the end.
#
#   examples/airflow/check_dag.sh               # parse, then the three runs (needs the API and MLflow)
#   examples/airflow/check_dag.sh --parse-only  # parse and check the task graph only
#
# Environment: MLOPS_API_URL (default http://127.0.0.1:8000, the API `make run` starts; it must run
# on this machine: the runs' datasets are local files), MLOPS_API_TOKEN (when the API has tokens),
# MLFLOW_TRACKING_URI (default http://127.0.0.1:5000, MLflow of `make run`). AIRFLOW_VERSION
# (default below), PYTHON (the interpreter the virtualenv is made from), AIRFLOW_CONSTRAINTS (a
# constraints file or URL for pip, e.g. Airflow's own
# https://raw.githubusercontent.com/apache/airflow/constraints-$AIRFLOW_VERSION/constraints-3.11.txt;
# unset: pip resolves from PyPI alone). Not part of `make test`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EXAMPLE="$REPO/examples/airflow"
VENV="$REPO/.venv-airflow"
AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
PYTHON="${PYTHON:-python3}"
PARSE_ONLY=false
[[ "${1:-}" == "--parse-only" ]] && PARSE_ONLY=true

export MLOPS_API_URL="${MLOPS_API_URL:-http://127.0.0.1:8000}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000}"

# -- the virtualenv: Airflow, the client (this repository), MLflow's client and boto3 -------------
STAMP="$VENV/.installed-$AIRFLOW_VERSION"
if [[ ! -f "$STAMP" ]]; then
    echo "== making $VENV (apache-airflow==$AIRFLOW_VERSION)"
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
    printf '*\n' > "$VENV/.gitignore"  # git ignores the whole folder
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    constraints=()
    [[ -n "${AIRFLOW_CONSTRAINTS:-}" ]] && constraints=(-c "$AIRFLOW_CONSTRAINTS")
    "$VENV/bin/python" -m pip install --quiet "${constraints[@]}" "apache-airflow==$AIRFLOW_VERSION" mlflow-skinny boto3
    "$VENV/bin/python" -m pip install --quiet -e "$REPO"
    "$VENV/bin/python" -m pip check
    touch "$STAMP"
fi

# -- an Airflow home of its own, the dags folder as the README says: both files copied in ----------
AIRFLOW_HOME="$(mktemp -d -t airflow-check.XXXXXX)"
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
export AIRFLOW_HOME
export AIRFLOW__CORE__DAGS_FOLDER="$AIRFLOW_HOME/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export MLOPS_PIPELINE_POKE_SECONDS=3
mkdir -p "$AIRFLOW__CORE__DAGS_FOLDER"
cp "$EXAMPLE/ml_pipeline_end_to_end.py" "$EXAMPLE/pipeline_tasks.py" "$AIRFLOW__CORE__DAGS_FOLDER/"

echo "== parsing the dags folder"
"$VENV/bin/python" - <<'EOF'
import os

from airflow.dag_processing.dagbag import BundleDagBag

folder = os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
# As the DAG processor parses a bundle: its folder on sys.path, so `import pipeline_tasks` works.
bag = BundleDagBag(folder, bundle_path=folder, bundle_name="dags-folder")
assert bag.import_errors == {}, f"import errors: {bag.import_errors}"
dag = bag.dags["ml_pipeline_end_to_end"]
edges = {task.task_id: sorted(task.downstream_task_ids) for task in dag.tasks}
for task_id, downstream in edges.items():
    print(f"  {task_id} -> {', '.join(downstream) or '(end)'}")
expected = {
    "check_dataset": ["start_training"],
    "start_training": ["evaluate", "first_deploy", "update_deployment", "wait_for_training"],
    "wait_for_training": ["evaluate"],
    "evaluate": ["choose_deployment", "skip_deployment"],
    "choose_deployment": ["first_deploy", "skip_deployment", "update_deployment"],
    "first_deploy": ["smoke_test"],
    "update_deployment": ["smoke_test"],
    "skip_deployment": [],
    "smoke_test": [],
}
assert edges == expected, f"the task graph changed: {edges}"
assert dag.get_task("wait_for_training").mode == "reschedule"
print("  no import errors; the task graph is as expected")
EOF
$PARSE_ONLY && exit 0

echo "== the API at $MLOPS_API_URL, MLflow at $MLFLOW_TRACKING_URI"
curl -fsS -o /dev/null "$MLOPS_API_URL/readyz" || { echo "no API answers at $MLOPS_API_URL/readyz (start it: make run)" >&2; exit 1; }
curl -fsS -o /dev/null "$MLFLOW_TRACKING_URI/health" || { echo "no MLflow answers at $MLFLOW_TRACKING_URI" >&2; exit 1; }

echo "== airflow db migrate (SQLite in $AIRFLOW_HOME)"
"$VENV/bin/airflow" db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }

LOG="${TMPDIR:-/tmp}/ml_pipeline_end_to_end-check.log"
echo "== three runs with dag.test() (Airflow's output: $LOG)"
# The summary lines go to file descriptor 3 (this terminal), Airflow's task logs to $LOG.
"$VENV/bin/python" - 3>&1 >"$LOG" 2>&1 <<'EOF' &
import contextlib
import csv
import os
import random
import time
from pathlib import Path

from airflow.dag_processing.dagbag import BundleDagBag
from mlflow.tracking import MlflowClient

from mlops_client import Client, NotFound

summary = os.fdopen(3, "w", buffering=1)
home, folder = Path(os.environ["AIRFLOW_HOME"]), os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
dag = BundleDagBag(folder, bundle_path=folder, bundle_name="dags-folder").dags["ml_pipeline_end_to_end"]


def houses_csv(path: Path, noise: float) -> str:
    """price = f0 + 2 f1 + 3 f2 + 3, with `noise` on the target (the trainers need no more)."""
    rng = random.Random(0)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["f0", "f1", "f2", "price"])
        for _ in range(120):
            row = [rng.gauss(0, 1) for _ in range(3)]
            writer.writerow([*row, row[0] + 2 * row[1] + 3 * row[2] + 3 + rng.gauss(0, noise)])
    return str(path)


PREFIX = "airflow-check-"  # the ids this check makes
suffix = time.strftime("%H%M%S")
base = {"customModelName": f"airflowCheckHouses{suffix}", "experimentName": "airflow-check",
        "modelProfile": "tabular_regression_sklearn", "targetColumn": "price",
        "hyperparameters": {"estimator": "linear"}, "metric": "val_rmse", "higherIsBetter": False,
        "deploymentTaskId": f"{PREFIX}{suffix}", "modelId": f"{PREFIX}{suffix}",
        "deployTimeoutSeconds": 300}
noisy, clean = houses_csv(home / "noisy.csv", 2.0), houses_csv(home / "clean.csv", 0.05)
with Client() as client:  # what an interrupted check left
    for leftover in client.deployments():
        if leftover.task_id.startswith(PREFIX):
            client.delete_deployment(leftover.task_id)
    for leftover in client.trainings():
        if leftover.task_id.startswith(PREFIX):
            client.delete_training(leftover.task_id)
runs = [("no champion yet", noisy, "first_deploy"), ("better", clean, "update_deployment"),
        ("a tie", clean, "skip_deployment")]
branches = {"first_deploy", "update_deployment", "skip_deployment"}
trainings = []
try:
    for number, (what, dataset, branch) in enumerate(runs, start=1):
        conf = {**base, "datasetPath": dataset, "taskId": f"{PREFIX}{suffix}-{number}"}
        trainings.append(conf["taskId"])
        started = time.monotonic()
        run = dag.test(run_conf=conf)
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        print(f"  run {number} ({what}): {run.state} in {time.monotonic() - started:.0f} s: {states}", file=summary)
        assert str(run.state) == "success", f"run {number} ended {run.state}: {states}"
        assert states[branch] == "success", f"run {number} should take {branch}: {states}"
        assert all(states[other] == "skipped" for other in branches - {branch}), states
        assert states["smoke_test"] == ("skipped" if branch == "skip_deployment" else "success"), states
    # Run 2's version won and stayed the champion through run 3's tie.
    champion = MlflowClient().get_model_version_by_alias(base["customModelName"], "champion")
    assert champion.version == "2", f"the champion is v{champion.version}, not v2"
finally:
    with Client() as client:
        made = [(client.delete_deployment, base["deploymentTaskId"])]
        for delete, task_id in made + [(client.delete_training, task_id) for task_id in trainings]:
            with contextlib.suppress(NotFound):
                delete(task_id)
print("  the three runs took the branches expected; the champion is v2", file=summary)
EOF
RUNS=$!
# Interrupted (Ctrl-C, a timeout), the runs stop too; the next check deletes what they left. Only
# SIGKILL stops them: Airflow's task runner takes a SIGTERM as the end of one try, and dag.test()
# goes on with the retry.
trap 'exit 130' INT TERM
trap 'kill -KILL "$RUNS" 2>/dev/null || true; rm -rf "$AIRFLOW_HOME"' EXIT
if ! wait "$RUNS"; then
    echo "the DAG check failed; the end of $LOG:" >&2
    tail -n 60 "$LOG" >&2
    exit 1
fi
