"""tabular_classification: scikit-learn's histogram gradient boosting classifier.

Predictions are the class labels as they appear in the dataset; probabilities come with them.
Logged with mlflow.sklearn (skops) and the serving bundle: the trees compiled by treelite, with
probe rows (missing values included) and scikit-learn's probabilities on them
(models/serving_bundle.py), served without scikit-learn (models/tabular_serving.py).
"""

from pathlib import Path

import mlflow
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, f1_score, log_loss

from models.base import TabularData, TrainContext, TrainingError
from models.datasets import TabularHandler, split
from models.logs import event
from models.sklearn_logging import log_sklearn_model
from models.tabular_serving import ClassifierPredictor, load_classifier


class HistGradientBoostingClassifierHandler(TabularHandler):
    categorical_target = True
    allows_missing_features = True  # the trees route missing values natively

    def train(self, data: TabularData, context: TrainContext) -> dict[str, float]:
        hp = context.hyperparameters
        classes = np.unique(data.target.astype(str))
        if len(classes) < 2:
            raise TrainingError(
                f"target column '{data.target_name}' has a single class ({classes[0]}); need two or more"
            )
        train_idx, val_idx = split(data, float(hp["validationFraction"]), int(hp["seed"]))
        model = HistGradientBoostingClassifier(
            max_iter=int(hp["numEpoch"]),
            learning_rate=float(hp["learningRate"]),
            max_leaf_nodes=int(hp["maxLeafNodes"]),
            max_depth=int(hp["maxDepth"]) or None,
            random_state=int(hp["seed"]),
            early_stopping=False,
        )
        if context.initial_model_uri:
            raise TrainingError("initialModelFilePath is not supported by tabular_classification; leave it empty")
        model.fit(data.features[train_idx], data.target[train_idx])
        metrics: dict[str, float] = {"n_iter": float(model.n_iter_)}
        for prefix, idx in (("train", train_idx), ("val", val_idx)):
            if len(idx):
                metrics |= self._metrics(prefix, model, data.features[idx], data.target[idx])
        # Per-iteration training loss, so the run shows a curve like the MLP's epochs.
        for step, loss in enumerate(model.train_score_[1:], start=1):
            mlflow.log_metric("train_neg_log_loss", float(loss), step=step, synchronous=False)
        mlflow.log_metrics(metrics)
        event("trained", **{k: round(v, 6) for k, v in metrics.items()})
        log_sklearn_model(model, data, context, "classification", self.allows_missing_features)
        return metrics

    @staticmethod
    def _metrics(prefix: str, model: HistGradientBoostingClassifier, x: np.ndarray, y: np.ndarray) -> dict:
        predicted = model.predict(x)
        metrics = {
            f"{prefix}_accuracy": float(accuracy_score(y, predicted)),
            f"{prefix}_f1_macro": float(f1_score(y, predicted, average="macro")),
        }
        if set(np.unique(y)) <= set(model.classes_):
            metrics[f"{prefix}_log_loss"] = float(log_loss(y, model.predict_proba(x), labels=model.classes_))
        return metrics

    def load(self, model_dir: str, device: str) -> ClassifierPredictor:
        return load_classifier(Path(model_dir))
