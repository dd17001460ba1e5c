"""Each mail is worded in its recipient's language (User.language, else PKIPORTAL_LANGUAGE).

The German assertions need the compiled catalogue (locale/de/LC_MESSAGES/django.mo).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from django.core import mail
from django.utils import timezone, translation

from enrollment import notifications, ra_notifications, recovery, services
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.ra_fixtures import REASON
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]


def speaks(user, language: str):
    user.language = language
    user.save(update_fields=["language"])
    return user


def to(user) -> list[mail.EmailMessage]:
    return [m for m in mail.outbox if m.to == [user.email]]


@pytest.fixture
def sent(django_capture_on_commit_callbacks):
    """What the work inside queues on commit is sent; the outbox starts empty."""

    class Sending:
        def __enter__(self):
            mail.outbox.clear()
            self.capture = django_capture_on_commit_callbacks(execute=True)
            return self.capture.__enter__()

        def __exit__(self, *exc):
            return self.capture.__exit__(*exc)

    return Sending


def test_a_decision_reaches_each_requester_in_their_language(
    hierarchy, approval, officer, employee, colleague, sent
):
    template = approval("smime-signing")
    speaks(employee, "de")
    speaks(colleague, "en")
    requests = [
        services.request_submit(
            requester=person,
            template=template,
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        )
        for person in (employee, colleague)
    ]
    with sent():
        for request in requests:
            services.request_reject(request=request, officer=officer, reason="Nicht nötig")

    (german,) = to(employee)
    assert german.subject == "Ihr Zertifikatsantrag wurde abgelehnt"
    assert german.body.startswith("Guten Tag Alice Andersson,")
    assert f"Ihr Antrag Nr. {requests[0].pk} auf ein Zertifikat" in german.body
    assert "Grund: Nicht nötig" in german.body
    assert "your request" not in german.body
    (english,) = to(colleague)
    assert english.subject == "Your certificate request was rejected"
    assert english.body.startswith("Hello Bob Brown,")
    assert f"your request #{requests[1].pk} for a" in english.body
    # The language of the code that sent them is untouched.
    assert translation.get_language() == "en"


def test_an_expiring_certificate_is_announced_in_the_owners_language(
    hierarchy, template, employee, colleague, sent
):
    speaks(employee, "de")
    certificates = [
        services.certificate_issue_with_server_key(
            template=template("smime-signing"),
            owner=person,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password="Expiring-Key-Lantern-31",
        )[0]
        for person in (employee, colleague)
    ]
    with sent():
        for certificate in certificates:
            ra_notifications.certificate_expiring(certificate, days_left=7)

    (german,) = to(employee)
    assert german.subject == "Ihr Zertifikat läuft in 7 Tagen ab"
    assert "läuft am" in german.body
    assert "in 7 Tagen." in german.body
    assert "Erneuern Sie es vorher im Portal" in german.body
    # The date keeps its format, whatever the language.
    assert certificates[0].not_after.strftime("%Y-%m-%d") in german.body
    (english,) = to(colleague)  # no choice: PKIPORTAL_LANGUAGE, English here
    assert english.subject == "Your certificate expires in 7 days"
    assert "Renew it in the portal before then" in english.body


def test_a_recovery_step_reaches_the_key_owner_in_their_language(
    bobs_key, second_officer, colleague, sent
):
    speaks(colleague, "de")
    with sent():
        recovery.recovery_open(
            certificate=bobs_key.certificate, officer=second_officer, reason=REASON
        )

    (german,) = to(colleague)
    assert german.subject == (
        "Die Wiederherstellung Ihres archivierten Verschlüsselungsschlüssels wurde beantragt"
    )
    assert "RA-Officer, hat einen Antrag" in german.body
    assert "Noch ist nichts entschlüsselt." in german.body
    assert "Nothing is decrypted" not in german.body


def test_an_officers_summary_is_split_by_language_not_by_officer(
    submit_at, officer, second_officer, settings
):
    """One request announced to three officers: each gets one mail, the German one in
    German, the two English ones alike; none of them a mix."""
    third = UserFactory(username="erin", email="erin@example.com")
    third.groups.add(*officer.groups.all())
    speaks(officer, "de")
    speaks(second_officer, "en")
    mail.outbox.clear()
    request = submit_at(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))

    by_address = {m.to[0]: m for m in mail.outbox}
    assert len(mail.outbox) == len(by_address)  # one mail each, as before
    german = by_address[officer.email]
    assert german.subject == f"Zertifikatsantrag Nr. {request.pk} wartet auf Ihre Genehmigung"
    assert "ein Zertifikatsantrag wartet auf die Genehmigung eines RA-Officers" in german.body
    for person in (second_officer, third):
        english = by_address[person.email]
        assert english.subject == f"Certificate request #{request.pk} waits for your approval"
        assert "a certificate request waits for an RA officer's approval" in english.body


def test_an_expiry_summary_to_a_mixed_group_of_officers(
    hierarchy, template, employee, officer, second_officer, sent
):
    speaks(officer, "de")
    certificate = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Expiring-Key-Lantern-31",
    )[0]
    with sent():
        ra_notifications.expiry_summary({7: [certificate]}, now=timezone.now())

    (german,) = to(officer)
    assert german.subject == "Ablaufhinweise: 1 Zertifikat läuft bald ab"
    assert "Innerhalb von 7 Tagen:" in german.body
    (english,) = to(second_officer)
    assert english.subject == "Expiry notices: 1 certificate expires soon"
    assert "Within 7 days:" in english.body


def test_an_address_without_an_account_gets_the_portals_language(settings, sent):
    """A bare address (a shared mailbox's, ADMINS): PKIPORTAL_LANGUAGE (LANGUAGE_CODE);
    a person mailed with it still reads their own choice."""
    settings.LANGUAGE_CODE = "de"
    person = speaks(UserFactory(email="en@example.com"), "en")
    with sent():
        notifications.mail(
            ra_notifications.STEP_SUBJECTS["ready"],
            "enrollment/email/agent_expiring.txt",
            {"agent": {"name": "KRA 1"}, "valid_agents": 1, "url": "/admin/"},
            ["box@example.com", person],
        )

    by_address = {m.to[0]: m for m in mail.outbox}
    assert (
        by_address["box@example.com"].subject
        == "Ihr Verschlüsselungsschlüssel wurde wiederhergestellt"
    )
    assert "Es ist das einzige gültige" in by_address["box@example.com"].body
    assert by_address["en@example.com"].subject == "Your encryption key was recovered"
    assert "It is the only valid one" in by_address["en@example.com"].body
