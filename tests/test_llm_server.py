"""script/llm_server.py without starting vLLM: the command line, which Python runs vLLM, the device
check, and the cause of a failure read from vLLM's output (excerpts of real runs)."""

import sys
from pathlib import Path

import pytest

from models.spec import VLLM_PYTHON_ENV, ServeSpec
from script import llm_server

SPEC = ServeSpec(task_id="chat-task", model_id="chat-model", model_reference="/models/m", model_profile="llm_chat",
                 handler="llm_chat", served_model_name="chat-model")

# A model file vLLM's worker process cannot read: the root cause is the worker's, two processes away.
# Excerpts of vLLM's output when it failed: a model file its worker process cannot read (the root
# cause two processes away from the error that ends the run), and a configuration the API server
# refuses (pydantic states it on two lines, one with every architecture vLLM knows).
OUTPUT = Path(__file__).parent / "vllm_output"
WORKER_FAILURE = (OUTPUT / "worker_failure.log").read_text()
CONFIG_FAILURE = (OUTPUT / "config_failure.log").read_text()


def test_the_root_cause_is_the_first_error_that_does_not_point_elsewhere() -> None:
    assert llm_server.root_cause(WORKER_FAILURE.splitlines()) == (
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: invalid header length")


def test_a_two_line_error_is_kept_whole_and_a_long_one_cut_short() -> None:
    cause = llm_server.root_cause(CONFIG_FAILURE.splitlines())
    assert cause is not None and cause.startswith(
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig Value error, Model "
        "architectures ['MysteryForCausalLM'] are not supported for now.")
    assert len(cause) == llm_server.MAX_CAUSE_CHARS and cause.endswith("…")
    assert "OSError" not in cause  # a warning that merely mentions an error is no cause


def test_without_a_traceback_the_last_line_is_the_cause() -> None:
    assert llm_server.root_cause(["starting", "killed by the out-of-memory killer", ""]) == (
        "killed by the out-of-memory killer")
    assert llm_server.root_cause([]) is None


def test_the_command_line_is_vllms_openai_server_with_the_profiles_arguments_last() -> None:
    command = llm_server.server_command("/opt/vllm/bin/python", Path("/models/cache/run"), SPEC, "0.0.0.0", "8080",
                                        ["--max-model-len", "4096", "--enforce-eager"])
    assert command == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server",
                       "--model", "/models/cache/run", "--served-model-name", "chat-model",
                       "--host", "0.0.0.0", "--port", "8080", "--disable-uvicorn-access-log",
                       # streams in flight finish when the server is told to stop (a rolling update)
                       "--shutdown-timeout", "300",
                       "--max-model-len", "4096", "--enforce-eager"]


def test_vllms_python_is_the_setting_else_this_python_with_vllm_else_the_projects_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(VLLM_PYTHON_ENV, "/opt/vllm/bin/python")
    assert llm_server.vllm_python() == "/opt/vllm/bin/python"
    monkeypatch.delenv(VLLM_PYTHON_ENV)
    monkeypatch.setattr(llm_server.importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    assert llm_server.vllm_python() == sys.executable
    monkeypatch.setattr(llm_server.importlib.util, "find_spec", lambda name: None)
    local = tmp_path / ".venv-vllm" / "bin" / "python"
    monkeypatch.setattr(llm_server, "LOCAL_VLLM_PYTHON", local)
    with pytest.raises(llm_server.EngineUnavailable, match="make vllm-env"):
        llm_server.vllm_python()
    local.parent.mkdir(parents=True)
    local.touch()
    assert llm_server.vllm_python() == str(local)


def test_a_gpu_deployment_without_a_visible_gpu_stops_instead_of_running_the_cpu_build(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    llm_server.check_device(SPEC)  # useGpu false: nothing to check
    with pytest.raises(llm_server.EngineUnavailable, match="useGpu is true but no CUDA device"):
        llm_server.check_device(SPEC.model_copy(update={"use_gpu": True}))


def test_vllms_threads_are_not_pinned_to_the_first_cores_unless_the_operator_says() -> None:
    assert llm_server.engine_environment({"PATH": "/bin"}) == {"PATH": "/bin", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert llm_server.engine_environment({"VLLM_CPU_OMP_THREADS_BIND": "0-3"})["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"
