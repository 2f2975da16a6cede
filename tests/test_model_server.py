"""The model server: request parsing (the seed's body, its variants, clear refusals), the HTTP
answers of the ASGI app, and the compiled forms made at load time from a live model, which must
give the framework's own predictions (within the form's stated tolerance) or give way to the
framework. Forms logged by the trainer are tested in tests/test_serving_bundle.py."""

import asyncio
import io
import json
import logging
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor

from models.base import InputError
from models.compiled_forms import NUMPY_LINEAR, ONNXRUNTIME_FOREST, TOLERANCES, TREELITE_TREES
from models.logs import formatter
from models.spec import ServeSpec
from models.tabular_serving import (
    FRAMEWORK_CLASSIFIER,
    FRAMEWORK_REGRESSOR,
    classifier_from_model,
    regressor_from_model,
)
from models.torch_mlp import ScaledMlp, TorchMlpPredictor
from script.inference_app import InferenceApp, extract_rows

# Batch sizes around the edges of the old strategies and of numpy's small/large paths.
BATCHES = (1, 64, 65, 513)


def assert_within(got: Any, want: np.ndarray, form: str) -> None:
    """The form's stated tolerance: within x max(1, the largest answer)."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    bound = TOLERANCES[form].within * max(1.0, float(np.max(np.abs(want))))
    assert float(np.max(np.abs(got - want))) <= bound


def test_seed_body_and_variants() -> None:
    seed = {"userId": "user-1234", "data": {"features": [[5.1, 3.5, 1.4], [0, 0, 1]]}}
    assert extract_rows(seed, 3, 10).tolist() == [[5.1, 3.5, 1.4], [0, 0, 1]]
    assert extract_rows({"features": [[1, 2, 3]]}, 3, 10).shape == (1, 3)
    assert extract_rows({"instances": [[1, 2, 3]]}, 3, 10).dtype == np.float64
    assert extract_rows({"data": {"features": [1, 2, 3]}}, 3, 10).shape == (1, 3)  # one flat row
    assert extract_rows({"inputs": [[0.5] * 3] * 100}, 3, 100).shape == (100, 3)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ([1, 2, 3], "JSON object"),
        ({"data": {}}, "data.features"),
        ({"data": {"features": []}}, "non-empty"),
        ({"data": {"features": [[1, 2]]}}, "expects 3 features"),
        ({"data": {"features": [[1, 2, 3, 4]]}}, "data.features[0] has 4 values"),
        ({"data": {"features": [[1, 2, 3], [1, 2]]}}, "data.features[1] has 2 values"),
        ({"data": {"features": [[1, 2, 3], 7]}}, "data.features[1] has int"),
        ({"data": {"features": [[1, "x", 3]]}}, "only numbers"),
        ({"data": {"features": [[1, [2], 3]]}}, "numbers"),
        ({"data": {"features": [[1, 2, 3]] * 11}}, "at most 10"),
    ],
)
def test_bad_payloads_are_refused_clearly(payload: object, words: str) -> None:
    with pytest.raises(InputError) as error:
        extract_rows(payload, 3, 10)
    assert words in str(error.value)


def call(app: InferenceApp, method: str, path: str, body: bytes,
         headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app, as uvicorn would make it (the body in two chunks)."""
    incoming = [{"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
                {"type": "http.request", "body": body[len(body) // 2 :], "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path, "headers": headers or []}, receive, send))
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def linear_app(max_request_bytes: int = 10_000, model_id: str = "m") -> tuple[InferenceApp, LinearRegression]:
    rng = np.random.default_rng(3)
    model = LinearRegression().fit(rng.normal(size=(50, 3)), rng.normal(size=50))
    spec = ServeSpec(task_id="t", model_id=model_id, model_uri="runs:/x/model", model_profile="p", handler="h",
                     max_rows=100, max_request_bytes=max_request_bytes)
    return InferenceApp(spec, regressor_from_model(model, ["a", "b", "c"]), "cpu", 0.1), model


def test_the_server_answers_predictions_with_a_content_length() -> None:
    app, model = linear_app()
    rows = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]
    status, headers, body = call(app, "POST", "/predict", orjson.dumps({"data": {"features": rows}}))
    assert status == 200 and headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)  # no chunked encoding
    assert orjson.loads(body)["predictions"] == pytest.approx(model.predict(np.array(rows)).tolist(), rel=1e-12)
    assert orjson.loads(call(app, "GET", "/metadata", b"")[2])["form"] == "numpy linear"


def test_the_server_refuses_wrong_shapes_bad_json_and_big_bodies() -> None:
    app, _ = linear_app(max_request_bytes=200)
    status, _, body = call(app, "POST", "/predict", b'{"data": {"features": [[1, 2]]}}')
    assert status == 422 and "expects 3 features" in orjson.loads(body)["error"]["message"]
    status, _, body = call(app, "POST", "/predict", b'{"data": {"features": [[1, 2, NaN]]}}')
    assert status == 400 and orjson.loads(body)["error"]["code"] == "invalid_json"
    status, _, body = call(app, "POST", "/predict", b'{"data": {"features": [[1, 2, 1e999]]}}')
    assert status in (400, 422)  # orjson refuses an infinite literal; either way it is not predicted
    status, _, _ = call(app, "POST", "/predict", b"[" + b"1," * 200 + b"1]")
    assert status == 413


def random_rows(count: int, features: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, features)) * rng.uniform(0.1, 100, size=features)


def test_linear_fast_form_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    for model in (LinearRegression().fit(x, x @ rng.normal(size=8) + 4), Ridge(alpha=2.0).fit(x, x[:, 0] - 1)):
        predictor = regressor_from_model(model, [])
        assert predictor.form == NUMPY_LINEAR
        for rows in (random_rows(1, 8), random_rows(257, 8, seed=5)):
            got = predictor.predict(rows)["predictions"]
            np.testing.assert_allclose(got, model.predict(rows), rtol=1e-12, atol=1e-12)


def test_forest_compiled_by_skl2onnx_gives_scikit_learns_answers_in_float32() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, size=(400, 5))
    model = RandomForestRegressor(n_estimators=15, random_state=0).fit(x, 100 * np.sin(x[:, 0]) * x[:, 1] + x[:, 2])
    predictor = regressor_from_model(model, [], example=x[:5])
    assert predictor.form == ONNXRUNTIME_FOREST and predictor.note is None
    for count in BATCHES:
        rows = rng.uniform(-4, 4, size=(count, 5))
        assert_within(predictor.predict(rows)["predictions"], model.predict(rows), ONNXRUNTIME_FOREST)


