"""`mlops`: the control plane from a terminal, on the Python client (mlops_client.Client).

Every command takes `-o json` or `-o yaml` for scripts (the API's objects as it sends them), exits 0
on success and non-zero with the API's message (and the field it names) on stderr otherwise.
Colour where the terminal supports it, none when piped. `mlops --install-completion` adds shell
completion.
"""

import csv
import functools
import json
import re
import secrets
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlops_client.client import Client
from mlops_client.config import ConfigError
from mlops_client.errors import MlopsError, NotFound
from mlops_client.models import ApiModel, DeploymentTask, DryRunResult, TrainingTask

app = typer.Typer(help="Train, deploy and call models on the MLOps control plane.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
canary_app = typer.Typer(help="Send part of the predicts to a second revision, then promote or abort it.",
                         no_args_is_help=True)
app.add_typer(canary_app, name="canary")
out = Console()
err = Console(stderr=True)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
REGISTERED = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9_.\-]+)"
                        r"(?:/(?P<version>[1-9][0-9]*)|@(?P<alias>[A-Za-z_][\w-]*))$")


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


class State:
    api_url: str | None = None
    token: str | None = None

    def client(self) -> Client:
        return Client(self.api_url, self.token)


state = State()
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table for people; json or yaml for scripts")]
WaitOption = Annotated[bool, typer.Option("--wait", help="wait until Ready (or Failed), showing why while Pending")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="show the objects it would change, change nothing")]


@app.callback()
def main(api_url: Annotated[str | None, typer.Option(envvar="MLOPS_API_URL", help="the API (default: the config "
                                                        "file's apiUrl, else http://127.0.0.1:8000)")] = None,
         token: Annotated[str | None, typer.Option(envvar="MLOPS_API_TOKEN", show_envvar=True,
                                                   help="bearer token (default: the config file's token)")] = None,
         ) -> None:
    state.api_url, state.token = api_url, token


def run() -> None:
    """The `mlops` entry point."""
    app()


