"""docs/settings.md is generated from the settings models and must match them, like the dashboards:
a field added without regenerating, or an AETHER_* variable read nowhere documented, fails here."""
from __future__ import annotations

import subprocess
import sys

from aether_platform import settings_doc
from aether_platform.settings import Settings
from tests.conftest import REPO


def test_committed_settings_reference_is_current():
    assert settings_doc.OUTPUT.read_text(encoding="utf-8") == settings_doc.render(), (
        "docs/settings.md is stale: run `python -m aether_platform.settings_doc`")


def test_every_variable_read_is_documented_and_described():
    assert settings_doc.undocumented() == {}
    assert settings_doc.undescribed() == []


def test_every_settings_field_is_in_the_reference():
    text = settings_doc.OUTPUT.read_text(encoding="utf-8")
    for field in Settings.model_fields.values():
        assert f"| `{field.alias}` |" in text


def test_check_command_fails_on_a_stale_file(tmp_path, monkeypatch):
    r = subprocess.run([sys.executable, "-m", "aether_platform.settings_doc", "--check"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    stale = tmp_path / "settings.md"
    stale.write_text(settings_doc.render().replace("AETHER_SSE_CORS_ORIGINS", "AETHER_SSE_CORS"))
    monkeypatch.setattr(settings_doc, "OUTPUT", stale)
    assert settings_doc.main(["--check"]) == 1
