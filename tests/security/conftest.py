"""An API process with authentication on: a token file (hashes only) and an OIDC issuer whose
JWKS is served by a local HTTP server, with RSA keys made for the session."""
from __future__ import annotations

import http.server
import json
import threading
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from aether_platform.auth import hash_token
from tests.conftest import ApiServer

ISSUER = "https://issuer.test/"
AUDIENCE = "aether-api"


class Tokens:
    def __init__(self):
        self.tenant_a, self.tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
        self.a, self.b, self.operator = f"tok-a-{uuid.uuid4().hex}", f"tok-b-{uuid.uuid4().hex}", f"tok-op-{uuid.uuid4().hex}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwt(self, tenant: str, *, key=None, aud=AUDIENCE, iss=ISSUER, exp_in=300, kid="k1") -> str:
        now = int(time.time())
        claims = {"sub": "user-1", "iss": iss, "aud": aud, "iat": now, "exp": now + exp_in, "tenant_id": tenant}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid})

    def jwks(self) -> dict:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="session")
def jwks_url(tokens):
    body = json.dumps(tokens.jwks()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


@pytest.fixture(scope="session")
def secure_api(platform_env, tokens, jwks_url, tmp_path_factory):
    d = tmp_path_factory.mktemp("secure-api")
    token_file = d / "tokens"
    token_file.write_text("# hashes only\n"
                          f"{hash_token(tokens.a)} {tokens.tenant_a} tenant-a\n"
                          f"{hash_token(tokens.b)} {tokens.tenant_b} tenant-b\n"
                          f"{hash_token(tokens.operator)} operator ops-team\n")
    env = {**platform_env, "AETHER_AUTH": "on", "AETHER_AUTH_TOKEN_FILE": str(token_file),
           "AETHER_AUTH_OIDC_ISSUER": ISSUER, "AETHER_AUTH_OIDC_AUDIENCE": AUDIENCE,
           "AETHER_AUTH_OIDC_JWKS_URL": jwks_url, "AETHER_WRITE_RATE_PER_TENANT": "0",
           # Logs for real, as in production: the log tests read this server's lines.
           "AETHER_LOG_FORMAT": "json", "AETHER_LOG_LEVEL": "INFO"}
    server = ApiServer(env, d).start()
    yield server
    server.close()
from tests.api.conftest import client  # noqa: F401 - the API's httpx client fixture, shared