class ShiftedLinear(LinearRegression):
    """A linear model whose predict is not `x @ coef + intercept`: the fast form must not be used."""

    def predict(self, X: Any) -> np.ndarray:
        return super().predict(X) + 1.0


def test_framework_path_when_no_fast_form_fits_or_it_disagrees() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 4))
    y = x.sum(axis=1)
    for model in (KNeighborsRegressor(n_neighbors=3).fit(x, y), ShiftedLinear().fit(x, y)):
        predictor = regressor_from_model(model, [])
        assert predictor.form == FRAMEWORK_REGRESSOR
        rows = random_rows(20, 4)
        np.testing.assert_array_equal(predictor.predict(rows)["predictions"], model.predict(rows))
    # /metadata says which form serves and why the compiled one does not (it gives other answers).
    spec = ServeSpec(task_id="t", model_id="m", model_uri="runs:/x/model", model_profile="p", handler="h")
    metadata = orjson.loads(call(InferenceApp(spec, predictor, "cpu", 0.1), "GET", "/metadata", b"")[2])
    assert metadata["form"] == FRAMEWORK_REGRESSOR and metadata["formNote"].startswith("numpy linear differs by")


def test_regressor_refuses_non_finite_rows() -> None:
    predictor = regressor_from_model(LinearRegression().fit(np.eye(3), [1.0, 2.0, 3.0]), [])
    with pytest.raises(InputError, match="finite"):
        predictor.predict(np.array([[1.0, np.nan, 0.0]]))
    forest = regressor_from_model(RandomForestRegressor(n_estimators=2).fit(np.eye(3), [1.0, 2.0, 3.0]), [])
    assert forest.form == ONNXRUNTIME_FOREST
    with pytest.raises(InputError, match="float32"):
        forest.predict(np.array([[1e300, 0.0, 0.0]]))  # finite in float64, infinite for the trees


