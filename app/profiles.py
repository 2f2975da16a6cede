"""Model profiles: what a profile name means (handler, images, resources, GPU, hyperparameters).

`model_profiles.yaml` is validated at start-up; a bad file stops the service with a message
naming the profile and the field.
"""

import json
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)


class ProfileError(Exception):
    """The profiles file cannot be used; the message names the profile and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "250m", "memory": "512Mi"})
    limits: dict[str, str] = Field(default_factory=lambda: {"cpu": "2", "memory": "4Gi"})

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities_as_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: str(quantity) for key, quantity in value.items()}
        return value


class Toleration(_Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class GpuSettings(_Strict):
    resource_name: str = "nvidia.com/gpu"
    count: int = Field(default=1, ge=1)
    runtime_class_name: str | None = "nvidia"
    tolerations: tuple[Toleration, ...] = (Toleration(key="nvidia.com/gpu", effect="NoSchedule"),)
    node_selector: dict[str, str] = Field(default_factory=dict)


class TrainerSettings(_Strict):
    image: str
    # Images a request's `trainerImage` may name: shell-style patterns (fnmatch).
    allowed_images: tuple[str, ...] = ()
    resources: Resources = Resources()
    backoff_limit: int = Field(default=0, ge=0)
    active_deadline_seconds: int = Field(default=6 * 3600, ge=1)
    ttl_seconds_after_finished: int = Field(default=7 * 24 * 3600, ge=0)

    def allows_image(self, image: str) -> bool:
        return image == self.image or any(fnmatchcase(image, p) for p in self.allowed_images)


class CanaryAutoAbort(_Strict):
    """A canary asked to abort by itself does so when, over the last window_seconds and once it
    has answered min_requests, its share of 5xx answers or its p99 latency goes above these."""

    max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    max_p99_seconds: float = Field(default=1.0, gt=0)
    window_seconds: float = Field(default=60.0, ge=5, le=3600)
    min_requests: int = Field(default=20, ge=1)


class InferenceSettings(_Strict):
    # The image of pods with a GPU (useGpu), and of every pod unless cpu_image is set.
    image: str
    # The image of pods without a GPU, where that must differ: vLLM's CUDA build cannot run without
    # one, so a language model on a CPU node needs an image with vLLM's CPU build.
    cpu_image: str | None = None
    replicas: int = Field(default=1, ge=1, le=64)
    port: int = Field(default=8080, ge=1, le=65535)
    resources: Resources = Resources()
    # Readiness probe path of the model server (vLLM answers /health once the weights are loaded).
    readiness_path: str = "/ready"
    # Other profiles whose training runs this profile may deploy (its own always).
    accepts_runs_from: tuple[str, ...] = ()
    # How long the proxy waits for the model server before answering 504.
    predict_timeout_seconds: float = Field(default=30.0, gt=0)
    # Largest predict request the proxy forwards, in bytes, and most rows the server accepts.
    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_rows: int = Field(default=10_000, ge=1)
    # The thresholds of a canary's autoAbort, where the request leaves them out.
    canary_auto_abort: CanaryAutoAbort = CanaryAutoAbort()


# Arguments script/llm_server.py gives vLLM itself; a profile's extra_args may not repeat them.
VLLM_RESERVED_ARGS = ("--model", "--served-model-name", "--host", "--port", "--shutdown-timeout")


def _memory_limit_bytes(quantity: str) -> int | None:
    """A container's memory limit in bytes, for the common forms ("32Gi", "4G", "1073741824");
    None for the rarer ones (kubernetes-validate checks the quantity itself). pydantic's ByteSize
    spells the binary units "GiB" where Kubernetes writes "Gi". (kubernetes.utils.parse_quantity
    knows them all but its import adds about a second to every API start.)"""
    spelled = quantity + "B" if quantity.endswith(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")) else quantity
    try:
        return int(TypeAdapter(ByteSize).validate_python(spelled))
    except ValidationError:
        return None


class VllmSettings(_Strict):
    """Arguments of vLLM's OpenAI server, the same on GPU and CPU nodes but for how memory is sized."""

    max_model_len: int = Field(default=4096, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1, le=16)
    dtype: Literal["auto", "half", "float16", "bfloat16", "float32"] = "auto"
    # Requests the engine batches at once (vLLM's default when unset).
    max_num_seqs: int | None = Field(default=None, ge=1)
    # Skip torch.compile (and CUDA graphs): the server is up in seconds instead of a minute or more,
    # and generates more slowly.
    enforce_eager: bool = False
    # GPU nodes: the share of each GPU's memory vLLM takes for weights, activations and KV cache.
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # CPU nodes: the KV cache's size ("4GiB", "512MiB"). Without it vLLM's CPU build takes
    # gpu_memory_utilization of the whole host's memory, whatever the pod's limit says.
    cpu_kv_cache_memory: ByteSize = Field(default=ByteSize(4 * 2**30), gt=0)
    extra_args: tuple[str, ...] = ()

    @field_validator("extra_args")
    @classmethod
    def _no_reserved_args(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            if arg.split("=", 1)[0] in VLLM_RESERVED_ARGS:
                raise ValueError(f"{arg.split('=', 1)[0]} is set from the deployment itself "
                                 f"(reserved: {', '.join(VLLM_RESERVED_ARGS)})")
        return value

    def cli_args(self, use_gpu: bool, max_new_tokens: int) -> list[str]:
        """The server's arguments from this profile, after the ones llm_server.py sets."""
        args = [
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            # The default and the largest number of tokens a request generates.
            "--override-generation-config", json.dumps({"max_new_tokens": max_new_tokens}),
        ]
        if self.max_num_seqs is not None:
            args += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if use_gpu:
            args += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        else:
            args += ["--kv-cache-memory-bytes", str(int(self.cpu_kv_cache_memory))]
        return [*args, *self.extra_args]


class ModelCache(_Strict):
    """Where weights are kept so a restarted pod does not download them again."""

    claim_name: str | None = "mlops-model-cache"  # a PersistentVolumeClaim; None: an emptyDir
    mount_path: str = "/models"


class SecretKey(_Strict):
    """A key of a Secret, read by reference (secretKeyRef); locally, the API's environment variable named `key`."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class LlmSettings(_Strict):
    vllm: VllmSettings = VllmSettings()
    # /dev/shm for vLLM's workers (tensor parallelism talks through it).
    shm_size: str = "2Gi"
    model_cache: ModelCache = ModelCache()
    # Base models (training's initialModelFilePath) and deploy-time modelReference values the
    # profile allows: shell-style patterns, e.g. "/models/*" or "Qwen/*".
    allowed_model_references: tuple[str, ...] = ()
    # The default and largest number of tokens one request generates.
    max_new_tokens: int = Field(default=256, ge=1)
    # QLoRA: load the base model in 4 bits when training with useGpu (needs bitsandbytes).
    qlora_on_gpu: bool = True
    # Gated Hugging Face models: HF_TOKEN comes from this Secret (optional: pods start without it).
    hf_token_secret: SecretKey | None = SecretKey(name="mlops-hf-token", key="HF_TOKEN")

    def allows_reference(self, reference: str) -> bool:
        return any(fnmatchcase(reference, pattern) for pattern in self.allowed_model_references)

    def engine_args(self, use_gpu: bool) -> list[str]:
        return self.vllm.cli_args(use_gpu, self.max_new_tokens)


class Hyperparameter(_Strict):
    type: Literal["int", "float", "bool", "str"]
    default: int | float | bool | str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _default_fits(self) -> "Hyperparameter":
        problem = self.check(self.default)
        if problem:
            raise ValueError(f"default {self.default!r}: {problem}")
        return self

    def check(self, value: Any) -> str | None:
        """Return why `value` is not acceptable, or None when it is."""
        if self.type == "bool":
            return None if isinstance(value, bool) else "must be a boolean"
        if self.type == "str":
            if not isinstance(value, str):
                return "must be a string"
            if self.choices and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a{'n integer' if self.type == 'int' else ' number'}"
        if self.type == "int" and isinstance(value, float) and not value.is_integer():
            return "must be an integer"
        if self.min is not None and value < self.min:
            return f"must be at least {self.min:g}"
        if self.max is not None and value > self.max:
            return f"must be at most {self.max:g}"
        return None

    def coerce(self, value: Any) -> Any:
        return int(value) if self.type == "int" else float(value) if self.type == "float" else value


DatasetScheme = Literal["local", "file", "s3"]


class ModelProfile(_Strict):
    name: str = ""
    description: str = ""
    # models/ handler that trains and serves this family.
    handler: str
    kind: Literal["tabular", "llm"] = "tabular"
    # A profile may only train (no inference section) or only serve (no trainer section).
    trainer: TrainerSettings | None = None
    inference: InferenceSettings | None = None
    gpu: GpuSettings = GpuSettings()
    llm: LlmSettings | None = None
    dataset_schemes: tuple[DatasetScheme, ...] = ("local", "file", "s3")
    hyperparameters: dict[str, Hyperparameter] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _usable(self) -> "ModelProfile":
        if self.trainer is None and self.inference is None:
            raise ValueError("a profile needs a trainer or an inference section (or both)")
        if self.kind == "llm" and self.llm is None:
            raise ValueError("an llm profile needs an llm section")
        if self.llm is not None and self.inference is not None:
            limit = self.inference.resources.limits.get("memory")
            limit_bytes = _memory_limit_bytes(limit) if limit is not None else None
            kv_cache = self.llm.vllm.cpu_kv_cache_memory
            if limit_bytes is not None and kv_cache >= limit_bytes:
                raise ValueError(f"llm.vllm.cpu_kv_cache_memory ({kv_cache.human_readable()}) must be less than "
                                 f"inference.resources.limits.memory ({limit}): the weights need room too")
        return self

    def resolve_hyperparameters(self, given: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """Merge `given` over the defaults; return the result and (name, problem) pairs."""
        problems: list[tuple[str, str]] = []
        resolved = {name: spec.default for name, spec in self.hyperparameters.items()}
        for name, value in given.items():
            spec = self.hyperparameters.get(name)
            if spec is None:
                known = ", ".join(sorted(self.hyperparameters)) or "none"
                problems.append((name, f"is not a hyperparameter of profile '{self.name}' (known: {known})"))
                continue
            problem = spec.check(value)
            if problem:
                problems.append((name, problem))
            else:
                resolved[name] = spec.coerce(value)
        return resolved, problems


class ProfileFile(_Strict):
    profiles: dict[str, ModelProfile]

    @field_validator("profiles")
    @classmethod
    def _not_empty(cls, value: dict[str, ModelProfile]) -> dict[str, ModelProfile]:
        if not value:
            raise ValueError("at least one profile is required")
        return value


def load_profiles(path: Path, known_handlers: set[str] | None = None) -> dict[str, ModelProfile]:
    """Read and validate the profiles file; raise ProfileError naming the profile and field."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profiles file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ProfileError(f"profiles file {path} is not valid YAML: {exc}") from exc
    try:
        parsed = ProfileFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ProfileError(f"profiles file {path}: {where}: {first['msg']}") from exc
    profiles = {name: profile.model_copy(update={"name": name}) for name, profile in parsed.profiles.items()}
    if known_handlers is not None:
        for name, profile in profiles.items():
            if profile.handler not in known_handlers:
                raise ProfileError(
                    f"profiles file {path}: profiles.{name}.handler: unknown handler "
                    f"'{profile.handler}' (known: {', '.join(sorted(known_handlers))})"
                )
    return profiles
