"""Roll-out invitations whose mail did not go out: counted, shown, and sent again.

A real SMTP server (aiosmtpd, on loopback) refuses one address with 550, or is not
there at all; Django's SMTP backend talks to it as it would to the organisation's relay.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from django.conf import settings as django_settings
from django.utils import timezone

from enrollment import rollouts, services
from enrollment.models import CertificateRequest, Rollout, RolloutInvitation
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.net import free_port

pytestmark = [pytest.mark.django_db]


class Relay:
    """Accepts every recipient but those in ``refuse``; keeps what it was sent."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.delivered: list[str] = []

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.delivered.extend(envelope.rcpt_tos)
        return "250 Message accepted for delivery"


@pytest.fixture
def relay(settings) -> Iterator[Relay]:
    handler = Relay()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_TIMEOUT = 5
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def people(db):
    return [UserFactory(username=f"inv{n}", email=f"inv{n}@example.com") for n in range(3)]


def invite(officer, signing, people, capture) -> Rollout:
    with capture(execute=True):
        return rollouts.rollout_create(
            officer=officer,
            template=signing,
            people=" ".join(p.username for p in people),
            key_algorithm=KeyAlgorithm.EC_P256,
        )


def invitation_of(person) -> RolloutInvitation:
    return RolloutInvitation.objects.get(request__requester=person)


def test_a_refused_address_is_counted_shown_and_sent_again_later(
    relay, signing, officer, people, django_capture_on_commit_callbacks
):
    refused = people[1]
    relay.refuse.add(refused.email)
    rollout = invite(officer, signing, people, django_capture_on_commit_callbacks)

    assert sorted(relay.delivered) == sorted([people[0].email, people[2].email])
    failed = invitation_of(refused)
    assert failed.mailed_at is None
    assert failed.mail_attempts == 1
    assert "550" in failed.mail_error
    assert "User unknown" in failed.mail_error
    assert invitation_of(people[0]).mailed_at is not None
    assert rollouts.unmailed_count(rollout) == 1

    # The officer sees who was never told, and why; so does the API.
    page = client_for(officer).get(f"/ra/rollouts/{rollout.pk}/")
    body = page.content.decode()
    assert 'id="unmailed"' in body
    assert "1 of the people waiting has not been mailed" in body
    assert "refused 1×" in body
    assert "User unknown" in body
    api = client_for(officer).get(f"/api/v1/rollouts/{rollout.pk}/").json()
    by_name = {p["username"]: p for p in api["people"]}
    assert by_name[refused.username]["mailed_at"] is None
    assert "550" in by_name[refused.username]["mail_error"]
    assert by_name[people[0].username]["mailed_at"] is not None

    # Not before the queue has had its chance; then only the one never mailed.
    assert rollouts.rollout_mail_retry() == 0
    later = timezone.now() + rollouts.MAIL_RETRY_AFTER + timedelta(minutes=1)
    relay.refuse.clear()
    relay.delivered.clear()
    assert rollouts.rollout_mail_retry(now=later) == 1
    assert relay.delivered == [refused.email]
    fixed = invitation_of(refused)
    assert fixed.mailed_at is not None
    assert fixed.mail_error == ""
    assert rollouts.unmailed_count(rollout) == 0
    assert (
        'id="unmailed"'
        not in client_for(officer).get(f"/ra/rollouts/{rollout.pk}/").content.decode()
    )
    assert rollouts.rollout_mail_retry(now=later) == 0  # nobody is mailed twice


def test_an_address_refused_every_time_is_given_up_after_the_last_attempt(
    relay, signing, officer, people, django_capture_on_commit_callbacks
):
    relay.refuse.add(people[0].email)
    invite(officer, signing, people[:1], django_capture_on_commit_callbacks)
    later = timezone.now() + rollouts.MAIL_RETRY_AFTER + timedelta(minutes=1)
    for _ in range(rollouts.MAIL_ATTEMPTS - 1):
        assert rollouts.rollout_mail_retry(now=later) == 1
    assert invitation_of(people[0]).mail_attempts == rollouts.MAIL_ATTEMPTS
    assert rollouts.rollout_mail_retry(now=later) == 0
    assert relay.delivered == []


def test_a_mail_server_that_is_down_fails_the_task_and_the_hourly_retry_sends_all(
    settings, signing, officer, people, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nobody listens
    settings.EMAIL_TIMEOUT = 5
    # The officer's roll-out stands (its mail is sent after the commit, and robustly);
    # the task that could not reach the server fails, and nobody is marked mailed.
    rollout = invite(officer, signing, people, django_capture_on_commit_callbacks)
    assert rollouts.unmailed_count(rollout) == 3
    # Not the address's fault: no refusal is counted against it.
    assert set(RolloutInvitation.objects.values_list("mail_attempts", flat=True)) == {0}

    handler = Relay()
    controller = Controller(handler, hostname="127.0.0.1", port=settings.EMAIL_PORT)
    controller.start()
    try:
        later = timezone.now() + rollouts.MAIL_RETRY_AFTER + timedelta(minutes=1)
        assert rollouts.rollout_mail_retry(now=later) == 3
    finally:
        controller.stop()
    assert sorted(handler.delivered) == sorted(p.email for p in people)
    assert rollouts.unmailed_count(rollout) == 0


def test_only_open_invitations_of_people_still_here_are_sent_again(
    relay, signing, officer, people, django_capture_on_commit_callbacks
):
    for person in people:
        relay.refuse.add(person.email)
    rollout = invite(officer, signing, people, django_capture_on_commit_callbacks)
    collected, leaver, waiting = people
    services.request_collect(
        request=CertificateRequest.objects.get(requester=collected),
        actor=collected,
        pkcs12_password="a long enough pkcs12 password 1",
    )
    leaver.is_active = False
    leaver.save()
    relay.refuse.clear()
    later = timezone.now() + rollouts.MAIL_RETRY_AFTER + timedelta(minutes=1)
    assert rollouts.rollout_mail_retry(now=later) == 1
    assert relay.delivered == [waiting.email]

    # A roll-out past its end, or cancelled, mails nobody.
    RolloutInvitation.objects.update(mailed_at=None)
    assert rollouts.rollout_mail_retry(now=rollout.expires_at + timedelta(minutes=1)) == 0
    rollouts.rollout_cancel(rollout=rollout, officer=officer)
    assert rollouts.rollout_mail_retry(now=later) == 0


def test_beat_runs_the_retry_hourly():
    entry = django_settings.CELERY_BEAT_SCHEDULE["rollouts-mail-retry"]
    assert entry["task"] == "enrollment.tasks.rollouts_mail_retry_task"
    assert entry["schedule"] == timedelta(hours=1)
    from enrollment.tasks import rollouts_mail_retry_task

    assert rollouts_mail_retry_task.name == entry["task"]
