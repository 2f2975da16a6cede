"""Download an MLflow model (`runs:/<id>/model`, `models:/<name>/<version>`, ...) into a folder:
`python script/download_model.py URI FOLDER`, run by script/serve.py as a child process.

In a process of its own because `import mlflow` is most of a model server's start-up (about a
second) and memory (150 MiB) that serving never needs again: the server imports its runtime
meanwhile, and the memory goes back when this process ends. The last line on stdout is JSON:
{"path": "<local model directory>"} or {"error": "<why>"}.
"""

import json
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(json.dumps({"error": "usage: download_model.py MODEL_URI FOLDER"}), flush=True)
        return 2
    uri, folder = argv
    try:
        import mlflow.artifacts

        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder)
    except Exception as exc:  # reported to the server, which reports it as the pod's last words
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"path": path}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
