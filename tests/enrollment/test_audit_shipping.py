"""Forwarding the audit trail to a SIEM over syslog (enrollment.audit_shipping): real TCP
and TLS receivers on loopback get every event once, in order, as RFC 5424 messages whose
MSG is the event's line of the JSON export; a receiver that is down or untrusted moves
nothing and is retried from the same event; two shippers at once send each event once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import time_machine
from prometheus_client.parser import text_string_to_metric_families

from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from enrollment import audit, audit_shipping, services
from enrollment.audit import audit_record
from enrollment.checks import audit_syslog_is_not_udp
from enrollment.models import AuditEvent, AuditForwarding
from enrollment.tasks import audit_ship_task
from enrollment.x509.keys import KeyAlgorithm
from pkiportal import health as health_view
from tests.enrollment.syslog_receivers import Receiver, make_ca, server_context
from tests.net import free_port

pytestmark = pytest.mark.django_db

PASSWORD = "a long pkcs12 password for the SIEM test"
TOKEN = "t" * 40


@pytest.fixture
def monitoring_client(settings) -> Client:
    settings.PKIPORTAL_HEALTH_TOKEN = TOKEN
    return Client(headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def scrape_text(monitoring_client):
    def get() -> str:
        response = monitoring_client.get("/metrics", secure=True)
        assert response.status_code == 200
        return response.content.decode()

    return get


@pytest.fixture
def tcp_receiver(settings):
    receiver = Receiver()
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tcp://127.0.0.1:{receiver.port}"
    yield receiver
    receiver.stop()


def record(count: int, **kwargs) -> list[AuditEvent]:
    return [audit_record(action="test.event", detail={"n": n}, **kwargs) for n in range(count)]


def export_lines(client: Client) -> list[str]:
    response = client.get("/ra/audit/export.jsonl")
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode().splitlines()


def watermark() -> AuditForwarding:
    return AuditForwarding.objects.get(pk=1)


def test_a_tcp_receiver_gets_every_event_in_order_as_the_export_has_it(
    tcp_receiver, settings, officer_client
):
    record(3)
    audit_record(action="certificate.revoke", outcome=AuditEvent.Outcome.FAILURE)
    settings.PKIPORTAL_SITE_URL = "https://portal.example.com"
    events = list(AuditEvent.objects.order_by("pk"))

    result = audit_shipping.ship(batch_size=2)  # three batches on one connection

    assert result.error == ""
    assert result.sent == len(events)
    got = tcp_receiver.received()
    assert [m.event["id"] for m in got] == [e.pk for e in events]
    assert [m.msgid for m in got] == [e.action for e in events]
    assert {(m.app, m.hostname, m.procid, m.facility) for m in got} == {
        ("pkiportal", "portal.example.com", "-", 10)  # authpriv
    }
    assert [m.severity for m in got] == [5] * (len(events) - 1) + [4]  # warning: failure
    assert got[0].timestamp == events[0].created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # MSG is, byte for byte, the event's line of the JSON Lines export, hashes and all.
    exported = {line for line in export_lines(officer_client)}
    assert all(m.msg in exported for m in got)
    assert [m.event["previous_hash"] for m in got[1:]] == [m.event["hash"] for m in got[:-1]]
    assert watermark().last_event_id == events[-1].pk
    assert watermark().last_event_at == events[-1].created_at

    audit_record(action="test.later")
    assert audit_shipping.ship().sent == 2  # the export's own audit.export and this one
    every = list(AuditEvent.objects.order_by("pk").values_list("pk", flat=True))
    assert [m.event["id"] for m in tcp_receiver.received()] == every  # nothing twice


def test_a_tls_receiver_with_a_trusted_certificate_gets_the_events(settings, tmp_path):
    ca = make_ca()
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    receiver = Receiver(context=server_context(ca, tmp_path, names=["localhost", "127.0.0.1"]))
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tls://localhost:{receiver.port}"
    settings.PKIPORTAL_AUDIT_SYSLOG_CA = str(tmp_path / "ca.pem")
    events = record(3)
    try:
        result = audit_shipping.ship()
    finally:
        receiver.stop()

    assert result.error == ""
    got = receiver.received()
    assert [m.event["id"] for m in got] == [e.pk for e in events]
    assert [m.msg for m in got] == [audit.export_json(e) for e in events]
    assert watermark().last_event_id == events[-1].pk


@pytest.mark.parametrize("why", ["another CA", "another host name"])
def test_a_tls_receiver_that_is_not_trusted_is_refused(settings, tmp_path, caplog, why):
    trusted, other = make_ca("Trusted"), make_ca("Stranger")
    (tmp_path / "ca.pem").write_bytes(trusted.pem())
    issuer, names = (other, ["localhost"]) if why == "another CA" else (trusted, ["siem.example"])
    receiver = Receiver(context=server_context(issuer, tmp_path, names=names))
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tls://localhost:{receiver.port}"
    settings.PKIPORTAL_AUDIT_SYSLOG_CA = str(tmp_path / "ca.pem")
    record(2)
    try:
        with caplog.at_level(logging.WARNING, logger="enrollment.audit_shipping"):
            result = audit_shipping.ship()
    finally:
        receiver.stop()

    assert "certificate was refused" in result.error
    assert receiver.received() == []
    assert watermark().last_event_id == 0
    assert "certificate was refused" in watermark().error
    assert "next run tries again" in caplog.text


def test_a_receiver_that_is_down_moves_nothing_and_the_next_run_sends_all(
    settings, caplog, monitoring_client
):
    port = free_port()
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tcp://127.0.0.1:{port}"
    first = record(3)

    with caplog.at_level(logging.WARNING, logger="enrollment.audit_shipping"):
        result = audit_shipping.ship()

    assert result.sent == 0
    assert "ConnectionRefusedError" in result.error
    assert watermark().last_event_id == 0
    assert watermark().failed_at is not None
    assert f"127.0.0.1:{port}" in caplog.text
    assert "next run tries again" in caplog.text
    check = health_view.checks()["audit_shipping"]
    assert check["status"] == "warn"
    assert check["unshipped"] == 3
    assert "failed" in check["problems"][0]
    shown = monitoring_client.get("/health/", secure=True).json()
    assert shown["checks"]["audit_shipping"]["status"] == "warn"

    later = record(2)
    receiver = Receiver(port=port)
    try:
        assert audit_shipping.ship().error == ""
    finally:
        receiver.stop()

    assert [m.event["id"] for m in receiver.received()] == [e.pk for e in first + later]
    check = health_view.checks()["audit_shipping"]
    assert check["status"] == "ok"
    assert check["unshipped"] == 0
    assert check["problems"] == []


def test_only_those_allowed_details_see_the_target_and_its_errors(settings, monitoring_client):
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tcp://127.0.0.1:{free_port()}"
    record(1)
    audit_shipping.ship()

    anonymous = Client().get("/health/").json()
    assert anonymous == {"status": "warn"}  # the verdict, no target, no error text
    assert Client().get("/metrics").status_code == 401
    shown = monitoring_client.get("/health/", secure=True).json()
    assert shown["checks"]["audit_shipping"]["target"] == settings.PKIPORTAL_AUDIT_SYSLOG


def test_an_event_waiting_more_than_ten_minutes_warns(settings):
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tcp://127.0.0.1:{free_port()}"
    record(1)

    assert audit_shipping.forwarding_check()["status"] == "ok"
    later = timezone.now() + timedelta(minutes=11)
    check = audit_shipping.forwarding_check(now=later)
    assert check["status"] == "warn"
    assert "not forwarded yet" in check["problems"][0]


def test_off_by_default_the_check_is_ok_and_the_command_refuses(settings):
    assert settings.PKIPORTAL_AUDIT_SYSLOG == ""
    assert health_view.checks()["audit_shipping"] == {"status": "ok", "mode": "off"}
    assert audit_ship_task() == {"mode": "off"}
    with pytest.raises(CommandError, match="PKIPORTAL_AUDIT_SYSLOG"):
        call_command("audit_ship")


def test_the_command_and_the_task_ship_and_the_task_beats(tcp_receiver, capsys):
    events = record(2)
    call_command("audit_ship")
    assert f"up to event {events[-1].pk}" in capsys.readouterr().out

    more = record(1)
    assert audit_ship_task()["sent"] == 1
    from enrollment.models import ScheduledRun

    assert ScheduledRun.objects.filter(name=audit_shipping.RUN_NAME).exists()
    assert [m.event["id"] for m in tcp_receiver.received()] == [e.pk for e in events + more]


def test_from_now_skips_the_trail_so_far_and_says_so(tcp_receiver, capsys):
    old = record(3)

    call_command("audit_ship", "--from-now")

    got = tcp_receiver.received()
    assert [m.msgid for m in got] == ["audit.forwarding_start"]
    assert got[0].event["detail"] == {"skipped": 3, "after_event": 0, "up_to_event": old[-1].pk}
    assert "3 earlier events will not be forwarded" in capsys.readouterr().out


def test_a_failing_command_exits_with_the_error(settings):
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tcp://127.0.0.1:{free_port()}"
    record(1)
    with pytest.raises(CommandError, match="ConnectionRefusedError"):
        call_command("audit_ship")


def test_no_secret_of_a_portal_key_flow_reaches_the_siem(
    tcp_receiver, hierarchy, template, employee
):
    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    services.request_collect(request=request, actor=employee, pkcs12_password=PASSWORD)

    assert audit_shipping.ship().error == ""

    sent = tcp_receiver.raw()
    assert b"pkcs12.download" in sent
    assert PASSWORD.encode() not in sent
    assert b"PRIVATE KEY" not in sent
    for event in AuditEvent.objects.all():
        assert PASSWORD not in audit.export_json(event)


def test_metrics_count_what_waits_and_when_the_last_sent_was_recorded(tcp_receiver, scrape_text):
    events = record(2)
    audit_shipping.ship()
    record(3)

    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(scrape_text())
        for sample in family.samples
    }

    assert found["pkiportal_audit_syslog_unshipped_events"] == 3
    stamp = events[-1].created_at.timestamp()
    assert found["pkiportal_audit_syslog_last_shipped_event_timestamp_seconds"] == stamp


def test_metrics_leave_forwarding_out_when_it_is_off(scrape_text):
    assert "pkiportal_audit_syslog" not in scrape_text()


@pytest.mark.parametrize(
    ("target", "debug", "warned"),
    [
        ("udp://siem.example.com:514", False, True),
        ("udp://siem.example.com:514", True, False),
        ("tls://siem.example.com:6514", False, False),
        ("", False, False),
    ],
)
def test_udp_forwarding_is_named_by_the_deploy_check(target, debug, warned, settings):
    settings.PKIPORTAL_AUDIT_SYSLOG = target
    settings.DEBUG = debug

    assert [w.id for w in audit_syslog_is_not_udp()] == (["pkiportal.W019"] if warned else [])


def test_udp_sends_one_datagram_per_event(settings):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        settings.PKIPORTAL_AUDIT_SYSLOG = f"udp://127.0.0.1:{listener.getsockname()[1]}"
        events = record(2)
        assert audit_shipping.ship().error == ""
        datagrams = [listener.recv(65535) for _ in events]

    from tests.enrollment.syslog_receivers import parse

    assert [parse(d).event["id"] for d in datagrams] == [e.pk for e in events]


def test_time_of_an_event_is_its_own_not_the_send(tcp_receiver):
    with time_machine.travel("2030-01-02 03:04:05.678901+00:00", tick=False):
        record(1)
    audit_shipping.ship()
    assert tcp_receiver.received()[0].timestamp == "2030-01-02T03:04:05.678901Z"


@pytest.mark.parametrize("start", ["first", "middle", "the watermark"])
def test_resend_from_an_event_sends_it_and_every_later_one_again_then_says_so(
    tcp_receiver, capsys, start
):
    events = record(5)
    assert audit_shipping.ship().sent == 5
    delivered = len(tcp_receiver.received())  # then the SIEM lost them
    index = {"first": 0, "middle": 2, "the watermark": 4}[start]
    since = events[index]

    call_command("audit_ship", "--resend-from", str(since.pk))

    again = tcp_receiver.received()[delivered:]
    resend = AuditEvent.objects.get(action="audit.forwarding_resend")
    assert [m.event["id"] for m in again] == [e.pk for e in events[index:]] + [resend.pk]
    assert [m.msg for m in again[:-1]] == [audit.export_json(e) for e in events[index:]]
    assert again[-1].msgid == "audit.forwarding_resend"
    assert again[-1].event["detail"] == {
        "from_event": since.pk,
        "previous_watermark": events[-1].pk,
    }
    assert resend.object_type == "enrollment.AuditForwarding"
    assert resend.actor_id is None
    assert watermark().last_event_id == resend.pk
    out = capsys.readouterr().out
    assert f"every event from {since.pk} on is sent again" in out
    assert f"up to event {resend.pk}" in out


def test_resend_from_the_first_event_empties_the_watermark_before_sending(tcp_receiver):
    events = record(2)
    audit_shipping.ship()

    assert audit_shipping.resend_from(events[0].pk) == events[-1].pk

    assert (watermark().last_event_id, watermark().last_event_at) == (0, None)


@pytest.mark.parametrize("why", ["off", "no such event", "not sent yet", "with --from-now"])
def test_a_refused_resend_changes_nothing(tcp_receiver, settings, why):
    sent = record(3)
    audit_shipping.ship()
    waiting = record(2)
    end = AuditEvent.objects.order_by("pk").last()
    assert end is not None
    before = AuditForwarding.objects.values().get(pk=1)
    count, delivered = AuditEvent.objects.count(), len(tcp_receiver.received())
    args, match = {
        "off": (["--resend-from", str(sent[0].pk)], "Forwarding is off"),
        "no such event": (["--resend-from", str(end.pk + 100)], f"no audit event {end.pk + 100}"),
        "not sent yet": (["--resend-from", str(waiting[0].pk)], "Nothing to resend"),
        "with --from-now": (["--from-now", "--resend-from", str(sent[0].pk)], "give one"),
    }[why]
    if why == "off":
        settings.PKIPORTAL_AUDIT_SYSLOG = ""

    with pytest.raises(CommandError, match=match):
        call_command("audit_ship", *args)

    assert AuditForwarding.objects.values().get(pk=1) == before
    assert AuditEvent.objects.count() == count
    assert not AuditEvent.objects.filter(action="audit.forwarding_resend").exists()
    assert len(tcp_receiver.received()) == delivered