def exported_mlp(hidden_layers: int = 2) -> tuple[torch.nn.Module, ScaledMlp]:
    """The model as script/serve.py gets it from MLflow's pt2 flavour: a torch.export program."""
    torch.manual_seed(0)
    model = ScaledMlp(6, 16, hidden_layers)
    x = torch.randn(200, 6) * 5 + 2
    model.fit_scaling(x, x.sum(dim=1) * 3 + 7)
    model.eval()
    program = torch.export.export(model, (x[:4],), dynamic_shapes=({0: torch.export.Dim("rows", min=1)},))
    return program.module(), model


def test_mlp_numpy_form_equals_the_exported_program() -> None:
    module, model = exported_mlp()
    predictor = TorchMlpPredictor(module, "cpu", [f"f{i}" for i in range(6)])
    assert predictor.form == "numpy"
    for rows in (random_rows(1, 6), random_rows(300, 6, seed=4)):
        with torch.inference_mode():
            want = model(torch.from_numpy(rows.astype(np.float32))).numpy()
        np.testing.assert_allclose(predictor.predict(rows)["predictions"], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="finite"):
        predictor.predict(np.array([[np.inf] * 6]))


def test_mlp_keeps_torch_when_the_weights_are_not_a_scaled_mlp() -> None:
    module, _ = exported_mlp()

    class Wrapped(torch.nn.Module):  # the same program with one more parameter: not ScaledMlp's state
        def __init__(self) -> None:
            super().__init__()
            self.inner = module
            self.offset = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + self.offset

    wrapped = Wrapped()  # (an exported program cannot switch to eval mode; it has no training mode)
    predictor = TorchMlpPredictor(wrapped, "cpu", [f"f{i}" for i in range(6)])
    assert predictor.form == "torch"
    rows = random_rows(3, 6)
    with torch.inference_mode():
        want = wrapped(torch.from_numpy(rows.astype(np.float32))).numpy()
    np.testing.assert_allclose(predictor.predict(rows)["predictions"], want, rtol=1e-6)


def flowers(rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(rows, 4))
    return x, np.where(x[:, 0] > 0.5, "setosa", np.where(x[:, 1] > 0, "versicolor", "virginica"))


@pytest.mark.parametrize("labels", [2, 3, 5])
def test_classifier_compiled_by_treelite_gives_predict_proba_with_missing_values(labels: int) -> None:
    x, y = flowers()
    y = np.array([f"c{i % labels}" for i in np.searchsorted(np.unique(y), y)]) if labels != 3 else y
    if labels == 5:
        y = np.array([f"c{i}" for i in np.digitize(x[:, 0] + x[:, 1], [-1, -0.3, 0.3, 1])])
    x = x.copy()
    x[::9, 1] = np.nan  # learned with missing values: the trees have missing-value branches
    model = HistGradientBoostingClassifier(max_iter=30, early_stopping=False).fit(x, y)
    predictor = classifier_from_model(model, [])
    assert predictor.form == TREELITE_TREES and predictor.classes == model.classes_.tolist()
    for count in BATCHES:
        rows = random_rows(count, 4, seed=count)
        rows[::3, 2] = np.nan
        rows[1::4, 1] = np.nan
        answer = predictor.predict(rows)
        assert_within(answer["probabilities"], model.predict_proba(rows), TREELITE_TREES)
        assert answer["predictions"] == model.predict(rows).tolist()
        assert answer["classes"] == model.classes_.tolist()


