"""PKIPORTAL_AUDIT_SYSLOG and its companions: off by default; a malformed target, a CA
file for a target that is not TLS or that is missing, or an unknown facility stops the
portal at start-up, naming the setting."""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_off_by_default_with_no_run_scheduled(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_AUDIT_SYSLOG"] == ""
    assert loaded["PKIPORTAL_AUDIT_SYSLOG_INTERVAL"] == 30
    assert loaded["PKIPORTAL_AUDIT_SYSLOG_FACILITY"] == "authpriv"
    assert "audit-syslog" not in loaded["CELERY_BEAT_SCHEDULE"]


@pytest.mark.parametrize(
    "target", ["tcp://siem.example.com:514", "tls://[2001:db8::1]:6514", "udp://10.0.0.5:514"]
)
def test_a_target_schedules_the_task_every_interval(load_settings, target):
    loaded = load_settings(PKIPORTAL_AUDIT_SYSLOG=target, PKIPORTAL_AUDIT_SYSLOG_INTERVAL="45")

    entry = loaded["CELERY_BEAT_SCHEDULE"]["audit-syslog"]
    assert entry["task"] == "enrollment.tasks.audit_ship_task"
    assert entry["schedule"].total_seconds() == 45


@pytest.mark.parametrize(
    "target",
    [
        "siem.example.com:514",
        "http://siem.example.com:514",
        "tcp://siem.example.com",
        "tcp://:514",
        "tcp://siem.example.com:99999",
        "tcp://siem.example.com:port",
        "tls://user:secret@siem.example.com:6514",
        "tcp://siem.example.com:514/path",
        "udp://siem.example.com:514?x=1",
    ],
)
def test_a_malformed_target_is_refused(load_settings, target):
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_AUDIT_SYSLOG must be"):
        load_settings(PKIPORTAL_AUDIT_SYSLOG=target)


def test_a_ca_file_is_for_tls_and_must_exist(load_settings, tmp_path):
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_AUDIT_SYSLOG_CA verifies"):
        load_settings(
            PKIPORTAL_AUDIT_SYSLOG="tcp://siem.example.com:514",
            PKIPORTAL_AUDIT_SYSLOG_CA=str(tmp_path),
        )
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_AUDIT_SYSLOG_CA .* not a readable"):
        load_settings(
            PKIPORTAL_AUDIT_SYSLOG="tls://siem.example.com:6514",
            PKIPORTAL_AUDIT_SYSLOG_CA=str(tmp_path / "missing.pem"),
        )


def test_an_unknown_facility_or_interval_is_refused(load_settings):
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_AUDIT_SYSLOG_FACILITY"):
        load_settings(
            PKIPORTAL_AUDIT_SYSLOG="tcp://siem.example.com:514",
            PKIPORTAL_AUDIT_SYSLOG_FACILITY="kern",
        )
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_AUDIT_SYSLOG_INTERVAL"):
        load_settings(PKIPORTAL_AUDIT_SYSLOG_INTERVAL="1")
