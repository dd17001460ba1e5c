"""PKIPORTAL_HEALTH_TOKEN: long enough to be a secret, and readable from a file.

The settings module is executed afresh (runpy) under a patched environment.
"""

from __future__ import annotations

import runpy

import pytest

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

SETTINGS_FILE = str(settings.BASE_DIR / "pkiportal" / "settings.py")


@pytest.mark.parametrize("token", ["short", "é" * 40])
def test_a_weak_or_non_ascii_health_token_is_refused(monkeypatch, tmp_path, token):
    monkeypatch.setenv("PKIPORTAL_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PKIPORTAL_HEALTH_TOKEN", token)

    with pytest.raises(ImproperlyConfigured, match="at least 32 ASCII characters"):
        runpy.run_path(SETTINGS_FILE)


def test_the_health_token_can_come_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "health-token"
    secret.write_text("t" * 43 + "\n")
    monkeypatch.setenv("PKIPORTAL_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("PKIPORTAL_HEALTH_TOKEN", raising=False)
    monkeypatch.setenv("PKIPORTAL_HEALTH_TOKEN_FILE", str(secret))

    assert runpy.run_path(SETTINGS_FILE)["PKIPORTAL_HEALTH_TOKEN"] == "t" * 43
