"""The language-model server of an llm_chat deployment: vLLM's OpenAI-compatible server.

script/serve.py hands over here. This process fetches the model into a local directory (an MLflow
run's model, or a reference the profile allows; models/llm_chat.py), then runs

    <vLLM's Python> -m vllm.entrypoints.openai.api_server --model DIR --served-model-name MODEL_ID
        --host HOST --port PORT --disable-uvicorn-access-log --shutdown-timeout SECONDS
        <the container's args>

where the container's args are the profile's (app/profiles.py VllmSettings.cli_args). The same
command runs vLLM's CPU build (CPU nodes, the local runtime) and its CUDA build (GPU nodes).
vLLM's Python is $MLOPS_VLLM_PYTHON, else this Python when it has vLLM, else the project's
`.venv-vllm` (`make vllm-env`). (`vllm serve` is not used: the CPU build's `vllm` command looks
up a distribution named `vllm` and fails.)

vLLM runs as a child: its output passes through, SIGTERM and SIGINT are handed on, its exit code
is this process's. When it fails, the root cause of its error goes to the termination log, which
the deployment's status shows.
"""

import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType

from models.llm_chat import resolve_model_dir
from models.spec import LLM_STREAM_DRAIN_SECONDS, SERVE_HOST_ENV, SERVE_PORT_ENV, VLLM_PYTHON_ENV, ServeSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_VLLM_PYTHON = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# Output lines kept to find why vLLM failed (its tracebacks run to a few hundred lines).
TAIL_LINES = 2000
MAX_CAUSE_CHARS = 600

# vLLM prefixes its processes' log lines: "(EngineCore pid=12) ERROR 12-05 05:02:58 [core.py:1] ...".
_LOG_PREFIX = re.compile(r"^(?:\(\w[\w:-]* pid=\d+\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+[\d-]+\s+[\d:.]+\s+"
                         r"\[[^\]]*\]\s?)?")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?::\s*(.*))?$")
# Errors that only point at another one: the root cause is elsewhere in the output.
_POINTERS = ("root cause", "See stack trace", "See the stack trace", "initialization failed")


class EngineUnavailable(Exception):
    """vLLM cannot be started here; the message says what to do."""


def vllm_python() -> str:
    configured = os.environ.get(VLLM_PYTHON_ENV)
    if configured:
        return configured
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    if LOCAL_VLLM_PYTHON.exists():
        return str(LOCAL_VLLM_PYTHON)
    raise EngineUnavailable(f"vLLM is not installed for this Python: run `make vllm-env` (creates "
                            f"{LOCAL_VLLM_PYTHON.parent.parent.name}) or set {VLLM_PYTHON_ENV} to a Python that has it")


def check_device(spec: ServeSpec) -> None:
    """A GPU deployment where no GPU is visible would run the CPU build with GPU memory settings."""
    if not spec.use_gpu:
        return
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailable("useGpu is true but no CUDA device is visible here; deploy with useGpu false to "
                                "serve with vLLM's CPU build")


def server_command(python: str, model_dir: Path, spec: ServeSpec, host: str, port: str,
                   profile_args: list[str]) -> list[str]:
    return [python, "-m", VLLM_SERVER_MODULE, "--model", str(model_dir),
            "--served-model-name", spec.served_model_name or spec.model_id, "--host", host, "--port", port,
            # The readiness and liveness probes would fill the log; the API logs every request.
            "--disable-uvicorn-access-log",
            # On SIGTERM, streams in flight finish (vLLM's default aborts them): a rolling update
            # or a scale-in lets them end on the revision that started them.
            "--shutdown-timeout", str(LLM_STREAM_DRAIN_SECONDS), *profile_args]


def _exception_at(lines: list[str], index: int) -> str | None:
    """The exception a line states, with its indented continuation (e.g. pydantic's detail line)."""
    match = _EXCEPTION.match(lines[index])
    if not match:
        return None
    text = lines[index]
    for follow in lines[index + 1:index + 4]:
        if not follow.startswith("  ") or follow.lstrip().startswith(("File ", "^", "~")):
            break
        text += " " + follow.strip()
    return text


def root_cause(output: Iterable[str]) -> str | None:
    """The first error stated after a traceback that is not a pointer to another one."""
    lines = [_LOG_PREFIX.sub("", line.rstrip()) for line in output]
    seen_traceback = False
    fallback = None
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            seen_traceback = True
            continue
        if not seen_traceback:
            continue
        stated = _exception_at(lines, index)
        if stated is None:
            continue
        if not any(pointer in stated for pointer in _POINTERS):
            return _shorten(stated)
        fallback = fallback or stated
    if fallback is not None:
        return _shorten(fallback)
    last = [line for line in lines if line.strip()]
    return _shorten(last[-1]) if last else None


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_CAUSE_CHARS else text[:MAX_CAUSE_CHARS - 1] + "…"


def engine_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """vLLM's environment. Its CPU build pins its threads to the first core(s) of the machine by
    default (VLLM_CPU_OMP_THREADS_BIND=auto), the same ones in every server: two servers on one
    node (a rolling update's old and new revision, two pods without a CPU manager) then share one
    core while the others idle, and a new revision cannot even start beside a busy one. Unpinned
    threads let the kernel spread them within the pod's CPU limit; an operator's own binding wins."""
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", **environ}


def run_server(command: list[str]) -> tuple[int, deque[str]]:
    """Run vLLM, its output passed through line by line; return its exit code and its last lines."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=engine_environment(os.environ))

    def hand_on(signum: int, _: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, hand_on)
    assert child.stdout is not None
    out = sys.__stdout__.buffer  # the process's own stdout: vLLM's lines as vLLM writes them
    for raw in child.stdout:
        out.write(raw)
        out.flush()
        tail.append(raw.decode(errors="replace"))
    return child.wait(), tail


def main(spec: ServeSpec, profile_args: list[str], fail: Callable[[str], int]) -> int:
    host = os.environ.get(SERVE_HOST_ENV, "0.0.0.0")
    port = os.environ.get(SERVE_PORT_ENV, "8080")
    try:
        python = vllm_python()
        check_device(spec)
    except EngineUnavailable as exc:
        return fail(str(exc))
    try:
        model_dir = resolve_model_dir(spec)
    except Exception as exc:
        return fail(f"cannot get the model {spec.model_uri or spec.model_reference}: {type(exc).__name__}: {exc}")
    command = server_command(python, model_dir, spec, host, port, profile_args)
    logging.getLogger("mlops.model_server").info("starting vLLM's OpenAI server", extra={
        "engine": "vllm", "device": "cuda" if spec.use_gpu else "cpu", "model": str(model_dir),
        "servedModelName": command[command.index("--served-model-name") + 1], "command": command})
    code, tail = run_server(command)
    if code < 0:  # ended by a signal, as a shell reports it
        return 128 - code
    if code > 0:
        cause = root_cause(tail)
        return fail(f"vLLM exited with code {code}" + (f": {cause}" if cause else ""))
    return 0


if __name__ == "__main__":
    sys.exit("run through script/serve.py")