def reports_errors(command: Callable[..., None]) -> Callable[..., None]:
    """API errors (and a bad config file, a wait that timed out) become one line on stderr, with
    the status, code and field the API gave, and exit status 1."""

    @functools.wraps(command)
    def run_command(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except MlopsError as exc:
            field = f" [field: {exc.field}]" if exc.field else ""
            status = f"{exc.status} {exc.code}: " if exc.status else ""
            err.print(f"[red]error:[/red] {escape(status + exc.message + field)}", highlight=False)
            raise typer.Exit(1) from None
        except (ConfigError, TimeoutError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None

    return run_command


# -- output ----------------------------------------------------------------------------------


def emit(value: ApiModel | list[ApiModel] | dict[str, Any] | list[dict[str, Any]], output: Output,
         table: Callable[[], None]) -> None:
    """The objects as JSON or YAML for scripts, or `table()` for people."""
    if output is Output.table:
        table()
        return
    plain: Any
    if isinstance(value, list):
        plain = [item.to_wire() if isinstance(item, ApiModel) else item for item in value]
    else:
        plain = value.to_wire() if isinstance(value, ApiModel) else value
    if output is Output.json:
        out.print_json(json.dumps(plain)) if out.is_terminal else print(json.dumps(plain, indent=2))
    else:
        print(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True), end="")


def age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = int((datetime.now(UTC) - moment.astimezone(UTC)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


TRAINING_STATUSES = ("Pending", "Running", "Succeeded", "Failed")
DEPLOYMENT_STATUSES = ("Pending", "Ready", "Failed")
STATUS_STYLE = {"Succeeded": "green", "Ready": "green", "Running": "cyan", "Pending": "yellow", "Failed": "red"}


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


WIDE = 110  # columns below which the tables leave out what a person can look up (profile, endpoint)


def short(run_id: str | None) -> str:
    return run_id[:12] if run_id else "-"


def trainings_table(tasks: list[TrainingTask]) -> Table:
    wide = out.width >= WIDE
    table = Table(title="Training tasks", title_justify="left", expand=False)
    for column in ("TASK", "STATUS", "AGE", *(["PROFILE"] if wide else []), "MODEL", "RUN"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        model = task.custom_model_name or "-"
        if task.registered_model_version:
            model += f" v{task.registered_model_version}"
        table.add_row(task.task_id, styled(task.status), age(task.created_at),
                      *([task.model_profile] if wide else []), model, short(task.mlflow_run_id))
    return table


def deployments_table(deployments: list[DeploymentTask], api_url: str) -> Table:
    wide = out.width >= WIDE
    table = Table(title="Deployments", title_justify="left", expand=False)
    for column in ("TASK", "STATUS", "AGE", "MODEL", "REVISION", "REPLICAS", *(["ENDPOINT"] if wide else [])):
        table.add_column(column, overflow="fold")
    for deployment in deployments:
        revision = str(deployment.serving_revision or deployment.revision)
        if deployment.canary is not None:
            revision += f" (+{deployment.canary.revision} at {deployment.canary.weight}%)"
        served = deployment.model
        registered = served.model_name or served.model_reference
        model = served.describe() if registered else f"run {short(served.mlflow_run_id)}"
        table.add_row(deployment.task_id, styled(deployment.status), age(deployment.created_at),
                      f"{deployment.model_id}: {model}", revision,
                      f"{deployment.ready_replicas}/{deployment.replicas}",
                      *([api_url + deployment.predict_path] if wide else []))
    return table


def show_training(task: TrainingTask) -> None:
    out.print(trainings_table([task]))
    if task.message:
        out.print(f"message: {task.message}", highlight=False)
    finished(task)


def show_deployment(deployment: DeploymentTask, api_url: str) -> None:
    out.print(deployments_table([deployment], api_url))
    if deployment.message:
        out.print(f"message: {deployment.message}", highlight=False)


def finished(task: TrainingTask) -> None:
    """The lines a finished training ends with: run id, registered version, metrics, MLflow link."""
    if task.status != "Succeeded":
        return
    out.print(f"[green]run[/green] {task.mlflow_run_id}", highlight=False)  # whole: scripts copy it
    if task.registered_model_version:
        out.print(f"[green]registered[/green] {task.custom_model_name} version {task.registered_model_version}",
                  highlight=False)
    if task.metrics:
        out.print("metrics: " + ", ".join(f"{name} {value:.4g}" for name, value in task.metrics.items()),
                  highlight=False)
    if task.mlflow_run_url:
        out.print(f"MLflow: {task.mlflow_run_url}", highlight=False)


# -- training --------------------------------------------------------------------------------


def read_body(path: Path) -> dict[str, Any]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    body = yaml.safe_load(text)  # YAML is a superset of JSON: either works
    if not isinstance(body, dict):
        raise typer.BadParameter(f"{path} must hold one object (the training request)", param_hint="--file")
    return body


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """name=value pairs; each value read as YAML (numbers, booleans, strings)."""
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"'{pair}' is not name=value", param_hint="--set")
        settings[name] = yaml.safe_load(value) if value else ""
    return settings


def progress_text(task: TrainingTask) -> str:
    parts = [task.status]
    if task.progress is not None:
        if task.progress.total_epochs:
            parts.append(f"epoch {task.progress.epoch or 0}/{task.progress.total_epochs}")
        elif task.progress.total_steps:
            parts.append(f"step {task.progress.step or 0}/{task.progress.total_steps}")
        parts += [f"{name} {value:.4g}" for name, value in list(task.progress.metrics.items())[:3]]
    elif task.message and task.status == "Pending":
        parts.append(task.message)
    return "  ".join(parts)


def follow_training(client: Client, task_id: str) -> TrainingTask:
    """A live bar from the status' progress until the job ends; Ctrl-C stops following only."""
    columns = [SpinnerColumn(), TextColumn("[bold]{task.fields[name]}"), BarColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=False) as bar:
        line = bar.add_task("Pending", total=None, name=task_id)

        def update(task: TrainingTask) -> None:
            progress = task.progress
            total = done = None
            if progress is not None:
                total = progress.total_steps or progress.total_epochs
                done = progress.step if progress.total_steps else progress.epoch
            if task.status == "Succeeded" and total is None:
                total = done = 1
            elif task.status == "Succeeded":
                done = total
            bar.update(line, total=total, completed=done or 0, description=progress_text(task))

        try:
            return client.wait_for_training(task_id, poll=1.0, on_update=update)
        except KeyboardInterrupt:
            bar.stop()
            err.print(f"stopped following; the task goes on (mlops status {task_id}, mlops rm {task_id})")
            raise typer.Exit(130) from None


@app.command()
@reports_errors
def train(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="the training request, YAML or JSON ('-': stdin)")]
    = None,
    task_id: Annotated[str | None, typer.Option(help="taskId (made up when neither given nor in the file)")] = None,
    experiment: Annotated[str | None, typer.Option(help="experimentName")] = None,
    profile: Annotated[str | None, typer.Option(help="modelProfile, e.g. tabular_regression")] = None,
    dataset: Annotated[str | None, typer.Option(help="datasetPath: a file path or s3:// URI")] = None,
    target: Annotated[str | None, typer.Option(help="targetColumn")] = None,
    model_name: Annotated[str | None, typer.Option(help="customModelName: register the model under it")] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--no-gpu", help="useGpu")] = None,
    hyperparameter: Annotated[list[str] | None, typer.Option("--set", help="a hyperparameter: name=value "
                                                                             "(repeatable)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="show progress until the job ends")] = False,
    output: OutputOption = Output.table,
) -> None:
    """Start a training task (the specification's body, from a file and/or flags)."""
    body = read_body(file) if file else {}
    flags = {"taskId": task_id, "experimentName": experiment, "modelProfile": profile, "datasetPath": dataset,
             "targetColumn": target, "customModelName": model_name, "useGpu": gpu}
    body.update({name: value for name, value in flags.items() if value is not None})
    if hyperparameter:
        body["hyperparameters"] = {**body.get("hyperparameters", {}), **parse_settings(hyperparameter)}
    body.setdefault("taskId", f"train-{secrets.token_hex(3)}")
    with state.client() as client:
        task = client.train(body)
        if follow:
            task = follow_training(client, task.task_id)
    emit(task, output, lambda: show_training(task))
    if task.status == "Failed":
        err.print(f"[red]training failed:[/red] {task.message or 'see mlops logs ' + task.task_id}", highlight=False)
        raise typer.Exit(1)


# -- deployments -----------------------------------------------------------------------------


def model_choice(model: str) -> dict[str, str]:
    """An MLflow run id, a registered model (name@alias, name/3, models:/name@alias), or else a
    model reference (a language model's path or hub id)."""
    if RUN_ID.match(model):
        return {"mlflow_run_id": model}
    if model.startswith("runs:/"):
        return {"mlflow_run_id": model.removeprefix("runs:/").split("/")[0]}
    found = REGISTERED.match(model)
    if found and (model.startswith("models:/") or not Path(model).exists()):
        if found["version"]:
            return {"model_name": found["name"], "model_version": found["version"]}
        return {"model_name": found["name"], "model_alias": found["alias"]}
    return {"model_reference": model}


def profile_of_run(client: Client, run_id: str) -> str | None:
    """The profile of the training task that made this run, when the API still has it."""
    return next((task.model_profile for task in client.trainings() if task.mlflow_run_id == run_id), None)


def wait_ready(client: Client, task_id: str) -> DeploymentTask:
    with err.status(f"deploying {task_id}: Pending", spinner="dots") as spinner:
        def update(deployment: DeploymentTask) -> None:
            why = f" ({deployment.message})" if deployment.message else ""
            spinner.update(f"deploying {task_id}: {deployment.status}{why}")

        try:
            return client.wait_for_deployment(task_id, on_update=update)
        except KeyboardInterrupt:
            err.print(f"stopped waiting; the deployment goes on (mlops status {task_id})")
            raise typer.Exit(130) from None


@app.command()
@reports_errors
def deploy(
    model: Annotated[str, typer.Argument(help="an MLflow run id, a registered model (name@alias, name/3, "
                                              "models:/name@alias) or a language model's reference")],
    profile: Annotated[str | None, typer.Option(help="modelProfile (default: the profile of the training that "
                                                     "made the run)")] = None,
    task_id: Annotated[str | None, typer.Option(help="taskId: the name predicts use (made up when omitted)")] = None,
    model_id: Annotated[str | None, typer.Option(help="modelId (made up when omitted)")] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--no-gpu", help="useGpu")] = None,
    replicas: Annotated[int | None, typer.Option(min=1, help="model servers")] = None,
    wait: WaitOption = False,
    output: OutputOption = Output.table,
) -> None:
    """Deploy a model behind the predict route."""
    choice = model_choice(model)
    with state.client() as client:
        if profile is None and "mlflow_run_id" in choice:
            profile = profile_of_run(client, choice["mlflow_run_id"])
        if profile is None:
            raise typer.BadParameter("give the model's profile (no training task of this API made it)",
                                     param_hint="--profile")
        suffix = secrets.token_hex(3)
        deployment = client.deploy(task_id or f"deploy-{suffix}", model_id or f"model-{suffix}", profile,
                                   use_gpu=gpu, replicas=replicas, **choice)
        if wait:
            deployment = wait_ready(client, deployment.task_id)
        emit(deployment, output, lambda: show_deployment(deployment, client.api_url))
    if deployment.status == "Failed":
        raise typer.Exit(1)


@app.command()
@reports_errors
def update(
    task_id: Annotated[str, typer.Argument(help="the deployment")],
    model: Annotated[str | None, typer.Argument(help="a new model (run id, name@alias, name/3, reference): "
                                                     "a new revision, rolled out with no failed predict")] = None,
    replicas: Annotated[int | None, typer.Option(min=1)] = None,
    promote_alias: Annotated[str | None, typer.Option(help="point this MLflow alias at the new version")] = None,
    wait: WaitOption = False,
    dry_run: DryRunOption = False,
    output: OutputOption = Output.table,
) -> None:
    """Change a deployment: its model (a new revision) or its replicas."""
    changes: dict[str, Any] = {"replicas": replicas, "promote_alias": promote_alias,
                               **(model_choice(model) if model else {})}
    with state.client() as client:
        answer = client.update_deployment(task_id, dry_run=dry_run, **changes)
        changed(client, answer, wait, output)


def changed(client: Client, answer: DeploymentTask | DryRunResult, wait: bool, output: Output) -> None:
    if isinstance(answer, DryRunResult):
        emit(answer, Output.yaml if output is Output.table else output, lambda: None)
        return
    if wait:
        answer = wait_ready(client, answer.task_id)
    final = answer
    emit(final, output, lambda: show_deployment(final, client.api_url))


@app.command()
@reports_errors
def rollback(
    task_id: Annotated[str, typer.Argument(help="the deployment")],
    revision: Annotated[int | None, typer.Option(min=1, help="default: the revision before")] = None,
    dry_run: DryRunOption = False,
    output: OutputOption = Output.table,
) -> None:
    """Serve an earlier revision again (a new revision with its model)."""
    with state.client() as client:
        changed(client, client.rollback(task_id, revision, dry_run=dry_run), False, output)


@app.command()
@reports_errors
def revisions(task_id: Annotated[str, typer.Argument(help="the deployment")], output: OutputOption = Output.table
              ) -> None:
    """A deployment's revisions, the newest first."""
    with state.client() as client:
        found = client.revisions(task_id)

    def table() -> None:
        shown = Table(title=f"Revisions of {task_id}", title_justify="left")
        for column in ("REVISION", "STATE", "MODEL", "CAUSE", "CREATED", "MESSAGE"):
            shown.add_column(column, overflow="fold")
        for item in found:
            shown.add_row(str(item.revision), item.state, item.model.describe(), item.cause, age(item.created_at),
                          item.message or "")
        out.print(shown)

    emit(found, output, table)


@canary_app.command("start")
@reports_errors
def canary_start(
    task_id: Annotated[str, typer.Argument(help="the deployment")],
    model: Annotated[str, typer.Argument(help="the canary's model (run id, name@alias, name/3, reference)")],
    percent: Annotated[int, typer.Option("--percent", "-p", min=1, max=99, help="share of the predicts")] = 10,
    auto_abort: Annotated[bool, typer.Option(help="abort by itself past the profile's error and latency limits")]
    = False,
    dry_run: DryRunOption = False,
    output: OutputOption = Output.table,
) -> None:
    """Start a canary revision beside the serving one."""
    with state.client() as client:
        changed(client, client.start_canary(task_id, percent, auto_abort=auto_abort, dry_run=dry_run,
                                            **model_choice(model)), False, output)


@canary_app.command("weight")
@reports_errors
def canary_weight(task_id: Annotated[str, typer.Argument()], percent: Annotated[int, typer.Argument(min=1, max=99)],
                  output: OutputOption = Output.table) -> None:
    """Change the canary's share of the predicts."""
    with state.client() as client:
        changed(client, client.set_canary_weight(task_id, percent), False, output)


@canary_app.command("promote")
@reports_errors
def canary_promote(task_id: Annotated[str, typer.Argument()],
                   alias: Annotated[str | None, typer.Option(help="MLflow alias moved onto its version")] = "champion",
                   output: OutputOption = Output.table) -> None:
    """Make the canary the only revision."""
    with state.client() as client:
        changed(client, client.promote_canary(task_id, alias), False, output)


@canary_app.command("abort")
@reports_errors
def canary_abort(task_id: Annotated[str, typer.Argument()], output: OutputOption = Output.table) -> None:
    """Stop the canary: the serving revision takes every predict again."""
    with state.client() as client:
        changed(client, client.abort_canary(task_id), False, output)


# -- predict and chat ------------------------------------------------------------------------


def number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def rows_from_csv(path: Path) -> list[list[Any]]:
    """The rows of a CSV file as numbers; a first row that is not numbers is a header."""
    with (sys.stdin if str(path) == "-" else path.open(newline="")) as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and not all(isinstance(number(cell), float) for cell in rows[0]):
        rows = rows[1:]
    return [[number(cell) for cell in row] for row in rows]


@app.command()
@reports_errors
def predict(
    task_id: Annotated[str, typer.Argument(help="the deployment")],
    csv_file: Annotated[Path | None, typer.Option("--csv", help="rows to predict, one per line ('-': stdin)")] = None,
    json_body: Annotated[str | None, typer.Option("--json", help="the request's data as JSON, or @FILE")] = None,
    output: OutputOption = Output.table,
) -> None:
    """Predict with a deployed model: rows from a CSV file, or the data as JSON."""
    if (csv_file is None) == (json_body is None):
        raise typer.BadParameter("give exactly one of --csv or --json")
    with state.client() as client:
        if csv_file is not None:
            rows = rows_from_csv(csv_file)
            answer = client.predict(task_id, rows)
        else:
            assert json_body is not None
            text = Path(json_body[1:]).read_text() if json_body.startswith("@") else json_body
            data = json.loads(text)
            rows = data.get("features", []) if isinstance(data, dict) else []
            answer = client.predict(task_id, data=data.get("data", data) if isinstance(data, dict) else data)

    def table() -> None:
        predictions = answer.get("predictions", [])
        shown = Table(title=f"Predictions of {task_id}", title_justify="left")
        shown.add_column("ROW")
        shown.add_column("INPUT", overflow="fold")
        shown.add_column("PREDICTION", overflow="fold")
        for index, prediction in enumerate(predictions):
            given = ", ".join(str(v) for v in rows[index]) if index < len(rows) else ""
            shown.add_row(str(index + 1), given, str(prediction))
        out.print(shown)

    emit(answer, output, table)


@app.command()
@reports_errors
def chat(
    task_id: Annotated[str, typer.Argument(help="a language-model deployment")],
    system: Annotated[str | None, typer.Option(help="a system message")] = None,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Talk to a language model, its answers streamed as they are generated (Ctrl-D ends)."""
    import openai

    with state.client() as client:
        # The served model's name, from the data plane (a predict token may read it).
        model = client.request("GET", f"/api/v1/inference/{task_id}/v1/models").json()["data"][0]["id"]
        sdk = client.openai(task_id, max_retries=2)
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        err.print(f"chatting with {model} ({task_id}); Ctrl-D ends", style="dim", highlight=False)
        while True:
            try:
                prompt = input("> " if sys.stdin.isatty() else "")
            except (EOFError, KeyboardInterrupt):
                out.print()
                return
            if not prompt.strip():
                continue
            messages.append({"role": "user", "content": prompt})
            reply = ""
            try:
                for chunk in sdk.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                         stream=True):
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if piece:
                        reply += piece
                        out.print(piece, end="", highlight=False, markup=False)
            except openai.APIError as exc:
                raise MlopsError(f"the model failed: {exc}", code="model_error",
                                 status=getattr(exc, "status_code", 0) or 0) from None
            out.print()
            messages.append({"role": "assistant", "content": reply})


# -- any task --------------------------------------------------------------------------------


def training_or_deployment(client: Client, task_id: str) -> TrainingTask | DeploymentTask:
    """A task id names a training task or a deployment; the training's is tried first."""
    try:
        return client.training(task_id)
    except NotFound:
        try:
            return client.deployment(task_id)
        except NotFound:
            raise NotFound(f"no training task or deployment '{task_id}'", code="not_found", field="taskId",
                           status=404) from None


@app.command()
@reports_errors
def status(task_id: Annotated[str, typer.Argument(help="a training task or a deployment")],
           output: OutputOption = Output.table) -> None:
    """A training task's or a deployment's status."""
    with state.client() as client:
        found = training_or_deployment(client, task_id)
        if isinstance(found, TrainingTask):
            emit(found, output, lambda: show_training(found))
        else:
            emit(found, output, lambda: show_deployment(found, client.api_url))


@app.command()
@reports_errors
def logs(
    task_id: Annotated[str, typer.Argument(help="a training task or a deployment")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream new lines until the task ends")] = False,
    tail: Annotated[int | None, typer.Option(min=0, help="only the last N lines")] = None,
) -> None:
    """A task's output (a training's trainer, a deployment's model server)."""
    with state.client() as client:
        found = training_or_deployment(client, task_id)
        is_training = isinstance(found, TrainingTask)
        if not follow:
            text = client.training_logs(task_id, tail) if is_training else client.deployment_logs(task_id, tail)
            sys.stdout.write(text)
            return
        lines: Iterator[str] = (client.follow_training_logs(task_id, tail) if is_training
                                else client.follow_deployment_logs(task_id, tail))
        try:
            for line in lines:
                print(line, flush=True)
        except KeyboardInterrupt:
            return


@app.command("ls")
@reports_errors
def list_tasks(
    output: OutputOption = Output.table,
    status: Annotated[str | None, typer.Option(help="only tasks in this status (trainings: Pending, Running, "
                                                    "Succeeded, Failed; deployments: Pending, Ready, Failed)")] = None,
    profile: Annotated[str | None, typer.Option(help="only tasks of this model profile")] = None,
) -> None:
    """Training tasks and deployments, with status, age, model and endpoint."""
    with state.client() as client:
        if status is not None and status not in (*TRAINING_STATUSES, *DEPLOYMENT_STATUSES):
            known = ", ".join(sorted({*TRAINING_STATUSES, *DEPLOYMENT_STATUSES}))
            raise typer.BadParameter(f"unknown status '{status}' (known: {known})", param_hint="--status")
        # A status only one kind has (Running, Ready) lists none of the other kind.
        tasks = client.trainings(status, profile) if status in (None, *TRAINING_STATUSES) else []
        deployments = client.deployments(status, profile) if status in (None, *DEPLOYMENT_STATUSES) else []
        both = {"trainings": [t.to_wire() for t in tasks], "deployments": [d.to_wire() for d in deployments]}

        def tables() -> None:
            out.print(trainings_table(tasks))
            out.print(deployments_table(deployments, client.api_url))

        emit(both, output, tables)


@app.command("rm")
@reports_errors
def remove(task_ids: Annotated[list[str], typer.Argument(help="training tasks or deployments")],
           output: OutputOption = Output.table) -> None:
    """Remove training tasks (cancelling running ones) or deployments."""
    removed = []
    with state.client() as client:
        for task_id in task_ids:
            found = training_or_deployment(client, task_id)
            if isinstance(found, TrainingTask):
                removed.append(client.delete_training(task_id))
            else:
                removed.append(client.delete_deployment(task_id))
    emit(removed, output, lambda: [out.print(f"removed {item.task_id}", highlight=False) for item in removed])


if __name__ == "__main__":
    run()
