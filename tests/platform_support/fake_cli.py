"""A recording stand-in for kubectl, docker, k3s and sudo, for testing the platform scripts.

Each of those commands on the test's PATH is a two-line wrapper that runs this file with the
tool's name first. Every call appends one JSON line to $FAKE_CLUSTER_DIR/calls.jsonl: the tool,
its argv, what it read on stdin, and its exit code. A small state file (namespaces, objects,
built images) makes the answers plausible: `kubectl get secret X --ignore-not-found -o name`
prints nothing until a `kubectl create` made X, `kubectl apply -k` renders the overlay with the
real kubectl ($FAKE_REAL_KUBECTL) and reports each object as created, configured or unchanged.
`kubectl get --raw` through the API server's proxy to the Service prometheus answers a fixed
/federate text, or forwards to a real Prometheus at $FAKE_PROMETHEUS_URL.
Anything this stand-in does not know exits 99, so a test notices an unexpected command.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# yaml and subprocess are imported where needed: most calls need neither, and every call is a
# new process, so start-up time is what the tests wait for.

UNSUPPORTED = 99

# kubectl resource names (plural, short) -> the kind, lower case.
KIND_ALIASES = {
    "namespace": "namespace", "namespaces": "namespace", "ns": "namespace",
    "secret": "secret", "secrets": "secret",
    "configmap": "configmap", "configmaps": "configmap", "cm": "configmap",
    "service": "service", "services": "service", "svc": "service",
    "serviceaccount": "serviceaccount", "serviceaccounts": "serviceaccount", "sa": "serviceaccount",
    "role": "role", "roles": "role",
    "rolebinding": "rolebinding", "rolebindings": "rolebinding",
    "deployment": "deployment", "deployments": "deployment", "deploy": "deployment",
    "statefulset": "statefulset", "statefulsets": "statefulset", "sts": "statefulset",
    "job": "job", "jobs": "job",
    "pod": "pod", "pods": "pod", "po": "pod",
    "persistentvolumeclaim": "persistentvolumeclaim", "persistentvolumeclaims": "persistentvolumeclaim",
    "pvc": "persistentvolumeclaim",
    "networkpolicy": "networkpolicy", "networkpolicies": "networkpolicy", "netpol": "networkpolicy",
    "daemonset": "daemonset", "daemonsets": "daemonset", "ds": "daemonset",
    "clusterrole": "clusterrole", "clusterroles": "clusterrole",
    "clusterrolebinding": "clusterrolebinding", "clusterrolebindings": "clusterrolebinding",
}
# Kinds without a namespace; the state keeps them under the namespace "".
CLUSTER_SCOPED = {"clusterrole", "clusterrolebinding"}

# What /federate answers without a real Prometheus: the recording rules monitor_all.sh reads, for
# a deployment with traffic and one without (NaN latency, as Prometheus writes it).
FEDERATE_VALUES = {
    "mlops:deployment_replicas:desired": {"deploy-house": "1", "deploy-idle": "2"},
    "mlops:deployment_replicas:ready": {"deploy-house": "1", "deploy-idle": "0"},
    "mlops:predict_errors_4xx:rate5m": {"deploy-house": "0.25"},
    "mlops:predict_errors_5xx:rate5m": {"deploy-house": "0"},
    "mlops:predict_latency_seconds:p99_5m": {"deploy-house": "0.0042", "deploy-idle": "NaN"},
    "mlops:predict_requests:rate5m": {"deploy-house": "12.5"},
}
FEDERATE = "".join(
    f"# TYPE {name} untyped\n" + "".join(
        f'{name}{{instance="",job="",model_id="{task.split("-")[1]}-v1",namespace="mlops-test",task_id="{task}"}} '
        f"{value} 1700000000000\n" for task, value in series.items())
    for name, series in FEDERATE_VALUES.items())
PROMETHEUS_PROXY = "/services/http:prometheus:9090/proxy/"

# kubectl flags that take a value (as `--flag value` or `--flag=value`).
VALUE_FLAGS = {
    "-n": "namespace", "--namespace": "namespace",
    "-o": "output", "--output": "output",
    "-f": "filename", "--filename": "filename",
    "-k": "kustomize", "--kustomize": "kustomize",
    "-l": "selector", "--selector": "selector",
    "--timeout": "timeout", "--for": "for", "--tail": "tail",
    "--field-selector": "field-selector", "--sort-by": "sort-by", "--raw": "raw",
}


class Result:
    def __init__(self, stdout: str | bytes = "", stderr: str = "", rc: int = 0) -> None:
        self.stdout, self.stderr, self.rc = stdout, stderr, rc


def fail(message: str, rc: int = 1) -> Result:
    return Result(stderr=message + "\n", rc=rc)


def unsupported(tool: str, argv: list[str]) -> Result:
    return fail(f"fake {tool}: unsupported call: {' '.join(argv)}", UNSUPPORTED)


# ----------------------------------------------------------------------------- state


class State:
    def __init__(self, data: dict[str, Any]) -> None:
        self.namespaces: dict[str, dict[str, Any]] = data.get("namespaces", {})
        self.objects: dict[str, dict[str, Any]] = data.get("objects", {})
        self.images: dict[str, str] = data.get("images", {})
        self.imported: list[str] = data.get("imported", [])

    def dump(self) -> dict[str, Any]:
        return {"namespaces": self.namespaces, "objects": self.objects, "images": self.images,
                "imported": self.imported}

    @staticmethod
    def key(namespace: str, kind: str, name: str) -> str:
        return f"{'' if kind in CLUSTER_SCOPED else namespace}/{kind}/{name}"

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        if kind == "namespace":
            return {"metadata": {"name": name, "labels": self.namespaces[name]}} if name in self.namespaces else None
        return self.objects.get(self.key(namespace, kind, name))

    def put(self, namespace: str, kind: str, doc: dict[str, Any]) -> None:
        self.objects[self.key(namespace, kind, doc["metadata"]["name"])] = doc

    def in_namespace(self, namespace: str, kind: str) -> list[dict[str, Any]]:
        prefix = f"{'' if kind in CLUSTER_SCOPED else namespace}/{kind}/"
        return [doc for key, doc in sorted(self.objects.items()) if key.startswith(prefix)]


@contextmanager
def locked_state(directory: Path):
    """The state, read and written under an exclusive lock (pipelines run two fakes at once)."""
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / "state.json"
        state = State(json.loads(path.read_text()) if path.exists() else {})
        yield state
        path.write_text(json.dumps(state.dump(), indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- kubectl


def parse_kubectl(argv: list[str]) -> tuple[list[str], dict[str, str], set[str]]:
    positional: list[str] = []
    values: dict[str, str] = {}
    switches: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, _, inline = arg.partition("=")
        if name in VALUE_FLAGS:
            if inline or "=" in arg:
                values[VALUE_FLAGS[name]] = inline
            else:
                i += 1
                values[VALUE_FLAGS[name]] = argv[i]
        elif arg.startswith("-"):
            switches.add(arg)
        else:
            positional.append(arg)
        i += 1
    return positional, values, switches


def jsonpath(doc: dict[str, Any], expression: str) -> str:
    """Only the form the scripts use: {.a.b.c\\.d/e}, a path of map keys."""
    if not (expression.startswith("{.") and expression.endswith("}")):
        raise ValueError(expression)
    keys = [key.replace("\0", ".") for key in expression[2:-1].replace("\\.", "\0").split(".")]
    value: Any = doc
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def matches(labels: dict[str, str], selector: str) -> bool:
    return all(labels.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(",")))


def kubectl_get(state: State, positional: list[str], values: dict[str, str], switches: set[str]) -> Result:
    namespace = values.get("namespace", "default")
    output = values.get("output", "")
    kinds = positional[0].split(",")
    if kinds == ["nodes"]:
        return Result("k3s-gpu-node   2\nk3s-cpu-node   <none>\n")
    if kinds == ["pods"] and "--all-namespaces" in switches:
        # Node|GPU limits per container: two GPU containers on the GPU node (one asks for 1,
        # one for nothing), and an unscheduled pod asking for a GPU that must not count.
        return Result("k3s-gpu-node|1 \nk3s-gpu-node| \nk3s-cpu-node| \n|1 \n")
    if kinds == ["events"]:
        lines = ["LAST SEEN   TYPE      REASON             OBJECT            MESSAGE"]
        lines += [f"{i}m          Warning   FailedScheduling   pod/trainer-{i:02d}   0/2 nodes are available: "
                  "1 Insufficient nvidia.com/gpu" for i in range(12)]
        return Result("\n".join(lines) + "\n")
    if len(positional) == 2:
        kind = KIND_ALIASES[kinds[0]]
        obj = state.get(namespace, kind, positional[1])
        if obj is None:
            if "--ignore-not-found" in switches:
                return Result()
            return fail(f'Error from server (NotFound): {positional[0]} "{positional[1]}" not found')
        if output == "name":
            return Result(f"{kind}/{positional[1]}\n")
        if output.startswith("jsonpath="):
            return Result(jsonpath(obj, output[len("jsonpath="):]))
        return Result(f"NAME\n{positional[1]}\n")
    if len(positional) == 1:
        rows: list[str] = []
        selector = values.get("selector")
        for alias in kinds:
            kind = KIND_ALIASES[alias]
            if kind == "pod":
                # One running pod per workload object is plausible enough for the monitor.
                owners = state.in_namespace(namespace, "deployment") + state.in_namespace(namespace, "statefulset")
                rows += [f"{owner['metadata']['name']}-0   1/1   Running   0   5m" for owner in owners]
            else:
                rows += [f"{kind}/{obj['metadata']['name']}" for obj in state.in_namespace(namespace, kind)
                         if selector is None or matches(obj["metadata"].get("labels", {}), selector)]
        if not rows:
            return Result(stderr=f"No resources found in {namespace} namespace.\n")
        if output == "name":
            return Result("\n".join(rows) + "\n")
        return Result("NAME\n" + "\n".join(rows) + "\n")
    return Result(rc=UNSUPPORTED)


def kubectl_create(state: State, values: dict[str, str], stdin: str) -> Result:
    import yaml

    if values.get("filename") != "-":
        return Result(rc=UNSUPPORTED)
    doc = yaml.safe_load(stdin)
    kind, name = doc["kind"].lower(), doc["metadata"]["name"]
    if kind == "namespace":
        if name in state.namespaces:
            return fail(f'Error from server (AlreadyExists): namespaces "{name}" already exists')
        state.namespaces[name] = doc["metadata"].get("labels", {})
        return Result(f"namespace/{name} created\n")
    namespace = values.get("namespace", "default")
    if namespace not in state.namespaces:
        return fail(f'Error from server (NotFound): namespaces "{namespace}" not found')
    if state.get(namespace, kind, name) is not None:
        return fail(f'Error from server (AlreadyExists): {kind}s "{name}" already exists')
    state.put(namespace, kind, doc)
    return Result(f"{kind}/{name} created\n")


def render(directory: str) -> list[dict[str, Any]]:
    import subprocess

    import yaml

    real = os.environ["FAKE_REAL_KUBECTL"]
    text = subprocess.run([real, "kustomize", directory], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kubectl_apply(state: State, values: dict[str, str], record: dict[str, Any]) -> Result:
    directory = values.get("kustomize")
    if not directory:
        return Result(rc=UNSUPPORTED)
    record["overlay"] = (Path(directory) / "kustomization.yaml").read_text()
    docs = render(directory)
    lines, applied = [], []
    for doc in docs:
        kind, name = doc["kind"].lower(), doc["metadata"]["name"]
        namespace = doc["metadata"].get("namespace")
        if kind == "namespace":
            labels = doc["metadata"].get("labels", {})
            result = "created" if name not in state.namespaces else (
                "unchanged" if state.namespaces[name] == labels else "configured")
            state.namespaces[name] = labels
            applied.append({"kind": doc["kind"], "name": name, "namespace": None, "result": result})
            lines.append(f"namespace/{name} {result}")
            continue
        if kind in CLUSTER_SCOPED:
            namespace = ""
        elif namespace not in state.namespaces:
            return fail(f'Error from server (NotFound): namespaces "{namespace}" not found')
        old = state.get(namespace, kind, name)
        result = "created" if old is None else ("unchanged" if old == doc else "configured")
        state.put(namespace, kind, doc)
        if kind == "statefulset":
            # What the StatefulSet controller would do: one PVC per claim template, labels copied.
            for template in doc["spec"].get("volumeClaimTemplates", []):
                claim = {"metadata": {"name": f"{template['metadata']['name']}-{name}-0",
                                      "labels": template["metadata"].get("labels", {})}}
                if state.get(namespace, "persistentvolumeclaim", claim["metadata"]["name"]) is None:
                    state.put(namespace, "persistentvolumeclaim", claim)
        applied.append({"kind": doc["kind"], "name": name, "namespace": namespace, "result": result})
        lines.append(f"{kind}/{name} {result}")
    record["applied"] = applied
    record["rendered"] = docs
    return Result("\n".join(lines) + "\n")


def kubectl_delete(state: State, positional: list[str], values: dict[str, str], switches: set[str]) -> Result:
    namespace = values.get("namespace", "default")
    kinds = [KIND_ALIASES[k] for k in positional[0].split(",")]
    lines = []
    if kinds == ["namespace"]:
        name = positional[1]
        if name not in state.namespaces:
            return Result() if "--ignore-not-found" in switches else fail(f'namespaces "{name}" not found')
        del state.namespaces[name]
        for key in [k for k in state.objects if k.startswith(f"{name}/")]:
            del state.objects[key]
        return Result(f'namespace "{name}" deleted\n')
    if len(positional) == 2:
        key = State.key(namespace, kinds[0], positional[1])
        if key not in state.objects:
            if "--ignore-not-found" in switches:
                return Result()
            return fail(f'{positional[0]} "{positional[1]}" not found')
        del state.objects[key]
        return Result(f'{kinds[0]} "{positional[1]}" deleted\n')
    selector = values.get("selector")
    if not selector:
        return Result(rc=UNSUPPORTED)
    for kind in kinds:
        for obj in state.in_namespace(namespace, kind):
            if matches(obj["metadata"].get("labels", {}), selector):
                del state.objects[State.key(namespace, kind, obj["metadata"]["name"])]
                lines.append(f'{kind} "{obj["metadata"]["name"]}" deleted')
    return Result("\n".join(lines) + "\n" if lines else "", "" if lines else "No resources found\n")


def kubectl_get_raw(state: State, path: str) -> Result:
    """Only the API server's service proxy to Prometheus (monitor_all.sh)."""
    prefix = "/api/v1/namespaces/"
    if not path.startswith(prefix) or PROMETHEUS_PROXY not in path:
        return Result(rc=UNSUPPORTED)
    namespace, rest = path[len(prefix):].split(PROMETHEUS_PROXY, 1)
    if state.get(namespace, "service", "prometheus") is None:
        return fail('Error from server (NotFound): services "prometheus" not found')
    url = os.environ.get("FAKE_PROMETHEUS_URL")
    if not url:
        return Result(FEDERATE if rest.startswith("federate?") else "")
    import urllib.request

    with urllib.request.urlopen(f"{url}/{rest}", timeout=10) as answer:
        return Result(answer.read().decode())


