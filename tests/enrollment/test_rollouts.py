"""Roll-outs: an officer invites many people, each collects an approved request's .p12.

Who may and who may not (every page), the preview and the skip rules, hostile lists, the
whole flow through the views down to a PKCS#12 that the openssl CLI opens, reminders,
cancelling, expiry and the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
import time_machine
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django.contrib.auth.models import Group
from django.core import mail
from django.test import Client
from django.utils import timezone

from enrollment import rollouts, services
from enrollment.exceptions import InvalidState, NotPermitted, PolicyViolation, RateLimited
from enrollment.models import (
    AuditEvent,
    Certificate,
    CertificateRequest,
    Rollout,
    RolloutInvitation,
)
from enrollment.tasks import rollouts_expire_task
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.web import PASSWORD
from tests.factories import UserFactory
from tests.second_factor import verified_login

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

SLUG = "smime-signing"


@pytest.fixture
def kra(quick_kra):
    return quick_kra


@pytest.fixture
def staff(db):
    """A group of three to roll out to."""
    group = Group.objects.create(name="Finance")
    people = [
        UserFactory(username=f"fin{n}", first_name="Fin", last_name=f"Person{n}") for n in range(3)
    ]
    group.user_set.add(*people)
    return group, people


def create(officer, template, **kwargs) -> Rollout:
    kwargs.setdefault("key_algorithm", KeyAlgorithm.EC_P256)
    return rollouts.rollout_create(officer=officer, template=template, **kwargs)


# --- who may and who may not ---------------------------------------------------------

ROLES = ["officer", "agent", "employee", "colleague", "anonymous"]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    expected: dict[str, int]
    data: dict[str, str] | None = None


def allowed(*roles: str, ok: int = 200):
    return {role: 302 if role == "anonymous" else (ok if role in roles else 403) for role in ROLES}


CASES = [
    Case("list", "get", "/ra/rollouts/", allowed("officer")),
    Case("form", "get", "/ra/rollouts/new/", allowed("officer")),
    Case("preview", "post", "/ra/rollouts/new/", allowed("officer"), {"preview": "1"}),
    Case("create", "post", "/ra/rollouts/new/", allowed("officer", ok=302), {"confirm": "1"}),
    Case("detail", "get", "/ra/rollouts/{pk}/", allowed("officer")),
    Case("remind", "post", "/ra/rollouts/{pk}/remind/", allowed("officer", ok=302)),
    Case("cancel", "post", "/ra/rollouts/{pk}/cancel/", allowed("officer", ok=302)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_only_officers_may_use_the_rollout_pages(
    case, signing, officer, agent_user, employee, colleague, staff
):
    users = {
        "officer": officer,
        "agent": agent_user,
        "employee": employee,
        "colleague": colleague,
        "anonymous": None,
    }
    for role, user in users.items():
        existing = None
        if "{pk}" in case.path:  # a fresh one each time: the previous role may have ended it
            existing = create(officer, signing, people=UserFactory().username)
        path = case.path.format(pk=existing.pk if existing else 0)
        data = None
        if case.data is not None:
            data = {"template": signing.pk, "people": "alice\nbob", **case.data}
        client = client_for(user)
        response = getattr(client, case.method)(path, data)
        assert response.status_code == case.expected[role], (role, case.name)
        if role == "anonymous":
            assert "/login/" in response["Location"] or "login" in response["Location"]


def test_the_forms_need_the_csrf_token(signing, officer, staff):
    existing = create(officer, signing, people="fin0")
    client = Client(enforce_csrf_checks=True)
    verified_login(client, officer)
    for path, data in [
        ("/ra/rollouts/new/", {"template": signing.pk, "people": "fin1", "confirm": "1"}),
        (f"/ra/rollouts/{existing.pk}/remind/", {}),
        (f"/ra/rollouts/{existing.pk}/cancel/", {}),
    ]:
        assert client.post(path, data).status_code == 403
    assert Rollout.objects.count() == 1
    assert Rollout.objects.get().is_open


def test_the_console_links_to_the_rollouts(officer):
    page = client_for(officer).get("/ra/").content.decode()
    assert 'href="/ra/rollouts/"' in page


# --- preview and skip rules ----------------------------------------------------------


def test_people_outside_the_mail_domains_are_not_invited(signing, officer, settings):
    """Their collection would be refused: inviting them would only strand a request."""
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com",)
    UserFactory(username="inside", email="inside@example.com")
    UserFactory(username="outside", email="outside@example.net")

    response = client_for(officer).post(
        "/ra/rollouts/new/", {"template": signing.pk, "people": "inside\noutside", "preview": "1"}
    )

    preview = response.context["preview"]
    assert [u.username for u in preview.eligible] == ["inside"]
    assert {skip.entry: skip.reason for skip in preview.skipped} == {"outside": "outside_domains"}


def test_the_preview_reports_every_problem_and_stores_nothing(
    signing, officer, employee, colleague, staff
):
    _group, people = staff
    UserFactory(username="gone", is_active=False)
    UserFactory(username="nomail", email="")
    holder = people[0]
    services.certificate_issue_with_server_key(
        template=signing, owner=holder, key_algorithm=KeyAlgorithm.EC_P256, pkcs12_password=PASSWORD
    )
    services.request_submit(
        requester=people[1],
        template=signing,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    CertificateRequest.objects.filter(requester=people[1]).update(
        state=CertificateRequest.State.PENDING
    )
    text = "\n".join(
        ["ALICE", "bob@example.com", "alice", "nobody", "gone", "nomail", "olivia",
         "fin0", "fin1", "bad\u202ename", "x" * 300, ""]
    )  # fmt: skip
    before = (CertificateRequest.objects.count(), AuditEvent.objects.count())
    response = client_for(officer).post(
        "/ra/rollouts/new/", {"template": signing.pk, "people": text, "preview": "1"}
    )
    assert response.status_code == 200
    preview = response.context["preview"]
    assert [u.username for u in preview.eligible] == ["alice", "bob"]
    reasons = {skip.entry: skip.reason for skip in preview.skipped}
    assert reasons["alice"] == "duplicate"
    assert reasons["nobody"] == "unknown"
    assert reasons["gone"] == "inactive"
    assert reasons["nomail"] == "no_email"
    assert reasons["olivia"] == "yourself"
    assert reasons["fin0"] == "holds_valid"
    assert reasons["fin1"] == "open_request"
    assert reasons["bad\\u202ename"] == "invalid"
    assert sum(1 for r in reasons.values() if r == "invalid") == 2
    assert (CertificateRequest.objects.count(), AuditEvent.objects.count()) == before
    assert Rollout.objects.count() == 0
    assert "Invite 2 people" in response.content.decode()


def test_an_email_shared_by_two_accounts_is_ambiguous(signing, officer):
    UserFactory(username="a1", email="shared@example.com")
    UserFactory(username="a2", email="Shared@example.com")
    resolution = rollouts.rollout_resolve(
        officer=officer, template=signing, people="shared@example.com"
    )
    assert resolution.eligible == []
    assert resolution.skipped[0].reason == "ambiguous"


def test_people_outside_the_templates_groups_are_skipped(signing, officer, employee, colleague):
    allowed_group = Group.objects.create(name="Signers")
    allowed_group.user_set.add(employee)
    signing.allowed_groups.add(allowed_group)
    resolution = rollouts.rollout_resolve(officer=officer, template=signing, people="alice bob")
    assert [u.username for u in resolution.eligible] == ["alice"]
    assert resolution.skipped[0].reason == "not_permitted"


def test_the_per_person_cap_is_respected(signing, officer, employee, settings):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 0
    resolution = rollouts.rollout_resolve(officer=officer, template=signing, people="alice")
    assert resolution.skipped[0].reason == "at_limit"
    with pytest.raises(PolicyViolation, match="Nobody here can be invited"):
        create(officer, signing, people="alice")
    assert CertificateRequest.objects.count() == 0


def test_the_officer_may_choose_a_key_type_the_template_allows(signing, officer, employee):
    client = client_for(officer)
    refused = client.post(
        "/ra/rollouts/new/",
        {"template": signing.pk, "people": "alice", "key_algorithm": "rsa-3072", "confirm": "1"},
    )
    assert refused.status_code == 400
    assert "does not allow" in refused.content.decode()
    assert Rollout.objects.count() == 0
    client.post(
        "/ra/rollouts/new/",
        {"template": signing.pk, "people": "alice", "key_algorithm": "ec-p256", "confirm": "1"},
    )
    assert Rollout.objects.get().key_algorithm == "ec-p256"
    assert CertificateRequest.objects.get(requester=employee).key_algorithm == "ec-p256"


def test_a_template_that_takes_only_csrs_is_refused(signing, officer, employee):
    signing.allow_server_key = False
    signing.save()
    with pytest.raises(PolicyViolation, match="takes only CSRs"):
        create(officer, signing, people="alice")
    assert Rollout.objects.count() == 0


def test_only_officers_create_rollouts(signing, employee, colleague):
    with pytest.raises(NotPermitted):
        create(employee, signing, people="bob")
    assert CertificateRequest.objects.count() == 0


# --- hostile lists -------------------------------------------------------------------


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=3000))
def test_any_pasted_text_gets_an_answer_not_a_500(text, signing, officer):
    client = client_for(officer)
    for action in ("preview", "confirm"):
        response = client.post(
            "/ra/rollouts/new/", {"template": signing.pk, "people": text, action: "1"}
        )
        assert response.status_code in (200, 302, 400), response.status_code
    # Nobody the text could name exists but the officer, who is never invited.
    assert Rollout.objects.count() == 0
    assert CertificateRequest.objects.count() == 0


@pytest.mark.parametrize(
    "text",
    [
        "alice\x00bob",
        "\x00" * 5000,
        "\n".join(f"user-{n}@nowhere.example" for n in range(10_000)),
        "\n".join(["\u0000\ufeff\u202e\U0001f600"] * 1000),
        "a" * 200_000,
    ],
    ids=["nul", "many-nul", "10000-lines", "odd-unicode", "one-huge-entry"],
)
def test_hostile_lists_are_refused_or_reported_and_store_nothing(text, signing, officer, employee):
    response = client_for(officer).post(
        "/ra/rollouts/new/", {"template": signing.pk, "people": text, "confirm": "1"}
    )
    assert response.status_code == 400
    assert Rollout.objects.count() == 0
    assert CertificateRequest.objects.count() == 0
    assert not AuditEvent.objects.filter(action__startswith="rollout").exists()


def test_a_list_over_the_limit_is_refused_whole(signing, officer, employee, settings):
    settings.PKIPORTAL_ROLLOUT_MAX_PEOPLE = 5
    response = client_for(officer).post(
        "/ra/rollouts/new/",
        {"template": signing.pk, "people": "alice " * 6, "confirm": "1"},
    )
    assert response.status_code == 400
    assert "at most 5" in response.content.decode()
    assert CertificateRequest.objects.count() == 0


def test_a_body_over_the_upload_cap_is_a_413(signing, officer):
    response = client_for(officer).post(
        "/ra/rollouts/new/",
        {"template": signing.pk, "people": "x\n" * 200_000, "confirm": "1"},
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 413
    assert "Too large" in response.content.decode()
    assert Rollout.objects.count() == 0


# --- the whole flow ------------------------------------------------------------------


def test_officer_invites_person_collects_and_openssl_opens_it(
    signing, officer, staff, django_capture_on_commit_callbacks, openssl
):
    group, people = staff
    client = client_for(officer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/ra/rollouts/new/",
            {"template": signing.pk, "group": group.pk, "people": "", "name": "Finance Q1",
             "confirm": "1"},
        )  # fmt: skip
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    assert rollout.invited == 3
    assert response["Location"] == f"/ra/rollouts/{rollout.pk}/"
    # Approved by the officer, for a portal key: the ordinary approved-request state.
    requests = CertificateRequest.objects.filter(invitation__rollout=rollout)
    assert {r.state for r in requests} == {"approved"}
    assert {r.decided_by_id for r in requests} == {officer.pk}
    assert all(r.awaits_download for r in requests)
    assert {r.source_address for r in requests} == {None}  # the officer's is on the events
    assert {e.source_address for e in AuditEvent.objects.filter(actor=officer)} == {"127.0.0.1"}
    assert len(mail.outbox) == 3
    first = people[0]
    message = next(m for m in mail.outbox if m.to == [first.email])
    request = requests.get(requester=first)
    assert f"https://portal.example.com/enroll/requests/{request.pk}/" in message.body
    assert "Finance Q1" in message.body
    assert RolloutInvitation.objects.filter(mailed_at__isnull=False).count() == 3
    # Audited: one rollout.create with counts, one request.approve per request.
    created = AuditEvent.objects.get(action="rollout.create")
    assert created.actor_id == officer.pk
    assert created.detail["invited"] == 3
    approvals = AuditEvent.objects.filter(action="request.approve", actor=officer)
    assert {e.object_id for e in approvals} == {str(r.pk) for r in requests}

    # The person: the start page shows it, the request page takes the password.
    person = client_for(first)
    assert "You are invited to collect" in person.get("/").content.decode()
    page = person.get(f"/enroll/requests/{request.pk}/").content.decode()
    assert "invited by Olivia Officer" in page
    download = person.post(
        f"/enroll/requests/{request.pk}/",
        {"pkcs12_password": PASSWORD, "pkcs12_password_confirm": PASSWORD,
         "pkcs12_format": "modern"},
    )  # fmt: skip
    assert download.status_code == 200
    assert download["Content-Type"] == "application/x-pkcs12"
    openssl.write("mine.p12", download.content)
    openssl.run(
        "pkcs12", "-in", "mine.p12", "-passin", f"pass:{PASSWORD}", "-nokeys", "-clcerts",
        "-out", "mine.pem",
    )  # fmt: skip
    names = openssl.run("x509", "-in", "mine.pem", "-noout", "-ext", "subjectAltName")
    assert f"email:{first.email}" in names.stdout.decode()
    key = openssl.run("pkcs12", "-in", "mine.p12", "-passin", f"pass:{PASSWORD}", "-nocerts",
                      "-nodes")  # fmt: skip
    assert b"PRIVATE KEY" in key.stdout
    request.refresh_from_db()
    assert request.state == "issued"
    counts = rollouts.rollout_counts(rollout)
    assert counts["collected"] == 1
    assert counts["invited"] == 2
    detail = client.get(f"/ra/rollouts/{rollout.pk}/").content.decode()
    assert "collected" in detail


def test_a_person_declines_by_withdrawing(signing, officer, employee, colleague):
    rollout = create(officer, signing, people="alice bob")
    request = CertificateRequest.objects.get(requester=employee)
    path = f"/enroll/requests/{request.pk}/withdraw/"
    # Only the invited person declines; the colleague is told it does not exist.
    assert client_for(colleague).post(path, {"confirm": "on"}).status_code == 404
    response = client_for(employee).post(path, {"confirm": "on"})
    assert response.status_code == 302
    request.refresh_from_db()
    assert request.state == "withdrawn"
    assert request.invitation.status == "declined"
    assert rollouts.rollout_counts(rollout)["declined"] == 1
    assert "Invitation declined" in client_for(employee).get("/certificates/").content.decode()


def test_the_enrolment_rate_limit_does_not_block_collecting(signing, officer, employee, settings):
    create(officer, signing, people="alice")
    settings.PKIPORTAL_ENROLL_RATE_PER_HOUR = 0
    request = CertificateRequest.objects.get(requester=employee)
    certificate, _bundle = services.request_collect(
        request=request, actor=employee, pkcs12_password=PASSWORD
    )
    assert certificate.owner_id == employee.pk


def test_many_people_are_invited_with_few_statements(
    signing, officer, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    """26 statements on PostgreSQL. SQLite takes at most 999 parameters a statement, so
    its bulk inserts come in ~50 rows (61 statements since requests gained a column)."""
    from django.db import connection

    from accounts.models import User

    User.objects.bulk_create(
        [User(username=f"bulk{n}", email=f"bulk{n}@example.com", first_name="B", last_name=str(n))
         for n in range(1200)]
    )  # fmt: skip
    text = "\n".join(f"bulk{n}" for n in range(1200))
    with (
        django_capture_on_commit_callbacks(execute=False) as queued,
        django_assert_max_num_queries(30 if connection.vendor == "postgresql" else 70),
    ):
        rollout = create(officer, signing, people=text)
    assert rollout.invited == 1200
    assert AuditEvent.objects.filter(action="request.approve").count() == 1200
    assert len(queued) == 1  # the mail is queued, not sent inside the request
    assert len(mail.outbox) == 0
    from django.core.management import call_command

    call_command("verify_audit_chain")


# --- reminders, cancel, expiry -------------------------------------------------------


def test_reminders_go_to_those_who_have_not_collected_and_are_rate_limited(
    signing, officer, employee, colleague, django_capture_on_commit_callbacks
):
    rollout = create(officer, signing, people="alice bob")
    services.request_collect(
        request=CertificateRequest.objects.get(requester=employee),
        actor=employee,
        pkcs12_password=PASSWORD,
    )
    mail.outbox.clear()
    client = client_for(officer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/ra/rollouts/{rollout.pk}/remind/")
    assert response.status_code == 302
    assert [m.to for m in mail.outbox] == [[colleague.email]]
    assert mail.outbox[0].subject.startswith("Reminder")
    again = client.post(f"/ra/rollouts/{rollout.pk}/remind/")
    assert again.status_code == 429
    with pytest.raises(RateLimited):
        rollouts.rollout_remind(rollout=rollout, officer=officer)
    assert AuditEvent.objects.filter(action="rollout.remind").count() == 1


def test_cancel_withdraws_what_was_not_collected(signing, officer, employee, colleague):
    rollout = create(officer, signing, people="alice bob")
    mine = CertificateRequest.objects.get(requester=employee)
    certificate, _ = services.request_collect(
        request=mine, actor=employee, pkcs12_password=PASSWORD
    )
    response = client_for(officer).post(f"/ra/rollouts/{rollout.pk}/cancel/")
    assert response.status_code == 302
    rollout.refresh_from_db()
    assert rollout.state == "cancelled"
    assert rollout.ended_by_id == officer.pk
    theirs = CertificateRequest.objects.get(requester=colleague)
    assert theirs.state == "withdrawn"
    assert theirs.invitation.status == "cancelled"
    assert Certificate.objects.get(pk=certificate.pk).status == "valid"
    assert AuditEvent.objects.get(action="rollout.cancel").detail["withdrawn"] == 1
    withdrawn = AuditEvent.objects.get(action="request.withdraw")
    assert withdrawn.object_id == str(theirs.pk)
    assert withdrawn.actor_id == officer.pk
    with pytest.raises(InvalidState):
        services.request_collect(request=theirs, actor=colleague, pkcs12_password=PASSWORD)
    assert client_for(officer).post(f"/ra/rollouts/{rollout.pk}/cancel/").status_code == 400


def test_uncollected_invitations_expire(signing, officer, employee, colleague, settings, task_at):
    rollout = create(officer, signing, people="alice bob")
    services.request_collect(
        request=CertificateRequest.objects.get(requester=employee),
        actor=employee,
        pkcs12_password=PASSWORD,
    )
    assert task_at(rollouts_expire_task, timezone.now() + timedelta(days=29)) == 0
    later = timezone.now() + timedelta(days=settings.PKIPORTAL_ROLLOUT_EXPIRY_DAYS, hours=1)
    assert task_at(rollouts_expire_task, later) == 1
    rollout.refresh_from_db()
    assert rollout.state == "expired"
    counts = rollouts.rollout_counts(rollout)
    assert counts == {"invited": 0, "collected": 1, "declined": 0, "cancelled": 0,
                      "expired": 1, "failed": 0}  # fmt: skip
    event = AuditEvent.objects.get(action="request.expire")
    assert event.actor_id is None
    assert event.actor_name == "system"
    assert task_at(rollouts_expire_task, later) == 0


def test_the_expiry_task_is_scheduled():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["rollouts-expire"]
    assert entry["task"] == "enrollment.tasks.rollouts_expire_task"


def test_no_password_reaches_the_database_or_the_audit(signing, officer, employee):
    create(officer, signing, people="alice")
    request = CertificateRequest.objects.get(requester=employee)
    client_for(employee).post(
        f"/enroll/requests/{request.pk}/",
        {"pkcs12_password": PASSWORD, "pkcs12_password_confirm": PASSWORD,
         "pkcs12_format": "modern"},
    )  # fmt: skip
    from tests.enrollment.web import audit_text

    assert PASSWORD not in audit_text()
    assert PASSWORD not in str(list(Rollout.objects.values()))


def test_a_name_that_is_one_accounts_user_name_and_anothers_address_is_ambiguous(signing, officer):
    """Where sign-in names look like addresses, "carol@example.com" must not invite whoever
    happens to have that address."""
    UserFactory(username="carol@example.com", email="carol.c@example.com")
    UserFactory(username="mallory", email="carol@example.com")

    response = client_for(officer).post(
        "/ra/rollouts/new/",
        {"template": signing.pk, "people": "carol@example.com", "preview": "1"},
    )

    preview = response.context["preview"]
    assert preview.eligible == []
    assert [(skip.entry, skip.reason) for skip in preview.skipped] == [
        ("carol@example.com", "ambiguous")
    ]


def test_people_a_narrower_ca_cannot_certify_are_not_invited(signing, officer, settings, hierarchy):
    """The setting allows example.org, but the CA was constrained to example.com."""
    from enrollment import keystore

    constrained = services.issuing_ca_create(
        spec=services.CaSpec("Narrow CA", "narrow", KeyAlgorithm.EC_P256, 1825),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
        mail_domains=("example.com",),
    )
    services.issuing_ca_switch(to=constrained)
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com", "example.org")
    UserFactory(username="dora", email="dora@example.org")
    UserFactory(username="eve", email="eve@example.com")

    response = client_for(officer).post(
        "/ra/rollouts/new/", {"template": signing.pk, "people": "dora eve", "preview": "1"}
    )

    preview = response.context["preview"]
    assert [u.username for u in preview.eligible] == ["eve"]
    assert {s.entry: s.reason for s in preview.skipped} == {"dora": "outside_domains"}


def test_a_person_whose_address_is_a_shared_mailboxs_is_not_invited(signing, officer):
    """A directory sync can give an account finance@ after the mailbox was made; collecting
    would be refused (services.mailbox_address_taken), so the invitation would strand."""
    from enrollment.models import SharedMailbox

    SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    SharedMailbox.objects.create(
        email="old@example.com", display_name="Old", is_active=False, deactivated_at=timezone.now()
    )
    UserFactory(username="frank", email=" Finance@Example.com")
    UserFactory(username="olga", email="old@example.com")  # the mailbox is switched off
    UserFactory(username="eve", email="eve@example.com")

    response = client_for(officer).post(
        "/ra/rollouts/new/",
        {"template": signing.pk, "people": "frank olga eve", "preview": "1"},
    )

    preview = response.context["preview"]
    assert [u.username for u in preview.eligible] == ["olga", "eve"]
    assert [(s.entry, s.reason) for s in preview.skipped] == [("frank", "shared_mailbox")]
    assert "shared mailbox" in response.content.decode()
    rollout = create(officer, signing, people="finance@example.com eve")
    assert rollout.invited == 1
    assert not CertificateRequest.objects.filter(requester__username="frank").exists()


def test_a_leaver_is_not_mailed_an_invitation(signing, officer, django_capture_on_commit_callbacks):
    ann = UserFactory(username="ann", email="ann@example.com")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        rollouts.rollout_create(officer=officer, template=signing, people="ann")
    ann.is_active = False
    ann.save()
    mail.outbox.clear()
    for callback in queued:
        callback()

    assert not [m for m in mail.outbox if m.to == ["ann@example.com"]]


def test_a_worker_that_dies_mid_chunk_does_not_mail_anyone_twice(
    signing, officer, monkeypatch, django_capture_on_commit_callbacks
):
    """Marked one by one as they go: the redelivered task mails only those left."""
    from django.core.mail import EmailMessage

    for name in ("ann", "ben", "cat"):
        UserFactory(username=name, email=f"{name}@example.com")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        rollout = rollouts.rollout_create(officer=officer, template=signing, people="ann ben cat")
    ids = list(rollout.invitations.order_by("pk").values_list("pk", flat=True))
    real_send = EmailMessage.send
    sent_before_death = []

    def dies_at_the_second(message, *args, **kwargs):
        if len(sent_before_death) == 1:
            raise KeyboardInterrupt  # the worker killed: not an Exception the loop catches
        sent_before_death.append(message.to)
        return real_send(message, *args, **kwargs)

    monkeypatch.setattr(EmailMessage, "send", dies_at_the_second)
    mail.outbox.clear()
    with pytest.raises(KeyboardInterrupt):
        rollouts.rollout_mail_send(invitation_ids=ids, kind="invite")
    monkeypatch.setattr(EmailMessage, "send", real_send)

    rollouts.rollout_mail_send(invitation_ids=ids, kind="invite")  # redelivered

    recipients = sorted(address for m in mail.outbox for address in m.to)
    assert recipients == ["ann@example.com", "ben@example.com", "cat@example.com"]
    assert len(queued) >= 1  # the original chunk was queued, not sent inline here


def test_a_roll_out_past_its_end_is_not_reminded_before_the_sweep(signing, officer):
    UserFactory(username="ann", email="ann@example.com")
    rollout = rollouts.rollout_create(officer=officer, template=signing, people="ann")
    mail.outbox.clear()

    later = time_machine.travel(rollout.expires_at + timedelta(minutes=5), tick=False)
    with later, pytest.raises(InvalidState, match="run out"):
        rollouts.rollout_remind(rollout=rollout, officer=officer)

    assert not mail.outbox
