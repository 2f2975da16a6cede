"""KServe's Python model server on a joblib scikit-learn model, as KServe's own sklearnserver does it
(v1 protocol: {"instances": [[...]]} -> {"predictions": [...]}). Runs in the kserve virtual
environment the harness makes: `python kserve_server.py --model_name bench --model_file m.joblib
--http_port 8080 --grpc_port 8081`; every other flag is KServe's own, at its defaults."""

import argparse
from typing import Any

import joblib
import kserve
from kserve.utils.utils import get_predict_input, get_predict_response


class SklearnModel(kserve.Model):
    def __init__(self, name: str, model_file: str):
        super().__init__(name)
        self.model_file = model_file
        self.model: Any = None

    def load(self) -> bool:
        self.model = joblib.load(self.model_file)
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        instances = get_predict_input(payload)
        return get_predict_response(payload, self.model.predict(instances), self.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_file", required=True)
    args, _ = parser.parse_known_args()
    model = SklearnModel(args.model_name, args.model_file)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start([model])
