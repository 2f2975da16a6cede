"""Where the API is and which token to send: an argument, else the environment (MLOPS_API_URL,
MLOPS_API_TOKEN), else the config file ($MLOPS_CONFIG, default ~/.config/mlops/config.yaml:
`apiUrl: ...` and `token: ...`), else the local API that `make run` starts."""

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_API_URL = "http://127.0.0.1:8000"
URL_ENV, TOKEN_ENV, CONFIG_ENV = "MLOPS_API_URL", "MLOPS_API_TOKEN", "MLOPS_CONFIG"


class ConfigError(Exception):
    """The config file cannot be read or is not a mapping."""


@dataclass(frozen=True)
class Connection:
    api_url: str
    token: str | None


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".config" / "mlops" / "config.yaml").expanduser()


def read_config(path: Path | None = None) -> dict[str, str]:
    path = path or config_path()
    if not path.exists():
        return {}
    try:
        found = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(found, dict):
        raise ConfigError(f"{path} must be a mapping with apiUrl and token")
    return {str(key): str(value) for key, value in found.items() if value is not None}


def resolve(api_url: str | None = None, token: str | None = None) -> Connection:
    url_given = api_url is not None or bool(os.environ.get(URL_ENV))
    token_given = token is not None or bool(os.environ.get(TOKEN_ENV))
    stored = {} if url_given and token_given else read_config()
    url = api_url or os.environ.get(URL_ENV) or stored.get("apiUrl") or DEFAULT_API_URL
    return Connection(url.rstrip("/"), token or os.environ.get(TOKEN_ENV) or stored.get("token") or None)
