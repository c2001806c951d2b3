"""Bearer-token authentication: every token is bound to exactly one tenant, or is an operator's.

Two sources, usable together:
- a token file that holds only SHA-256 hashes, one token a line:
      sha256:<64 hex> <tenant uuid | operator> [label]
  Lines starting with # are comments. The file is re-read when it changes, so tokens can be
  added or revoked without a restart. Create an entry with `aether auth hash-token`.
- OIDC JWTs, verified against the issuer's JWKS (signature, issuer, audience, expiry and
  not-before all checked), carrying the tenant in a claim (default `tenant_id`), or the role
  `operator` in another (default `aether_role`).

Operators (token-file entries with `operator`, or JWTs with the operator role) may read /metrics,
the Command Center and every tenant's stream, but never write CRM data. Nothing here logs or
stores a token in clear.

OIDC keys (OidcVerifier), for an asyncio server:
- Verifying a token never waits on the network on the event loop: the JWKS is fetched by PyJWT's
  PyJWKClient in a worker thread, and verification reads the last good key set from memory.
- The key set is re-read in the background every `refresh_seconds`
  (AETHER_AUTH_OIDC_JWKS_REFRESH_SECONDS, default 300): a key the issuer removed is refused
  within that time, plus the fetch timeout (5 s), as long as the issuer answers (an unreachable
  issuer leaves the last key set in force; after a failed read the next try comes after the
  cooldown, not the full interval).
- A token naming a key not in the set triggers one immediate re-read, at most once per
  `cooldown_seconds` (AETHER_AUTH_OIDC_JWKS_COOLDOWN_SECONDS, default 10), shared by concurrent
  requests, so that random `kid`s cannot make us hammer the issuer. A kid still unknown after a
  good read is a 401.
- While the issuer is unreachable the last good key set stays in use (a failed read never
  empties it); a token naming a key we do not have raises KeysUnavailable, which the API answers
  503 with Retry-After: we cannot tell whether the key is new or forged, so the client should
  come back rather than be told its token is bad.
- A token that verified is remembered (up to 4096 per process) until its `exp`, and only while
  the key set holds the same key: removing the key, or any refresh, means verifying it again.
- With no JWKS URL configured, it is discovered from the issuer's
  /.well-known/openid-configuration (whose `issuer` must match).

Stream tickets (StreamTickets): a short-lived, HMAC-signed proof that a bearer token was verified,
carried by the Command Center's cookie so that the token itself never rides in a URL. A ticket
holds only the principal (subject, tenant or operator) and its expiry; it is good for the live
stream and /ops/ pages only (api/security.py), never for CRM data.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from jwt import PyJWKClient

OPERATOR = "operator"
JWKS_TIMEOUT_SECONDS = 5.0
VERIFIED_CACHE_SIZE = 4096  # tokens remembered as verified, per process (about 1 KiB each)

log = logging.getLogger("aether.auth")


class AuthError(Exception):
    """401: no credentials or bad credentials."""


class KeysUnavailable(Exception):
    """503: the token names a signing key we do not hold and the issuer cannot be asked now."""

    def __init__(self, retry_after: int):
        super().__init__(f"the issuer's keys cannot be fetched; retry after {retry_after}s")
        self.retry_after = retry_after


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
    """JWTs from one issuer; see the module docstring for how keys are fetched and trusted.
    verify() must be awaited on the event loop that serves requests; the background refresh
    starts with the first verification (or start())."""

    def __init__(self, issuer: str, audience: str, jwks_url: str = "", tenant_claim: str = "tenant_id",
                 role_claim: str = "aether_role", refresh_seconds: float = 300.0, cooldown_seconds: float = 10.0,
                 algorithms: tuple[str, ...] = ("RS256", "ES256")):
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.tenant_claim = tenant_claim
        self.role_claim = role_claim
        self.refresh_seconds = refresh_seconds
        self.cooldown_seconds = cooldown_seconds
        self.algorithms = list(algorithms)
        self._client: PyJWKClient | None = PyJWKClient(jwks_url, cache_jwk_set=False, timeout=JWKS_TIMEOUT_SECONDS) \
            if jwks_url else None
        self._keys: dict[str, jwt.PyJWK] = {}  # replaced whole by a good read, never emptied by a failed one
        self._last_ok: float | None = None
        self._failing = False  # the last read failed
        self._on_demand_at = -math.inf
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task | None = None
        self._verified: dict[str, tuple] = {}  # token -> (principal, kid, key, exp)

    # -- blocking part, run in a worker thread -------------------------------------------------

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        if not url.startswith(("https://", "http://")):
            raise ValueError("AETHER_AUTH_OIDC_ISSUER must be an http(s) URL")
        with urllib.request.urlopen(url, timeout=JWKS_TIMEOUT_SECONDS) as resp:  # noqa: S310 - http(s) only
            doc = json.load(resp)
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer.rstrip("/"):
            raise ValueError("the discovery document names another issuer")
        return str(doc["jwks_uri"])

    def fetch_keys(self) -> None:
        """Read the JWKS now (blocking). Raises on any failure, leaving the key set as it was."""
        if self._client is None:
            self.jwks_url = self._discover()
            self._client = PyJWKClient(self.jwks_url, cache_jwk_set=False, timeout=JWKS_TIMEOUT_SECONDS)
        keys = self._client.get_signing_keys(refresh=True)
        self._keys = {k.key_id: k for k in keys}

    # -- on the event loop -----------------------------------------------------------------------

    async def refresh(self) -> bool:
        try:
            await asyncio.to_thread(self.fetch_keys)
        except Exception as exc:  # noqa: BLE001 - any failure means "keep the keys we have"
            if not self._failing:
                log.warning("cannot read the OIDC issuer's keys (%s: %s); keeping %d cached key(s)",
                            type(exc).__name__, exc, len(self._keys))
            self._failing = True
            return False
        if self._failing:
            log.info("the OIDC issuer's keys are readable again (%d key(s))", len(self._keys))
        self._failing = False
        self._last_ok = time.monotonic()
        return True

    async def _refresh_forever(self) -> None:
        while True:
            # After a failure, try again sooner than the schedule: recovery should not wait minutes.
            delay = min(self.refresh_seconds, max(self.cooldown_seconds, 1.0)) if self._failing \
                else self.refresh_seconds
            await asyncio.sleep(delay)
            await self.refresh()

    def start(self) -> None:
        """Start the background refresh on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._lock = self._lock or asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="oidc-jwks-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _key_for_unknown_kid(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            key = self._keys.get(kid)  # read meanwhile by a request that held the lock before us
            if key is not None:
                return key
            since = time.monotonic() - self._on_demand_at
            if since >= self.cooldown_seconds:
                self._on_demand_at = time.monotonic()
                await self.refresh()
                key = self._keys.get(kid)
                if key is not None:
                    return key
                since = 0.0
            if self._failing:
                raise KeysUnavailable(max(1, math.ceil(self.cooldown_seconds - since)))
        raise AuthError("token signed by an unknown key")

    async def verify(self, token: str) -> Principal:
        self.start()
        # A client sends the same token until it expires. Verifying costs about 0.5 ms of CPU
        # (PyJWT checks every base64 character in Python), so a token that passed is remembered
        # until its expiry, while the key set still holds the very key that verified it (every
        # read of the JWKS makes new key objects, so a refresh re-verifies each token once).
        hit = self._verified.get(token)
        if hit is not None and self._keys.get(hit[1]) is hit[2] and hit[3] > time.time():
            return hit[0]
        try:
            kid = jwt.get_unverified_header(token).get("kid") or ""
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        key = self._keys.get(kid)
        if key is None:
            key = await self._key_for_unknown_kid(kid)
        try:
            claims = jwt.decode(token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                                options={"require": ["exp", "iss", "aud"]})
            subject = str(claims.get("sub", "jwt"))
            if claims.get(self.role_claim) == OPERATOR:
                principal = Principal(subject, None, operator=True)
            else:
                principal = Principal(subject, uuid.UUID(str(claims[self.tenant_claim])))
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (principal, kid, key, float(claims["exp"]))
        return principal