def test_classifier_with_categorical_splits_gives_predict_proba() -> None:
    x, y = flowers()
    x = x.copy()
    x[:, 3] = (x[:, 0] > 0).astype(float) + (x[:, 1] > 0)  # three categories that decide the class
    model = HistGradientBoostingClassifier(max_iter=20, early_stopping=False, categorical_features=[3]).fit(x, y)
    predictor = classifier_from_model(model, [])
    rows = random_rows(7, 4)
    rows[:, 3] = np.arange(7) % 3
    if predictor.form == TREELITE_TREES:
        assert_within(predictor.predict(rows)["probabilities"], model.predict_proba(rows), TREELITE_TREES)
    else:  # treelite's categorical splits did not agree on the probe rows: the framework serves
        assert predictor.form == FRAMEWORK_CLASSIFIER and predictor.note
        np.testing.assert_array_equal(predictor.predict(rows)["probabilities"], model.predict_proba(rows))
    assert predictor.predict(rows)["predictions"] == model.predict(rows).tolist()


class TiltedHgb(HistGradientBoostingClassifier):
    """predict_proba is not what the trees give: the compiled form must not be used."""

    def predict_proba(self, X: Any) -> np.ndarray:
        probabilities = super().predict_proba(X)
        return probabilities[:, ::-1]


def test_classifier_keeps_predict_proba_when_no_form_fits_or_it_disagrees() -> None:
    x, y = flowers()
    for model in (LogisticRegression().fit(x, y), TiltedHgb(max_iter=10, early_stopping=False).fit(x, y)):
        predictor = classifier_from_model(model, [])
        assert predictor.form == FRAMEWORK_CLASSIFIER and predictor.note
        for count in BATCHES:
            rows = random_rows(count, 4)
            np.testing.assert_array_equal(predictor.predict(rows)["probabilities"], model.predict_proba(rows))


def test_classifier_refuses_missing_values_where_the_model_does() -> None:
    x, y = flowers()
    predictor = classifier_from_model(LogisticRegression().fit(x, y), [])
    assert not predictor.allows_missing
    with pytest.raises(InputError, match="missing"):
        predictor.predict(np.array([[1.0, np.nan, 0.0, 0.0]]))
    with pytest.raises(InputError, match="infinite"):
        predictor.predict(np.array([[1.0, np.inf, 0.0, 0.0]]))


def test_metrics_count_predicts_and_every_predict_has_an_access_line_with_its_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    access = logging.getLogger("mlops.model_server.access")
    access.handlers, access.propagate = [handler], False
    access.setLevel(logging.INFO)
    app, _ = linear_app(max_request_bytes=200, model_id="metered")
    one, two = orjson.dumps({"data": {"features": [[1, 2, 3]]}}), orjson.dumps({"data": {"features": [[1, 2, 3]] * 2}})
    assert call(app, "POST", "/predict", one, [(b"x-request-id", b"from-the-api-1")])[1]["x-request-id"] == \
        "from-the-api-1"
    assert call(app, "POST", "/predict", two)[0] == 200
    assert call(app, "POST", "/predict", b"{not json")[0] == 400
    assert call(app, "POST", "/predict", orjson.dumps({"data": {"features": [[1, 2]]}}))[0] == 422
    assert call(app, "POST", "/predict", b"x" * 300)[0] == 413
    assert call(app, "GET", "/ready", b"")[0] == 200
    status, headers, body = call(app, "GET", "/metrics", b"")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    labels = (("model_name", "metered"), ("model_version", "x"))
    assert samples[("model_infer_request_success_total", labels)] == 2
    assert samples[("model_infer_rows_total", labels)] == 3
    for reason in ("invalid_json", "invalid_input", "too_large"):
        assert samples[("model_infer_request_failure_total", (*labels, ("reason", reason)))] == 1
    assert samples[("model_infer_request_duration_seconds_count", labels)] == 5
    assert samples[("model_info", (("form", "numpy linear"), ("handler", "h"), *labels, ("task_id", "t")))] == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["status"] for line in lines] == [200, 200, 400, 422, 413]  # probes and scrapes stay quiet
    assert lines[0]["requestId"] == "from-the-api-1" and lines[0]["taskId"] == "t" and lines[0]["path"] == "/predict"
    assert all(len(line["requestId"]) == 32 for line in lines[1:])
