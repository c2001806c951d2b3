"""Bearer-token authentication: every token is bound to exactly one tenant, or is an operator's.

Two sources, usable together:
- a token file that holds only SHA-256 hashes, one token a line:
      sha256:<64 hex> <tenant uuid | operator> [label]
  Lines starting with # are comments. The file is re-read when it changes, so tokens can be
  added or revoked without a restart. Create an entry with `aether auth hash-token`.
- OIDC JWTs, verified against the issuer's JWKS (signature, issuer, audience, expiry and
  not-before all checked), carrying the tenant in a claim (default `tenant_id`).

Operators (token-file entries with `operator`) may read /metrics, the Command Center and every
tenant's stream, but never write CRM data. Nothing here logs or stores a token in clear.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt

OPERATOR = "operator"


class AuthError(Exception):
    """401: no credentials or bad credentials."""


@dataclass(frozen=True)
class Principal:
    subject: str  # a label or the JWT `sub`, for logs; never the token
    tenant_id: uuid.UUID | None  # None for operators
    operator: bool = False


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._mtime: float | None = None
        self._entries: dict[str, Principal] = {}
        self._lock = threading.Lock()

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        entries: dict[str, Principal] = {}
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith("sha256:") or len(parts[0]) != 71:
                raise ValueError(f"{self.path}:{n}: expected 'sha256:<64 hex> <tenant uuid|operator> [label]'")
            label = parts[2] if len(parts) > 2 else f"line {n}"
            if parts[1] == OPERATOR:
                entries[parts[0].lower()] = Principal(label, None, operator=True)
            else:
                entries[parts[0].lower()] = Principal(label, uuid.UUID(parts[1]))
        self._entries, self._mtime = entries, mtime

    def verify(self, token: str) -> Principal:
        with self._lock:
            self._load()
            principal = self._entries.get(hash_token(token))
        if principal is None:
            raise AuthError("unknown token")
        return principal


class OidcVerifier:
    """JWTs from one issuer. The JWKS is fetched from a URL (or read from a file:// path) and
    cached; an unknown `kid` triggers one refresh, at most every 30 s."""

    def __init__(self, issuer: str, audience: str, jwks_url: str, tenant_claim: str = "tenant_id",
                 algorithms: tuple[str, ...] = ("RS256", "ES256")):
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.tenant_claim = tenant_claim
        self.algorithms = list(algorithms)
        self._keys: dict[str, object] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        with urllib.request.urlopen(self.jwks_url, timeout=5) as resp:  # noqa: S310 - configured by the operator
            jwks = json.load(resp)
        self._keys = {k.get("kid", ""): jwt.PyJWK(k).key for k in jwks.get("keys", [])}
        self._fetched_at = time.monotonic()

    def _key(self, kid: str):
        with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at > 30:
                self._refresh()
            key = self._keys.get(kid)
        if key is None:
            raise AuthError("token signed by an unknown key")
        return key

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self._key(header.get("kid", "")), algorithms=self.algorithms,
                                audience=self.audience, issuer=self.issuer,
                                options={"require": ["exp", "iss", "aud", self.tenant_claim]})
            return Principal(str(claims.get("sub", "jwt")), uuid.UUID(str(claims[self.tenant_claim])))
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None


class Authenticator:
    def __init__(self, token_file: TokenFile | None, oidc: OidcVerifier | None):
        if token_file is None and oidc is None:
            raise ValueError("authentication is on but neither a token file nor OIDC is configured")
        self.token_file = token_file
        self.oidc = oidc

    def verify(self, token: str) -> Principal:
        if not token:
            raise AuthError("empty token")
        # A JWT has three dot-separated parts; opaque tokens from the file never contain a dot.
        if token.count(".") == 2 and self.oidc is not None:
            return self.oidc.verify(token)
        if self.token_file is not None:
            return self.token_file.verify(token)
        raise AuthError("invalid token")


def from_settings(settings) -> Authenticator | None:
    if not settings.auth:
        return None
    token_file = TokenFile(settings.auth_token_file) if settings.auth_token_file else None
    oidc = None
    if settings.auth_oidc_issuer:
        oidc = OidcVerifier(settings.auth_oidc_issuer, settings.auth_oidc_audience, settings.auth_oidc_jwks_url,
                            settings.auth_tenant_claim)
    return Authenticator(token_file, oidc)