def kubectl(state: State, argv: list[str], stdin: str, record: dict[str, Any]) -> Result:
    positional, values, switches = parse_kubectl(argv)
    if positional == ["get"] and "raw" in values:
        return kubectl_get_raw(state, values["raw"])
    if not positional:
        return unsupported("kubectl", argv)
    verb, rest = positional[0], positional[1:]
    namespace = values.get("namespace", "default")
    if verb == "config" and rest == ["current-context"]:
        return Result("fake-k3s\n")
    if verb == "kustomize" and len(rest) == 1:
        import subprocess

        real = os.environ["FAKE_REAL_KUBECTL"]
        done = subprocess.run([real, "kustomize", rest[0]], capture_output=True, text=True)
        return Result(done.stdout, done.stderr, done.returncode)
    if verb == "get" and rest:
        result = kubectl_get(state, rest, values, switches)
    elif verb == "create":
        result = kubectl_create(state, values, stdin)
    elif verb == "apply":
        result = kubectl_apply(state, values, record)
    elif verb == "delete" and rest:
        result = kubectl_delete(state, rest, values, switches)
    elif verb == "rollout" and rest[:1] == ["status"] and len(rest) == 2 and "timeout" in values:
        kind, _, name = rest[1].partition("/")
        if rest[1] in os.environ.get("FAKE_ROLLOUT_FAIL", "").split(","):
            return fail(f'error: timed out waiting for the condition on {kind}s/{name}')
        if state.get(namespace, KIND_ALIASES[kind], name) is None:
            return fail(f'Error from server (NotFound): {kind}s "{name}" not found')
        result = Result(f'{kind} "{name}" successfully rolled out\n')
    elif verb == "wait" and values.get("for") == "condition=complete" and len(rest) == 1 and "timeout" in values:
        kind, _, name = rest[0].partition("/")
        if state.get(namespace, KIND_ALIASES[kind], name) is None:
            return fail(f'Error from server (NotFound): {kind}s "{name}" not found')
        result = Result(f"{kind}.batch/{name} condition met\n")
    elif verb == "logs" and rest == ["deployment/fastapi-mlops-api"] and "tail" in values:
        if state.get(namespace, "deployment", "fastapi-mlops-api") is None:
            return fail('error: deployments.apps "fastapi-mlops-api" not found')
        result = Result("INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)\n")
    else:
        return unsupported("kubectl", argv)
    return result if result.rc != UNSUPPORTED else unsupported("kubectl", argv)


