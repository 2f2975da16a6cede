"""The serving bundle the trainer logs beside a scikit-learn model (a compiled form, probe rows and
the framework's answers on them): served without scikit-learn, checked against the recorded
answers at load time, and given up for the framework when it disagrees; a model logged without
one still serves."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow.sklearn
import numpy as np
import onnx
import pytest
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression

from app.settings import PROJECT_ROOT
from models.base import TabularData
from models.compiled_forms import NUMPY_LINEAR, ONNXRUNTIME_FOREST, TOLERANCES, TREELITE_TREES
from models.serving_bundle import MANIFEST_NAME, PROBES_NAME
from models.sklearn_logging import trusted_types, write_serving_bundle
from models.tabular_serving import FRAMEWORK_CLASSIFIER, FRAMEWORK_REGRESSOR, load_classifier, load_regressor

FEATURES = [f"f{i}" for i in range(5)]


def regression_data(rows: int = 300) -> TabularData:
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 6, size=(rows, 5))
    return TabularData(x, 50 * np.sin(x[:, 0]) * x[:, 1] + 3 * x[:, 2] + 200, FEATURES, "price")


def classification_data(rows: int = 300, labels: int = 3) -> TabularData:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 5))
    x[::11, 2] = np.nan  # learned with missing values
    y = np.array([f"k{i}" for i in np.digitize(x[:, 0] + x[:, 1], np.linspace(-1, 1, labels - 1))])
    return TabularData(x, y, FEATURES, "kind")


def save(model, data: TabularData, folder: Path, bundle: bool, task: str = "regression") -> Path:
    """The model as mlflow.sklearn stores it, with the trainer's bundle or (bundle=False) without."""
    (folder / "bundle").mkdir()
    files = write_serving_bundle(model, data, task, task == "classification", folder / "bundle") if bundle else []
    path = folder / "model"
    # Stated requirements: MLflow would otherwise infer them in a subprocess, for seconds.
    mlflow.sklearn.save_model(model, str(path), metadata={"feature_names": data.feature_names},
                              input_example=data.features[:5], skops_trusted_types=trusted_types(model),
                              extra_files=files or None, pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
    return path


def rows_like(data: TabularData, count: int, seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return data.features[rng.integers(0, len(data.features), count)] + rng.normal(0, 0.3, (count, 5))


def within(got, want: np.ndarray, form: str) -> bool:
    got = np.asarray(got, dtype=np.float64)
    bound = TOLERANCES[form].within * max(1.0, float(np.max(np.abs(want))))
    return got.shape == want.shape and float(np.max(np.abs(got - want))) <= bound


@pytest.fixture(scope="module")
def forest() -> tuple[RandomForestRegressor, TabularData]:
    data = regression_data()
    return RandomForestRegressor(n_estimators=12, random_state=0).fit(data.features, data.target), data


@pytest.fixture(scope="module")
def boosted() -> tuple[HistGradientBoostingClassifier, TabularData]:
    data = classification_data()
    return HistGradientBoostingClassifier(max_iter=15, early_stopping=False).fit(data.features, data.target), data


def test_trusted_types_come_from_skops_and_are_scikit_learns(forest, boosted) -> None:
    for model, _ in (forest, boosted):
        names = trusted_types(model)
        assert names and all(name.startswith("sklearn.") for name in names)
    assert trusted_types(LinearRegression().fit(np.eye(3), [1.0, 2.0, 3.0])) == []


def served_in_a_fresh_process(model_dir: Path, task: str, rows: np.ndarray) -> dict:
    """Load as the model server does, in a process of its own: which form, its answers, and whether
    scikit-learn, pandas or MLflow were imported."""
    loader = "load_regressor" if task == "regression" else "load_classifier"
    script = (
        "import json, sys\nfrom pathlib import Path\nimport numpy as np\n"
        f"from models.tabular_serving import {loader} as load\n"
        "predictor = load(Path(sys.argv[1]))\n"
        "answer = predictor.predict(np.array(json.loads(sys.argv[2])))\n"
        "answer['predictions'] = np.asarray(answer['predictions']).tolist()\n"
        "print(json.dumps({'form': predictor.form, 'features': predictor.feature_names, 'answer': answer,\n"
        "                  'imported': [m for m in ('sklearn', 'pandas', 'mlflow') if m in sys.modules]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(model_dir), json.dumps(rows.tolist())],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bundled_forms_serve_without_scikit_learn_pandas_or_mlflow(tmp_path: Path, forest, boosted) -> None:
    linear_data = regression_data()
    linear = LinearRegression().fit(linear_data.features, linear_data.target)
    cases = [(linear, linear_data, "regression", NUMPY_LINEAR), (*forest, "regression", ONNXRUNTIME_FOREST),
             (*boosted, "classification", TREELITE_TREES)]
    for index, (model, data, task, form) in enumerate(cases):
        folder = tmp_path / str(index)
        folder.mkdir()
        rows = rows_like(data, 65)
        if task == "classification":
            rows[::4, 2] = np.nan
        served = served_in_a_fresh_process(save(model, data, folder, True, task), task, rows)
        assert served["form"] == form and served["imported"] == [] and served["features"] == FEATURES
        if task == "regression":
            assert within(served["answer"]["predictions"], model.predict(rows), form)
        else:
            assert within(served["answer"]["probabilities"], model.predict_proba(rows), form)
            assert served["answer"]["predictions"] == model.predict(rows).tolist()
            assert served["answer"]["classes"] == model.classes_.tolist()


@pytest.mark.parametrize("labels", [2, 5])
def test_bundled_classifier_with_two_and_five_classes(tmp_path: Path, labels: int) -> None:
    data = classification_data(labels=labels)
    model = HistGradientBoostingClassifier(max_iter=10, early_stopping=False).fit(data.features, data.target)
    predictor = load_classifier(save(model, data, tmp_path, True, "classification"))
    assert predictor.form == TREELITE_TREES and predictor.classes == model.classes_.tolist()
    for count in (1, 64, 65, 513):
        rows = rows_like(data, count, seed=count)
        rows[::3, 0] = np.nan
        answer = predictor.predict(rows)
        assert within(answer["probabilities"], model.predict_proba(rows), TREELITE_TREES)
        assert answer["predictions"] == model.predict(rows).tolist()


def test_a_tampered_onnx_forest_fails_the_probe_check_and_the_framework_serves(tmp_path: Path, forest) -> None:
    model, data = forest
    path = save(model, data, tmp_path, True)
    onnx_file = path / "extra_files" / "serving-model.onnx"
    proto = onnx.load(str(onnx_file))
    [weights] = [a for a in proto.graph.node[0].attribute if a.name == "target_weights"]
    # One part in 10,000 on every leaf: ten times what float32 may differ by, far below any real error.
    weights.floats[:] = [w * (1 + 1e-4) for w in weights.floats]
    onnx.save(proto, str(onnx_file))
    predictor = load_regressor(path)
    assert predictor.form == FRAMEWORK_REGRESSOR
    assert "onnxruntime forest differs" in predictor.note
    rows = rows_like(data, 65)
    np.testing.assert_array_equal(predictor.predict(rows)["predictions"], model.predict(rows))


def test_a_compiled_form_of_another_model_fails_the_probe_check(tmp_path: Path, boosted) -> None:
    model, data = boosted
    path = save(model, data, tmp_path, True, "classification")
    other = HistGradientBoostingClassifier(max_iter=15, learning_rate=0.2, early_stopping=False)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_path = save(other.fit(data.features, data.target), data, other_dir, True, "classification")
    swapped = "serving-model.treelite"
    (path / "extra_files" / swapped).write_bytes((other_path / "extra_files" / swapped).read_bytes())
    predictor = load_classifier(path)
    assert predictor.form == FRAMEWORK_CLASSIFIER and "treelite trees differs" in predictor.note
    rows = rows_like(data, 64)
    np.testing.assert_array_equal(predictor.predict(rows)["probabilities"], model.predict_proba(rows))


def test_tampered_recorded_answers_or_a_missing_file_make_the_framework_serve(tmp_path: Path, forest) -> None:
    model, data = forest
    path = save(model, data, tmp_path, True)
    probes = path / "extra_files" / PROBES_NAME
    with np.load(probes) as recorded:
        rows, answers = recorded["rows"], recorded["answers"]
    np.savez(probes, rows=rows, answers=answers + 0.5)
    assert load_regressor(path).form == FRAMEWORK_REGRESSOR
    (path / "extra_files" / "serving-model.onnx").unlink()
    predictor = load_regressor(path)
    assert predictor.form == FRAMEWORK_REGRESSOR and "cannot be read" in predictor.note


def test_a_bundle_for_another_task_is_refused(tmp_path: Path, forest) -> None:
    model, data = forest
    path = save(model, data, tmp_path, True)
    manifest = path / "extra_files" / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"regression"', '"classification"'))
    predictor = load_regressor(path)
    assert predictor.form == FRAMEWORK_REGRESSOR and "classification" in predictor.note


def test_a_plain_mlflow_sklearn_model_is_compiled_at_load_time(tmp_path: Path, forest, boosted) -> None:
    linear_data = regression_data()
    linear = LinearRegression().fit(linear_data.features, linear_data.target)
    for index, (model, data, task, form) in enumerate([(linear, linear_data, "regression", NUMPY_LINEAR),
                                                       (*forest, "regression", ONNXRUNTIME_FOREST),
                                                       (*boosted, "classification", TREELITE_TREES)]):
        folder = tmp_path / str(index)
        folder.mkdir()
        path = save(model, data, folder, False, task)
        assert not (path / "extra_files").exists()
        rows = rows_like(data, 65)
        if task == "regression":
            predictor = load_regressor(path)
            assert predictor.form == form and predictor.feature_names == FEATURES
            assert within(predictor.predict(rows)["predictions"], model.predict(rows), form)
        else:
            predictor = load_classifier(path)
            assert predictor.form == form and predictor.allows_missing
            assert predictor.predict(rows)["predictions"] == model.predict(rows).tolist()
