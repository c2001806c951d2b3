"""A local OpenID Provider (devstack/oidc/provider.mjs, the OpenID-Certified `oidc-provider`
npm package) run as a child process, for the tests and the production profile.

Why: the API's OIDC support is only worth something if it is proven against a real provider:
discovery, a JWKS endpoint, the client_credentials grant issuing JWT access tokens, and key
rotation under an unchanged issuer URL. This wrapper starts that provider on a port it binds
itself (port 0 by default; the provider reports the port back, so nothing is reserved and
handed over), asks it for tokens, rotates its keys and stops it.

The npm package is installed by `devstack/bootstrap.sh --browser` (or --oidc): `npm ci` into
devstack/oidc/node_modules from the committed package-lock.json. Client secrets are written
only to the state directory (mode 0600), never to a log.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent / "oidc"
SCRIPT = HERE / "provider.mjs"
DEFAULT_AUDIENCE = "https://api.aether.local"


class OidcProviderError(RuntimeError):
    pass


def installed() -> bool:
    return (HERE / "node_modules" / "oidc-provider" / "package.json").is_file()


class OidcProvider:
    """clients: [{"client_id", "client_secret", "tenant_id": str} | {..., "role": "operator"}].
    The audience must be an absolute URI (RFC 8707 resource indicators); tokens are for it unless
    a client asks for one of other_audiences."""

    def __init__(self, clients: list[dict], audience: str = DEFAULT_AUDIENCE, token_ttl_seconds: int = 300,
                 host: str = "127.0.0.1", port: int = 0, other_audiences: tuple[str, ...] = ()):
        self.clients = clients
        self.audience = audience
        self.other_audiences = list(other_audiences)
        self.token_ttl_seconds = token_ttl_seconds
        self.host = host
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.state_dir: Path | None = None
        self.info: dict = {}

    @property
    def issuer(self) -> str:
        return self.info["issuer"]

    @property
    def jwks_url(self) -> str:
        return self.info["jwks_uri"]

    def start(self, state_dir: str | os.PathLike, timeout: float = 30.0) -> tuple[str, str]:
        """Start the provider; returns (issuer, jwks_url). Started again after stop(), it binds
        the same port and loads the same keys, so the issuer stays the same."""
        if not installed():
            raise OidcProviderError(f"oidc-provider is not installed in {HERE}/node_modules; "
                                    "run devstack/bootstrap.sh --oidc (it runs `npm ci` there)")
        node = shutil.which("node")
        if node is None:
            raise OidcProviderError("node is not on PATH (Node.js 20 or later is needed for the OIDC provider)")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "clients.json"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"audience": self.audience, "other_audiences": self.other_audiences, "token_ttl_seconds": self.token_ttl_seconds,
                       "clients": self.clients}, f)
        log = open(self.state_dir / "provider.log", "ab")
        self.proc = subprocess.Popen(
            [node, str(SCRIPT), "--config", str(config), "--state-dir", str(self.state_dir),
             "--host", self.host, "--port", str(self.port)],
            cwd=HERE, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        log.close()
        line = self._ready_line(timeout)
        self.info = json.loads(line)
        self.port = int(self.info["port"])
        return self.issuer, self.jwks_url

    def _ready_line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            if self.proc.poll() is not None:
                raise OidcProviderError(f"the OIDC provider exited with {self.proc.returncode}; "
                                        f"log: {self.state_dir / 'provider.log'}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise OidcProviderError(f"the OIDC provider did not start within {timeout}s; "
                                        f"log: {self.state_dir / 'provider.log'}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                buf += chunk
        return buf.split(b"\n", 1)[0]

    def token(self, client_id: str, client_secret: str, audience: str | None = None) -> str:
        """An access token (a JWT) from the client_credentials grant."""
        body = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "resource": audience or self.audience}).encode()
        basic = base64.b64encode(f"{urllib.parse.quote(client_id)}:{urllib.parse.quote(client_secret)}".encode())
        req = urllib.request.Request(self.info["token_endpoint"], data=body, method="POST",
                                     headers={"Authorization": "Basic " + basic.decode(),
                                              "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own provider
                return json.load(resp)["access_token"]
        except urllib.error.HTTPError as exc:
            raise OidcProviderError(f"token request for {client_id} failed: {exc.code} {exc.read()[:200]!r}") from None

    def rotate(self, keep_old: bool = True) -> str:
        """A new signing key, used for every token from now on; the old public keys stay
        published (keep_old) or are dropped. The issuer URL does not change. Returns the new kid."""
        admin_token = (self.state_dir / "admin-token").read_text().strip()
        req = urllib.request.Request(f"{self.issuer}/admin/rotate?keep_old={int(keep_old)}", data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {admin_token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own provider
            return json.load(resp)["kid"]

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
