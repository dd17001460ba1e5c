"""The audit trail forwarded to a real rsyslogd (Debian's rsyslog): it parses every
message as RFC 5424 (its own parser, pmrfc5424) and writes them to a file in order, MSG
being the event's line of the JSON export.

rsyslogd runs in the foreground with a config of its own in a temporary directory,
listening with imtcp on a free loopback port; nothing of the system's syslog is touched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from enrollment import audit, audit_shipping
from enrollment.audit import audit_record
from enrollment.models import AuditEvent
from tests.net import free_port

RSYSLOGD = "/usr/sbin/rsyslogd"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.django_db,
    pytest.mark.skipif(
        not Path(RSYSLOGD).exists(), reason="needs rsyslogd (apt-get install -y rsyslog)"
    ),
]

# Fields rsyslog parsed, tab-separated, one message a line.
CONFIG = """\
global(workDirectory="{directory}")
module(load="imtcp")
template(name="fields" type="string"
         string="%pri%\\t%timereported:::date-rfc3339%\\t%hostname%\\t%app-name%\\t%procid%\\t%msgid%\\t%protocol-version%\\t%msg%\\n")
ruleset(name="siem") {{
    action(type="omfile" file="{directory}/audit.log" template="fields")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="siem")
"""


@pytest.fixture
def rsyslogd(tmp_path):
    port = free_port()
    config = tmp_path / "rsyslog.conf"
    config.write_text(CONFIG.format(directory=tmp_path, port=port))
    check = subprocess.run(
        [RSYSLOGD, "-N1", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "rsyslogd did not listen"
            time.sleep(0.1)
    yield port, tmp_path / "audit.log"
    process.terminate()
    process.wait(timeout=20)


def written(log: Path, count: int) -> list[list[str]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        if len(lines) >= count:
            return [line.split("\t", 7) for line in lines]
        time.sleep(0.1)
    raise AssertionError(f"rsyslogd wrote {len(lines)} of {count} messages")


def test_rsyslogd_receives_every_event_in_order(rsyslogd, settings):
    port, log = rsyslogd
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tcp://127.0.0.1:{port}"
    settings.PKIPORTAL_SITE_URL = "https://portal.example.com"
    audit_record(action="certificate.revoke", detail={"reason": "keyCompromise", "note": "Åsa"})
    audit_record(action="request.reject", outcome=AuditEvent.Outcome.FAILURE)
    for n in range(5):
        audit_record(action="test.event", detail={"n": n})
    events = list(AuditEvent.objects.order_by("pk"))

    assert audit_shipping.ship(batch_size=3).error == ""

    rows = written(log, len(events))
    assert len(rows) == len(events)
    for row, event in zip(rows, events, strict=True):
        pri, stamp, host, app, procid, msgid, version, msg = row
        assert version == "1"  # parsed as RFC 5424, not as legacy BSD syslog
        assert (host, app, procid, msgid) == ("portal.example.com", "pkiportal", "-", event.action)
        assert int(pri) == 10 * 8 + (4 if event.outcome == "failure" else 5)
        assert stamp.startswith(event.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
        assert msg.strip() == audit.export_json(event)
        assert json.loads(msg)["hash"] == event.hash