# ----------------------------------------------------------------------------- docker, k3s


def image_id(ref: str) -> str:
    salt = os.environ.get("FAKE_IMAGE_SALT", "")
    return "sha256:" + hashlib.sha256((salt + ref).encode()).hexdigest()


def docker(state: State, argv: list[str]) -> Result:
    if argv[:1] == ["build"] and "--tag" in argv:
        tag = argv[argv.index("--tag") + 1]
        state.images[tag] = image_id(tag)
        return Result(f"Successfully built {state.images[tag][7:19]}\nSuccessfully tagged {tag}\n")
    if argv[:4] == ["image", "inspect", "--format", "{{.Id}}"] and len(argv) == 5:
        if argv[4] not in state.images:
            return fail(f"Error response from daemon: No such image: {argv[4]}")
        return Result(state.images[argv[4]] + "\n")
    if argv[:1] == ["save"] and len(argv) > 1:
        missing = [ref for ref in argv[1:] if ref not in state.images]
        if missing:
            return fail(f"Error response from daemon: reference does not exist: {missing[0]}")
        return Result(("FAKE-IMAGE-ARCHIVE " + " ".join(argv[1:]) + "\n").encode())
    if argv[:1] == ["push"] and len(argv) == 2:
        if argv[1] not in state.images:
            return fail(f"An image does not exist locally with the tag: {argv[1]}")
        return Result(f"latest: digest: {state.images[argv[1]]} size: 1234\n")
    return unsupported("docker", argv)


