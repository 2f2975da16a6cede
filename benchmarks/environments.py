"""The peers' virtual environments: one per peer under benchmarks/.work/venvs/, made with pip from
pinned requirements, never in the project's .venv (their pins conflict with ours).

scikit-learn is pinned to the project's version so that every server loads the very same model.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import sklearn

PEER_REQUIREMENTS: dict[str, list[str]] = {
    "mlflow": ["mlflow==3.17.2", "skops==0.16.0"],
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1"],
    "kserve": ["kserve==0.21.0"],
    # benchmarks/proxy_clients.py: the HTTP clients a Python proxy could forward with.
    "clients": ["uvicorn[standard]==0.54.0", "pyreqwest==0.15.1", "aiohttp==3.14.5", "httpx==0.28.1",
                "aiosonic==1.3.3", "blacksheep==2.6.4"],
}
# Shown in the report beside each peer.
REPORTED_PACKAGES = ("mlflow", "mlserver", "mlserver-sklearn", "kserve", "scikit-learn", "numpy", "uvicorn",
                     "fastapi", "pandas", "pyreqwest", "aiohttp", "httpx", "aiosonic", "blacksheep", "httptools",
                     "uvloop")


@dataclass(frozen=True)
class PeerEnv:
    name: str
    root: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def bin(self, program: str) -> str:
        return str(self.root / "bin" / program)

    def activated(self) -> dict[str, str]:
        """The environment variables of an activated venv (`mlflow models serve` runs `uvicorn` from PATH)."""
        return {"VIRTUAL_ENV": str(self.root), "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def versions(self) -> dict[str, str]:
        frozen = subprocess.run([self.python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
        found = {}
        for line in frozen.stdout.splitlines():
            name, _, version = line.partition("==")
            if name.lower() in REPORTED_PACKAGES:
                found[name.lower()] = version
        return found


def requirements(name: str) -> list[str]:
    if name == "clients":  # serves no model
        return PEER_REQUIREMENTS[name]
    return [*PEER_REQUIREMENTS[name], f"scikit-learn=={sklearn.__version__}"]


def ensure(name: str, venvs: Path) -> PeerEnv:
    """The peer's environment, made (minutes, once) if missing or made from other pins."""
    env = PeerEnv(name, venvs / name)
    wanted = "\n".join(requirements(name))
    stamp = env.root / "bench-requirements.txt"
    if stamp.exists() and stamp.read_text() == wanted:
        return env
    print(f"  creating the {name} environment ({', '.join(requirements(name))}); this takes a few minutes",
          flush=True)
    # The same interpreter version as the project's (3.11), outside the project's venv.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(env.root)], check=True)
    log = env.root / "pip.log"
    with log.open("w") as out:
        done = subprocess.run([env.python, "-m", "pip", "install", "--disable-pip-version-check", *requirements(name)],
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {name}'s requirements; see {log}")
    stamp.write_text(wanted)
    return env
