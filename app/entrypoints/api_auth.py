"""Bearer tokens for the HTTP API: who may read, who may act.

Tokens come from the environment or from files (each file read once, when the API is built), are
compared in constant time and are never logged, echoed or shown by ``repr``. Read endpoints are
open unless a read token is configured; then the read, auditor and operator tokens may read.
Operator endpoints always need the operator token: without one configured they are disabled.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{16,4096}")
"""16 to 4096 printable ASCII characters, no spaces: what an HTTP header carries unaltered."""
TOKENS_STATE = "jobtrail_tokens"


class Role(StrEnum):
    READER = "reader"
    AUDITOR = "auditor"
    OPERATOR = "operator"


VARIABLES = {
    Role.READER: "JOBTRAIL_READ_TOKEN",
    Role.AUDITOR: "JOBTRAIL_AUDITOR_TOKEN",
    Role.OPERATOR: "JOBTRAIL_OPERATOR_TOKEN",
}


class TokenSettings(BaseSettings):
    """``JOBTRAIL_<ROLE>_TOKEN`` or ``JOBTRAIL_<ROLE>_TOKEN_FILE`` for each role (not both)."""

    model_config = SettingsConfigDict(env_prefix="JOBTRAIL_", extra="ignore")

    read_token: SecretStr | None = None
    read_token_file: Path | None = None
    auditor_token: SecretStr | None = None
    auditor_token_file: Path | None = None
    operator_token: SecretStr | None = None
    operator_token_file: Path | None = None


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps even the token's length out of the timing.
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, repr=False)
class Tokens:
    """The configured tokens by role, kept only as digests."""

    digests: Mapping[Role, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Tokens(configured={sorted(self.digests)})"

    @classmethod
    def of(
        cls, *, read: str | None = None, auditor: str | None = None, operator: str | None = None
    ) -> Tokens:
        """Tokens from plain values; raises ValueError for a malformed or reused token."""
        given = {Role.READER: read, Role.AUDITOR: auditor, Role.OPERATOR: operator}
        digests: dict[Role, bytes] = {}
        for role, token in given.items():
            if token is None:
                continue
            if not TOKEN_PATTERN.fullmatch(token):
                raise ValueError(
                    f"{VARIABLES[role]} must be 16-4096 printable ASCII characters without spaces"
                )
            digests[role] = _digest(token)
        if len(set(digests.values())) < len(digests):
            raise ValueError("the read, auditor and operator tokens must all differ")
        return cls(digests)

    @property
    def reads_open(self) -> bool:
        return Role.READER not in self.digests

    def role_of(self, presented: str) -> Role | None:
        """The role whose token was presented (every configured token is compared, always)."""
        given = _digest(presented)
        found = None
        for role, digest in self.digests.items():
            if hmac.compare_digest(given, digest):
                found = role
        return found


def _resolve(value: SecretStr | None, path: Path | None, variable: str) -> str | None:
    if value is not None and path is not None:
        raise ValueError(f"set {variable} or {variable}_FILE, not both")
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read {variable}_FILE {path}: {reason}") from None


def load_tokens(settings: TokenSettings | None = None) -> Tokens:
    """The tokens the environment configures (files are read now, once)."""
    s = settings if settings is not None else TokenSettings()
    return Tokens.of(
        read=_resolve(s.read_token, s.read_token_file, VARIABLES[Role.READER]),
        auditor=_resolve(s.auditor_token, s.auditor_token_file, VARIABLES[Role.AUDITOR]),
        operator=_resolve(s.operator_token, s.operator_token_file, VARIABLES[Role.OPERATOR]),
    )


def install_tokens(app: FastAPI, tokens: Tokens) -> None:
    """Make ``tokens`` the ones ``require_reader`` / ``require_operator`` check on ``app``."""
    setattr(app.state, TOKENS_STATE, tokens)


bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`: a read, auditor or operator token.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _tokens(request: Request) -> Tokens:
    tokens = getattr(request.app.state, TOKENS_STATE, None)
    return tokens if isinstance(tokens, Tokens) else Tokens()


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


async def require_reader(request: Request, credentials: Credentials) -> Role | None:
    """Let a read through: always when reads are open, else with any configured token."""
    tokens = _tokens(request)
    if tokens.reads_open:
        return None
    if credentials is None:
        raise _unauthorized("a bearer token is required to read")
    role = tokens.role_of(credentials.credentials)
    if role is None:
        raise _unauthorized("the bearer token is not valid")
    return role


async def require_operator(request: Request, credentials: Credentials) -> Role:
    """Let an operator action through only with the operator token (401 / 403 otherwise)."""
    tokens = _tokens(request)
    if Role.OPERATOR not in tokens.digests:
        raise HTTPException(403, "operator actions are disabled: no operator token is configured")
    if credentials is None:
        raise _unauthorized("an operator bearer token is required")
    role = tokens.role_of(credentials.credentials)
    if role is None:
        raise _unauthorized("the bearer token is not valid")
    if role is not Role.OPERATOR:
        raise HTTPException(403, f"the {role} token cannot act; an operator token is required")
    return role
