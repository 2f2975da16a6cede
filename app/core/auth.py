"""Who may call what: bearer tokens with one of two roles, checked from memory.

Tokens come from MLOPS_API_TOKENS and/or a file (a mounted Secret), one entry per line or comma:
`<role>:<token>` or `<role>:sha256:<hex digest of the token>`. Only SHA-256 digests are kept in
memory, and a presented token is compared against every digest in constant time.

Roles: `predict` may only call the predict routes; `admin` may also train, deploy and delete.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.errors import Forbidden, Unauthorized


class Role(StrEnum):
    ADMIN = "admin"
    PREDICT = "predict"


class TokenConfigError(Exception):
    """The token configuration cannot be used; the message says which entry and why."""


@dataclass(frozen=True)
class TokenEntry:
    role: Role
    digest: bytes


# Routes a predict-only token may call: predict, and the model-serving routes under a task.
_PREDICT_PATH = re.compile(r"^/api/v1/inference/(?!deployments(/|$))[^/]+/(predict|v1/.*)$")
MIN_TOKEN_LENGTH = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_token_entries(text: str, source: str) -> list[TokenEntry]:
    entries = []
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        role_name, sep, secret = item.partition(":")
        if not sep or role_name.strip() not in Role.__members__.values():
            raise TokenConfigError(f"{source}: entry {number} must be '<admin|predict>:<token>'")
        secret = secret.strip()
        if secret.startswith("sha256:"):
            try:
                digest = bytes.fromhex(secret.removeprefix("sha256:"))
            except ValueError:
                raise TokenConfigError(f"{source}: entry {number}: sha256 digest is not hex") from None
            if len(digest) != 32:
                raise TokenConfigError(f"{source}: entry {number}: a sha256 digest has 64 hex characters")
        elif len(secret) < MIN_TOKEN_LENGTH:
            raise TokenConfigError(f"{source}: entry {number}: a token needs at least {MIN_TOKEN_LENGTH} characters")
        else:
            digest = _digest(secret)
        entries.append(TokenEntry(Role(role_name.strip()), digest))
    return entries


def load_token_entries(tokens: str | None, tokens_file: Path | None) -> list[TokenEntry]:
    entries = parse_token_entries(tokens, "MLOPS_API_TOKENS") if tokens else []
    if tokens_file is not None and tokens_file.exists():  # an optional Secret may be absent
        entries += parse_token_entries(tokens_file.read_text(), str(tokens_file))
    return entries


def required_role(path: str) -> Role | None:
    """The role a path needs; None for the open routes (health, docs)."""
    if not path.startswith("/api/v1/") and path != "/api/v1":
        return None
    return Role.PREDICT if _PREDICT_PATH.match(path) else Role.ADMIN


class Authenticator:
    def __init__(self, entries: list[TokenEntry], enabled: bool):
        self.entries = entries
        self.enabled = enabled

    def role_of(self, authorization: str | None) -> Role | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = _digest(token.strip())
        found: Role | None = None
        for entry in self.entries:  # no early exit: the time does not tell which entry matched
            if hmac.compare_digest(presented, entry.digest) and found is None:
                found = entry.role
        return found

    def describe(self) -> str:
        if not self.enabled:
            return "off (no tokens configured; anyone who reaches the port may call the API)"
        roles = sorted({entry.role.value for entry in self.entries})
        return f"on ({len(self.entries)} token(s), roles: {', '.join(roles)})"


    def authorize(self, needed: Role | None, authorization: str | None, method: str, path: str) -> None:
        """Raise Unauthorized (no valid token) or Forbidden (a role that may not call this route)."""
        if not self.enabled or needed is None:
            return
        role = self.role_of(authorization)
        if role is None:
            raise Unauthorized()
        if needed == Role.ADMIN and role != Role.ADMIN:
            raise Forbidden(f"this token has role '{role}', which may only call predict routes; "
                            f"{method} {path} needs role 'admin'")


class AuthRequired(TokenConfigError):
    """The Kubernetes runtime was asked to run without any token."""


def authenticator_from(
    tokens: str | None, tokens_file: Path | None, disabled: bool, on_cluster: bool
) -> Authenticator:
    entries = load_token_entries(tokens, tokens_file)
    if disabled:
        return Authenticator([], enabled=False)
    if not entries and on_cluster:
        raise AuthRequired(
            "the Kubernetes runtime needs API tokens: set MLOPS_API_TOKENS or MLOPS_AUTH_TOKENS_FILE "
            "('admin:<token>' entries), or MLOPS_AUTH_DISABLED=true to run without authentication"
        )
    return Authenticator(entries, enabled=bool(entries))
