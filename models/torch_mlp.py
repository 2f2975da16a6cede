"""tabular_regression: a PyTorch MLP regressor with feature and target scaling inside the model.

The model is logged in MLflow's `pt2` (torch.export) format, so script/serve.py loads a
self-contained program: no class from this module is needed to load or run it.
"""

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn

from models.base import InputError, TabularData, TrainContext, TrainingError
from models.datasets import TabularHandler, split
from models.logs import event
from models.spec import MODEL_ARTIFACT_PATH


class ScaledMlp(nn.Module):
    """Raw features in, raw target out: the scaling learnt from the data travels with the weights."""

    def __init__(self, n_features: int, hidden_units: int, hidden_layers: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_units), nn.ReLU()]
            width = hidden_units
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_scale", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_scale", torch.ones(()))

    def fit_scaling(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x_mean.copy_(x.mean(dim=0))
        # A constant column would divide by zero; leave it unscaled.
        self.x_scale.copy_(torch.where(x.std(dim=0) > 1e-12, x.std(dim=0), torch.ones_like(self.x_scale)))
        self.y_mean.copy_(y.mean())
        self.y_scale.copy_(y.std() if y.numel() > 1 and y.std() > 1e-12 else torch.ones(()))

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_scale).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalized(x) * self.y_scale + self.y_mean


def _regression_metrics(prefix: str, predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    error = predicted - actual
    mse = float(np.mean(error**2))
    variance = float(np.var(actual))
    metrics = {f"{prefix}_rmse": math.sqrt(mse), f"{prefix}_mae": float(np.mean(np.abs(error)))}
    if variance > 0:
        metrics[f"{prefix}_r2"] = 1.0 - mse / variance
    return metrics


def _pip_requirements() -> list[str]:
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]


class TorchMlpRegressorHandler(TabularHandler):
    def train(self, data: TabularData, context: TrainContext) -> dict[str, float]:
        hp = context.hyperparameters
        torch.manual_seed(int(hp["seed"]))
        device = torch.device(context.device)
        train_idx, val_idx = split(data, float(hp["validationFraction"]), int(hp["seed"]))
        x = torch.tensor(data.features, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.float32)
        model = ScaledMlp(x.shape[1], int(hp["hiddenUnits"]), int(hp["hiddenLayers"]))
        if context.initial_model_uri:
            self._warm_start(model, context.initial_model_uri)
        else:
            model.fit_scaling(x[train_idx], y[train_idx])
        model.to(device)
        x_train, y_train = x[train_idx].to(device), y[train_idx].to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["learningRate"]))
        batch = int(hp["numBatch"])
        epochs = int(hp["numEpoch"])
        # Progress for the task's status: batches (optimizer steps) and epochs done out of the total.
        steps_per_epoch = math.ceil(len(train_idx) / batch)
        progress = {"progress_total_epochs": epochs, "progress_total_steps": epochs * steps_per_epoch}
        final: dict[str, float] = {}
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_idx), device=device)
            total = 0.0
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                target = (y_train[rows] - model.y_mean) / model.y_scale
                loss = nn.functional.mse_loss(model.normalized(x_train[rows]), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
            if not math.isfinite(total):
                raise TrainingError(f"training diverged at epoch {epoch} (loss is {total}); lower learningRate")
            metrics = {"train_loss": total / len(order), **self._evaluate(model, x, y, train_idx, val_idx, device)}
            mlflow.log_metrics({**metrics, **progress, "progress_epoch": epoch,
                                "progress_step": epoch * steps_per_epoch}, step=epoch, synchronous=False)
            seconds = time.perf_counter() - started
            event("epoch", epoch=epoch, epochs=epochs, seconds=round(seconds, 4),
                  **{k: round(v, 6) for k, v in metrics.items()})
            final = metrics
        self._log_model(model.cpu().eval(), data, context)
        return final

    @staticmethod
    @torch.no_grad()
    def _evaluate(model: ScaledMlp, x: torch.Tensor, y: torch.Tensor, train_idx: np.ndarray,
                  val_idx: np.ndarray, device: torch.device) -> dict[str, float]:
        model.eval()
        metrics: dict[str, float] = {}
        for prefix, idx in (("train", train_idx), ("val", val_idx)):
            if len(idx):
                predicted = model(x[idx].to(device)).cpu().numpy()
                metrics |= _regression_metrics(prefix, predicted, y[idx].numpy())
        return metrics

    @staticmethod
    def _warm_start(model: ScaledMlp, uri: str) -> None:
        try:
            initial = mlflow.pytorch.load_model(uri, map_location="cpu")
            model.load_state_dict(initial.state_dict())
        except Exception as exc:
            raise TrainingError(f"cannot start from initial model {uri}: {exc}") from None

    @staticmethod
    def _log_model(model: ScaledMlp, data: TabularData, context: TrainContext) -> None:
        example = data.features[: min(5, len(data.features))].astype(np.float32)
        mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT_PATH,
            input_example=example,
            pip_requirements=_pip_requirements(),
            registered_model_name=context.registered_model_name,
            metadata={"feature_names": data.feature_names, "target": data.target_name},
        )

    def load(self, model_dir: str, device: str) -> "TorchMlpPredictor":
        local = model_dir  # script/serve.py has downloaded the model
        meta = mlflow.models.Model.load(local)
        module = mlflow.pytorch.load_model(local, map_location=device)
        example = None
        with contextlib.suppress(Exception):  # a model logged without an example
            loaded = meta.load_input_example(local)
            example = np.asarray(loaded, dtype=np.float64) if loaded is not None else None
        return TorchMlpPredictor(module, device, list((meta.metadata or {}).get("feature_names", [])), example)


