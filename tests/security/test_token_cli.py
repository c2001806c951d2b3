"""`aether auth hash-token` writes a line the token file accepts, and never stores the token."""
from __future__ import annotations

import subprocess
import uuid

import pytest

from aether_platform.auth import AuthError, TokenFile
from tests.conftest import CLI, REPO


def test_hash_token_line_is_accepted_by_the_token_file(tmp_path):
    tenant = str(uuid.uuid4())
    r = subprocess.run([*CLI, "auth", "hash-token", tenant, "--label", "crm-app"],
                       cwd=REPO, capture_output=True, text=True, check=True)
    token = r.stderr.strip().rsplit(" ", 1)[1]
    assert token not in r.stdout
    path = tmp_path / "tokens"
    path.write_text(r.stdout)
    principal = TokenFile(path).verify(token)
    assert str(principal.tenant_id) == tenant and principal.subject == "crm-app" and not principal.operator
    with pytest.raises(AuthError):
        TokenFile(path).verify(token + "x")