class Authenticator:
    def __init__(self, token_file: TokenFile | None, oidc: OidcVerifier | None):
        if token_file is None and oidc is None:
            raise ValueError("authentication is on but neither a token file nor OIDC is configured")
        self.token_file = token_file
        self.oidc = oidc

    async def verify(self, token: str) -> Principal:
        """Raises AuthError (401) or KeysUnavailable (503)."""
        if not token:
            raise AuthError("empty token")
        # A JWT has three dot-separated parts; opaque tokens from the file never contain a dot.
        if token.count(".") == 2 and self.oidc is not None:
            return await self.oidc.verify(token)
        if self.token_file is not None:
            return self.token_file.verify(token)
        raise AuthError("invalid token")


class StreamTickets:
    """`v1.<expiry epoch s>.<tenant uuid | operator>.<base64url subject>.<base64url HMAC-SHA256>`.
    Without a configured secret each process makes its own, so its tickets die with it."""

    def __init__(self, secret: str = "", ttl_seconds: int = 3600):
        self._key = hashlib.sha256(secret.encode()).digest() if secret else secrets.token_bytes(32)
        self.ttl_seconds = ttl_seconds

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, principal: Principal, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl_seconds)
        who = OPERATOR if principal.operator else str(principal.tenant_id)
        subject = base64.urlsafe_b64encode(principal.subject.encode()[:200]).rstrip(b"=").decode()
        body = f"v1.{expires}.{who}.{subject}"
        return f"{body}.{self._sign(body)}"

    def verify(self, ticket: str, now: float | None = None) -> Principal:
        parts = ticket.split(".")
        if len(parts) != 5 or parts[0] != "v1":
            raise AuthError("malformed stream ticket")
        body = ".".join(parts[:4])
        if not hmac.compare_digest(self._sign(body), parts[4]):
            raise AuthError("stream ticket signature does not match")
        try:
            expires = int(parts[1])
            subject = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)).decode()
            principal = Principal(subject, None, operator=True) if parts[2] == OPERATOR \
                else Principal(subject, uuid.UUID(parts[2]))
        except ValueError:
            raise AuthError("malformed stream ticket") from None
        if expires <= (now if now is not None else time.time()):
            raise AuthError("stream ticket expired")
        return principal


def from_settings(settings) -> Authenticator | None:
    if not settings.auth:
        return None
    token_file = TokenFile(settings.auth_token_file) if settings.auth_token_file else None
    oidc = None
    if settings.auth_oidc_issuer:
        oidc = OidcVerifier(settings.auth_oidc_issuer, settings.auth_oidc_audience, settings.auth_oidc_jwks_url,
                            settings.auth_tenant_claim, settings.auth_role_claim,
                            refresh_seconds=settings.auth_oidc_jwks_refresh_seconds,
                            cooldown_seconds=settings.auth_oidc_jwks_cooldown_seconds)
    return Authenticator(token_file, oidc)


def tickets_from_settings(settings) -> StreamTickets:
    secret = settings.auth_stream_ticket_secret.get_secret_value()
    if settings.auth and not secret:
        log.warning("AETHER_AUTH_STREAM_TICKET_SECRET is not set: a Command Center sign-in works only on the API "
                    "process that issued it; set it when several workers or replicas serve the API")
    return StreamTickets(secret, settings.auth_stream_ticket_seconds)