def k3s(state: State, argv: list[str], stdin: str) -> Result:
    if argv == ["ctr", "images", "import", "-"]:
        if not stdin.startswith("FAKE-IMAGE-ARCHIVE "):
            return fail("ctr: unrecognized image format")
        refs = stdin.split()[1:]
        state.imported.extend(refs)
        return Result("".join(f"unpacking {ref} (sha256:0000)...done\n" for ref in refs))
    return unsupported("k3s", argv)


# ----------------------------------------------------------------------------- entry point


def reads_stdin(tool: str, argv: list[str]) -> bool:
    if tool == "kubectl":
        return "--filename=-" in argv or (any(a in ("-f", "--filename") for a in argv) and "-" in argv)
    return tool == "k3s" and argv[-1:] == ["-"]


def main() -> int:
    tool, argv = sys.argv[1], sys.argv[2:]
    directory = Path(os.environ["FAKE_CLUSTER_DIR"])
    # Read stdin before taking the lock: the writer of a pipe may be a fake waiting for it.
    stdin = sys.stdin.read() if reads_stdin(tool, argv) else None
    record: dict[str, Any] = {"tool": tool, "argv": argv, "stdin": stdin}
    with locked_state(directory) as state:
        if tool == "sudo":
            result = Result()
        elif tool == "kubectl":
            result = kubectl(state, argv, stdin or "", record)
        elif tool == "docker":
            result = docker(state, argv)
        elif tool == "k3s":
            result = k3s(state, argv, stdin or "")
        else:
            result = unsupported(tool, argv)
        record["rc"] = result.rc
        with open(directory / "calls.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
    if tool == "sudo":
        os.execvp(argv[0], argv)
    if isinstance(result.stdout, bytes):
        sys.stdout.buffer.write(result.stdout)
    else:
        sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
