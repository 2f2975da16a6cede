"""Reading datasets from a local path, file:// or s3://: a CSV table, or JSON Lines records.

In a CSV (with a header) the target is the named column, else the last one; every other column
is a numeric feature. A JSON Lines file holds one JSON object per line.
"""

import io
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from models.base import TabularData, TrainingError
from models.spec import dataset_scheme

S3_ENDPOINT_ENVS = ("MLOPS_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def read_bytes(path: str) -> bytes:
    parsed = urlparse(path)
    scheme = dataset_scheme(path)
    if scheme == "s3":
        return _read_s3(parsed.netloc, parsed.path.lstrip("/"))
    if scheme in ("local", "file"):
        local = Path(unquote(parsed.path) if scheme == "file" else path)
        try:
            return local.read_bytes()
        except FileNotFoundError:
            raise TrainingError(f"dataset not found: {local}") from None
        except IsADirectoryError:
            raise TrainingError(f"dataset path is a directory, not a file: {local}") from None
        except PermissionError:
            raise TrainingError(f"dataset is not readable: {local}") from None
    raise TrainingError(f"unsupported dataset scheme '{scheme}://' (use a path, file:// or s3://)")


def _read_s3(bucket: str, key: str) -> bytes:
    import boto3
    import botocore.exceptions

    if not bucket or not key:
        raise TrainingError("an s3:// dataset path needs a bucket and a key: s3://bucket/path/to/data.csv")
    endpoint = next((os.environ[name] for name in S3_ENDPOINT_ENVS if os.environ.get(name)), None)
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise TrainingError(f"dataset not found: s3://{bucket}/{key} ({code})") from None
        raise TrainingError(f"cannot read s3://{bucket}/{key}: {exc}") from None
    except botocore.exceptions.BotoCoreError as exc:
        where = endpoint or "the default AWS endpoint"
        raise TrainingError(f"cannot read s3://{bucket}/{key} from {where}: {exc}") from None


def load_tabular(
    path: str, target_column: str | None, *, categorical_target: bool, allows_missing_features: bool
) -> TabularData:
    raw = read_bytes(path)
    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TrainingError(f"dataset {path} is not a readable CSV with a header: {exc}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if len(columns) < 2:
        raise TrainingError(f"dataset needs at least one feature column and a target column; found {columns}")
    target = target_column if target_column is not None else columns[-1]
    if target not in columns:
        raise TrainingError(f"target column '{target}' not found in dataset columns {columns}")
    features = [c for c in columns if c != target]
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise TrainingError(f"feature columns must be numeric; not numeric: {non_numeric}")
    frame = frame[frame[target].notna()]
    if len(frame) < 2:
        raise TrainingError(f"dataset has {len(frame)} usable rows; at least 2 are needed")
    x = frame[features].to_numpy(dtype=np.float64)
    if not allows_missing_features and np.isnan(x).any():
        missing = [c for c in features if frame[c].isna().any()]
        raise TrainingError(f"feature columns have missing values, which this model cannot take: {missing}")
    if categorical_target:
        y = frame[target].to_numpy()
    else:
        if not pd.api.types.is_numeric_dtype(frame[target]):
            raise TrainingError(f"target column '{target}' must be numeric for regression")
        y = frame[target].to_numpy(dtype=np.float64)
    return TabularData(features=x, target=y, feature_names=features, target_name=target)


def read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """Each JSON object of a JSON Lines file with its line number (from 1); blank lines are skipped."""
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")  # tolerate the byte-order mark some editors write
    except UnicodeDecodeError as exc:
        raise TrainingError(f"dataset {path} is not UTF-8 text: {exc}") from None
    records: list[tuple[int, dict[str, Any]]] = []
    # Split on newlines only: JSON strings may hold U+2028 and the like, which str.splitlines breaks on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(
                f"dataset {path} line {number} is not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(value, dict):
            kind = _JSON_KINDS.get(type(value), type(value).__name__)
            raise TrainingError(f"dataset {path} line {number} is {kind}, not a JSON object")
        records.append((number, value))
    if not records:
        raise TrainingError(f"dataset {path} has no records (one JSON object per line is expected)")
    return records


def split(data: TabularData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation rows; no validation rows when fraction is 0."""
    rows = len(data.target)
    order = np.random.default_rng(seed).permutation(rows)
    n_val = round(rows * fraction) if fraction > 0 else 0
    n_val = min(max(n_val, 1 if fraction > 0 else 0), rows - 1)
    return order[n_val:], order[:n_val]


class TabularHandler:
    """What the tabular handlers share: a CSV read by `load_tabular` under the handler's rules."""

    categorical_target = False
    allows_missing_features = False

    def load_dataset(self, path: str, target_column: str | None) -> TabularData:
        return load_tabular(path, target_column, categorical_target=self.categorical_target,
                            allows_missing_features=self.allows_missing_features)