def numpy_mlp(state: dict[str, torch.Tensor]) -> Callable[[np.ndarray], np.ndarray] | None:
    """ScaledMlp's forward in numpy (float64) from its weights, or None if the state is not one.

    A request of a few rows costs the exported program ~100 us of dispatch; numpy's matmuls on
    these small layers take a few."""
    def array(name: str) -> np.ndarray:
        return state[name].detach().cpu().numpy().astype(np.float64)

    layers = sorted({int(key.split(".")[1]) for key in state if key.startswith("net.") and key.endswith(".weight")})
    names = {"x_mean", "x_scale", "y_mean", "y_scale"}
    expected = names | {f"net.{i}.{part}" for i in layers for part in ("weight", "bias")}
    # ScaledMlp is Linear, ReLU, Linear, ReLU, ..., Linear: the Linear layers sit at even indices.
    if not layers or set(state) != expected or layers != list(range(0, 2 * len(layers), 2)):
        return None
    weights = [np.ascontiguousarray(array(f"net.{i}.weight").T) for i in layers]
    biases = [array(f"net.{i}.bias") for i in layers]
    x_mean, x_scale = array("x_mean"), array("x_scale")
    y_mean, y_scale = float(array("y_mean")), float(array("y_scale"))

    def forward(rows: np.ndarray) -> np.ndarray:
        hidden = (rows - x_mean) / x_scale
        for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
            hidden = np.maximum(hidden @ weight + bias, 0.0)
        return (hidden @ weights[-1] + biases[-1]).reshape(-1) * y_scale + y_mean

    return forward


class TorchMlpPredictor:
    """The exported program, or on the CPU its numpy form when that gives the same answers."""

    note: str | None = None

    def __init__(self, module: Any, device: str, feature_names: list[str], example: np.ndarray | None = None):
        self.module = module.to(device) if hasattr(module, "to") else module
        self.device = torch.device(device)
        self.feature_names = feature_names
        state = dict(module.state_dict())
        self.n_features = len(feature_names) if feature_names else int(state["x_mean"].shape[0])
        self.form = "torch"
        self._forward = self._torch_forward
        fast = numpy_mlp(state) if self.device.type == "cpu" else None
        if fast is not None and self._agrees(fast, example):
            self.form, self._forward = "numpy", fast

    def _torch_forward(self, rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = self.module(torch.from_numpy(rows.astype(np.float32, copy=False)).to(self.device))
        return output.reshape(-1).cpu().numpy().astype(np.float64)

    def _agrees(self, fast: Callable[[np.ndarray], np.ndarray], example: np.ndarray | None) -> bool:
        """Whether the numpy form gives the program's answers on probe rows, to float32 rounding."""
        rng = np.random.default_rng(0)
        x_mean = self.module.state_dict()["x_mean"].cpu().numpy().astype(np.float64)
        x_scale = self.module.state_dict()["x_scale"].cpu().numpy().astype(np.float64)
        shape = (256, self.n_features)
        probes = [rng.normal(size=shape), x_mean + 3 * x_scale * rng.normal(size=shape)]
        if example is not None and example.ndim == 2 and example.shape[1] == self.n_features:
            probes.append(example)
        for rows in (*probes, probes[1][:1]):
            try:
                got, want = fast(rows), self._torch_forward(rows)
            except Exception:
                return False
            scale = max(1.0, float(np.max(np.abs(want))))
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5 * scale):
                return False
        return True

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        if not np.isfinite(rows).all():
            raise InputError("features must be finite numbers (no NaN or infinity) for this model")
        return {"predictions": self._forward(rows)}
