"""Officer scopes on the certificate side: a scoped officer (Olivia, for Sales) finds,
lists, counts and revokes the certificates of the people the scope covers (Alice, and the
members of "Sales people") and none of anyone else's (Bob, in Engineering; shared
mailboxes; certificates held by nobody), while her own stay hers to revoke. Refused in
the service, so every way in (the RA page, the API, leavers' "revoke all") refuses alike
and changes nothing; the system and superusers are not limited."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine

from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from enrollment import bulk_revoke, leavers, mailboxes, outdated, scopes, services
from enrollment.exceptions import NotPermitted
from enrollment.models import AuditEvent, Certificate, CrlEntry, SharedMailbox
from tests.conftest import client_for
from tests.enrollment.api_tools import CERTIFICATES, certificate_url, token_client
from tests.enrollment.test_ra_search import plan_nodes
from tests.enrollment.tools import as_staff, issue, new_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

REFUSED = "outside the people your officer scope covers"
GRACE = timedelta(hours=72)


@pytest.fixture(autouse=True)
def _grace(settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN = 50


@pytest.fixture
def certs(sales_scope, hierarchy, template, employee, colleague, officer):
    """One valid certificate each: Alice's (in Sales), Bob's (Engineering), Olivia's own
    (she is in no unit her scope names), and Mia's (Marketing, but in "Sales people")."""
    mia = UserFactory(username="mia", first_name="Mia", last_name="Member")
    mia.organizational_unit = "Marketing"
    mia.save()
    mia.groups.add(sales_scope.people)
    signing = template("smime-signing")
    return {
        "alice": issue(employee, signing, new_key()),
        "bob": issue(colleague, signing, new_key()),
        "olivia": issue(officer, signing, new_key()),
        "mia": issue(mia, signing, new_key()),
    }


@pytest.fixture
def unscoped(second_officer):
    """Oscar: an RA officer in no scope's group, who acts for everyone."""
    return second_officer


@pytest.fixture
def finance(db):
    return SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")


def boxed(certificate: Certificate, mailbox: SharedMailbox) -> Certificate:
    """The certificate made a shared mailbox's (no owner)."""
    Certificate.objects.filter(pk=certificate.pk).update(owner=None, mailbox=mailbox)
    return Certificate.objects.get(pk=certificate.pk)


def unchanged(certificate: Certificate) -> bool:
    """Nothing of a revocation happened: still valid, no CRL entry, no audit event."""
    fresh = Certificate.objects.get(pk=certificate.pk)
    return (
        fresh.status == Certificate.Status.VALID
        and fresh.revoked_at is None
        and fresh.queued_for_crl_at is None
        and not CrlEntry.objects.filter(pk=certificate.pk).exists()
        and not AuditEvent.objects.filter(
            action="certificate.revoke", object_id=str(certificate.pk)
        ).exists()
    )


def revoked(certificate: Certificate) -> bool:
    return Certificate.objects.get(pk=certificate.pk).status == Certificate.Status.REVOKED


def fresh_reach(user) -> scopes.Reach:
    scopes.forget_reach(user)
    return scopes.reach_of(user)


# --- the service ------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["superseded", "keyCompromise"])
def test_a_scoped_officer_may_not_revoke_a_certificate_outside_the_scope(
    officer, certs, reason, django_capture_on_commit_callbacks
):
    bob = certs["bob"]

    with (
        django_capture_on_commit_callbacks() as queued,
        pytest.raises(NotPermitted) as refused,
    ):
        services.certificate_revoke(certificate=bob, reason=reason, actor=officer)

    assert REFUSED in refused.value.message
    assert "Bob" not in refused.value.message
    assert "bob" not in refused.value.message
    assert unchanged(bob)
    assert queued == []  # no CRL task, no LDAP publication, no mail
    # A refused keyCompromise does not mark the key compromised either.
    assert not services._key_compromised(bob.certificate.public_key())


@pytest.mark.parametrize("whose", ["alice", "mia"])
def test_a_scoped_officer_revokes_the_certificates_of_the_people_the_scope_covers(
    officer, certs, whose
):
    services.certificate_revoke(certificate=certs[whose], reason="superseded", actor=officer)

    assert revoked(certs[whose])
    event = AuditEvent.objects.get(action="certificate.revoke", object_id=str(certs[whose].pk))
    assert event.actor == officer


def test_a_scoped_officers_own_certificate_stays_theirs_to_revoke(officer, certs):
    assert not fresh_reach(officer).covers(officer)  # she is in no unit the scope names

    services.certificate_revoke(certificate=certs["olivia"], reason="superseded", actor=officer)

    assert revoked(certs["olivia"])


def test_a_shared_mailboxs_certificate_is_only_for_officers_who_act_for_everyone(
    officer, unscoped, certs, finance
):
    shared = boxed(certs["alice"], finance)

    with pytest.raises(NotPermitted, match=REFUSED):
        services.certificate_revoke(certificate=shared, reason="superseded", actor=officer)
    assert unchanged(shared)

    services.certificate_revoke(certificate=shared, reason="superseded", actor=unscoped)
    assert revoked(shared)


def test_a_scoped_officer_who_reads_a_mailbox_revokes_its_certificate_as_its_holder(
    officer, certs, finance
):
    finance.delegates.add(officer)
    shared = boxed(certs["bob"], finance)

    services.certificate_revoke(certificate=shared, reason="superseded", actor=officer)

    assert revoked(shared)


def test_a_certificate_held_by_nobody_is_only_for_officers_who_act_for_everyone(
    officer, unscoped, certs
):
    Certificate.objects.filter(pk=certs["alice"].pk).update(owner=None)
    nobodys = Certificate.objects.get(pk=certs["alice"].pk)

    with pytest.raises(NotPermitted, match=REFUSED):
        services.certificate_revoke(certificate=nobodys, reason="superseded", actor=officer)
    assert unchanged(nobodys)

    services.certificate_revoke(certificate=nobodys, reason="superseded", actor=unscoped)
    assert revoked(nobodys)


@pytest.mark.parametrize("who", ["unscoped", "admin_user", None])
def test_officers_who_act_for_everyone_superusers_and_the_system_are_not_limited(
    request, certs, sales_scope, who
):
    actor = request.getfixturevalue(who) if who else None
    if who == "admin_user":
        sales_scope.officers.user_set.add(actor)  # a superuser in a scope's group still

    services.certificate_revoke(certificate=certs["bob"], reason="superseded", actor=actor)

    assert revoked(certs["bob"])


def test_an_employee_still_revokes_only_their_own(employee, certs):
    with pytest.raises(NotPermitted, match="only revoke your own"):
        services.certificate_revoke(certificate=certs["bob"], reason="superseded", actor=employee)
    assert unchanged(certs["bob"])


def test_the_revoke_cert_command_revokes_anyones(certs):
    call_command("revoke_cert", certs["bob"].serial, "--reason", "superseded")

    assert revoked(certs["bob"])


# --- /ra/certificates/ -------------------------------------------------------------------


def found_on_page(client, **query) -> list[int]:
    response = client.get(reverse("ra:certificates"), query)
    assert response.status_code == 200
    return [c.pk for c in response.context["results"]]


def test_a_scoped_officer_finds_only_the_certificates_the_scope_covers(officer, certs):
    client = client_for(officer)

    assert found_on_page(client, q="example") == [certs["mia"].pk, certs["alice"].pk]
    assert found_on_page(client, q="bob") == []
    assert found_on_page(client, q=certs["bob"].serial) == []
    assert found_on_page(client, q=certs["bob"].fingerprint_sha256) == []
    page = client.get(reverse("ra:certificates"), {"q": "bob"}).content.decode()
    assert "No certificate matches." in page
    assert "Brown" not in page  # Bob's name appears nowhere, nor a count of the hidden
    assert "Your officer scope: <strong>Sales</strong>" in page


@pytest.mark.parametrize("who", ["unscoped", "admin_user"])
def test_officers_who_act_for_everyone_find_every_certificate(request, certs, who):
    client = client_for(request.getfixturevalue(who))

    assert set(found_on_page(client, q="example")) == {c.pk for c in certs.values()}
    page = client.get(reverse("ra:certificates"), {"q": "bob"}).content.decode()
    assert "Your officer scope" not in page


def test_an_account_outside_the_scope_is_as_one_that_does_not_exist(officer, colleague, certs):
    client = client_for(officer)

    response = client.get(reverse("ra:certificates"), {"owner": colleague.pk})

    assert response.context["results"] == []
    assert response.context["owner"] is None
    assert "Brown" not in response.content.decode()
    assert found_on_page(client, owner=certs["alice"].owner_id) == [certs["alice"].pk]


@pytest.mark.parametrize(("who", "status"), [("employee", 403), (None, 302)])
def test_who_may_not_search_at_all(request, certs, who, status):
    user = request.getfixturevalue(who) if who else None

    response = client_for(user).get(reverse("ra:certificates"), {"q": "example"})

    assert response.status_code == status


def test_the_search_costs_the_same_queries_for_one_result_or_many(officer, certs, template):
    """The scope is a condition in the search's SQL: no query per certificate found."""
    client = client_for(officer)
    client.get(reverse("ra:certificates"), {"q": "alice"})  # the session's first reads

    with CaptureQueriesContext(connection) as one:
        assert len(found_on_page(client, q="alice")) == 1
    for _ in range(4):
        issue(certs["alice"].owner, template("smime-signing"), new_key())
    with CaptureQueriesContext(connection) as five:
        assert len(found_on_page(client, q="alice")) == 5

    assert len(five.captured_queries) == len(one.captured_queries)


def revoke_on_page(client, certificate, **data):
    body = {"reason": "superseded", "confirm": "on", "q": "example", **data}
    return client.post(reverse("ra:certificate-revoke", args=[certificate.pk]), body)


@pytest.mark.parametrize("body", [{}, {"reason": "", "confirm": ""}])
def test_revoking_outside_the_scope_on_the_page_is_403_and_changes_nothing(officer, certs, body):
    """Refused before the form is read: an invalid form gets the same 403, never a page
    showing the certificate it was for."""
    response = revoke_on_page(client_for(officer), certs["bob"], **body)

    assert response.status_code == 403
    page = response.content.decode()
    assert REFUSED in page
    assert "Brown" not in page
    assert certs["bob"].serial not in page
    assert unchanged(certs["bob"])


def test_revoking_inside_the_scope_on_the_page_revokes(officer, certs):
    response = revoke_on_page(client_for(officer), certs["alice"])

    assert response.status_code == 302
    assert revoked(certs["alice"])


@pytest.mark.parametrize(("who", "status"), [("unscoped", 302), ("admin_user", 302)])
def test_officers_who_act_for_everyone_revoke_anyone_on_the_page(request, certs, who, status):
    response = revoke_on_page(client_for(request.getfixturevalue(who)), certs["bob"])

    assert response.status_code == status
    assert revoked(certs["bob"])


@pytest.mark.parametrize(("who", "status"), [("employee", 403), (None, 302)])
def test_who_may_not_revoke_on_the_page(request, certs, who, status):
    user = request.getfixturevalue(who) if who else None

    response = revoke_on_page(client_for(user), certs["alice"])

    assert response.status_code == status
    assert unchanged(certs["alice"])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plans are PostgreSQL's")
def test_a_scoped_search_still_reads_the_certificate_indexes(officer, certs):
    """The scope is one more condition on the holder: the certificates still come from
    index scans (the plan asked for with bitmap scans only, as test_ra_search does), the
    search's own or the holder's (cert_owner_template_idx, when the planner starts from
    the people the scope covers), never from reading the table."""

    reach = fresh_reach(officer)
    for text in ("andersson", "alice", certs["alice"].serial):
        nodes = plan_nodes(text, reach)
        scans = [n for n in nodes if n.get("Relation Name") == "enrollment_certificate"]
        assert [n["Node Type"] for n in scans] == ["Bitmap Heap Scan"], (text, scans)
        used = {n["Index Name"] for n in nodes if "Index Name" in n}
        assert any(name.startswith("cert_") for name in used), (text, used)


# --- the certificate's page ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("whose", "status"), [("alice", 200), ("mia", 200), ("olivia", 200), ("bob", 404)]
)
def test_a_scoped_officer_sees_the_pages_of_the_certificates_the_scope_covers(
    officer, certs, whose, status
):
    """Outside the scope a certificate's page answers as it does for a colleague: 404."""
    client = client_for(officer)

    for url in (
        f"/certificates/{certs[whose].pk}/",
        f"/certificates/{certs[whose].pk}/download/cer/",
    ):
        assert client.get(url).status_code == status


def test_a_colleague_gets_the_same_404(colleague, certs):
    assert client_for(colleague).get(f"/certificates/{certs['alice'].pk}/").status_code == 404


# --- the API --------------------------------------------------------------------------------


def listed(client, **query) -> set[str]:
    response = client.get(CERTIFICATES, query)
    assert response.status_code == 200
    return {item["serial"] for item in response.json()["results"]}


def test_a_scoped_officer_lists_their_own_and_those_the_scope_covers(officer, certs):
    client = token_client(officer)

    assert listed(client) == {certs[who].serial for who in ("alice", "mia", "olivia")}
    assert listed(client, owner="bob") == set()
    assert listed(client, serial=certs["bob"].serial) == set()


def test_a_scoped_officer_lists_the_mailboxes_they_read_too(officer, certs, finance):
    finance.delegates.add(officer)
    shared = boxed(certs["bob"], finance)

    assert shared.serial in listed(token_client(officer))


@pytest.mark.parametrize("who", ["unscoped", "admin_user"])
def test_officers_who_act_for_everyone_list_everyones(request, certs, who):
    assert listed(token_client(request.getfixturevalue(who))) == {c.serial for c in certs.values()}


def test_an_employee_lists_their_own_as_before(employee, certs):
    assert listed(token_client(employee)) == {certs["alice"].serial}


@pytest.mark.parametrize(
    ("who", "whose", "status"),
    [
        ("officer", "alice", 200),
        ("officer", "olivia", 200),
        ("officer", "bob", 404),  # as for a colleague: it does not exist for them
        ("employee", "bob", 404),
        ("unscoped", "bob", 200),
        ("admin_user", "bob", 200),
        (None, "alice", 401),
    ],
)
def test_who_may_fetch_a_certificate_under_a_scope(request, certs, who, whose, status):
    client = token_client(request.getfixturevalue(who) if who else None)

    assert client.get(certificate_url(certs[whose].serial)).status_code == status


def revoke_by_api(client, certificate, **body):
    return client.post(
        certificate_url(certificate.serial) + "revoke/",
        {"reason": "superseded", **body},
        format="json",
    )


@pytest.mark.parametrize("body", [{}, {"reason": "no such reason"}])
def test_a_scoped_officer_revoking_outside_the_scope_by_api_is_403_and_changes_nothing(
    officer, certs, body
):
    response = revoke_by_api(token_client(officer), certs["bob"], **body)

    assert response.status_code == 403
    assert REFUSED in response.json()["detail"]
    assert "bob" not in response.json()["detail"].lower()
    assert unchanged(certs["bob"])


@pytest.mark.parametrize(
    ("who", "whose", "status"),
    [
        ("officer", "alice", 200),
        ("officer", "mia", 200),
        ("officer", "olivia", 200),
        ("unscoped", "bob", 200),
        ("admin_user", "bob", 200),
        ("employee", "bob", 404),
        (None, "bob", 401),
    ],
)
def test_who_may_revoke_by_api_under_a_scope(request, certs, who, whose, status):
    client = token_client(request.getfixturevalue(who) if who else None)

    response = revoke_by_api(client, certs[whose])

    assert response.status_code == status
    assert revoked(certs[whose]) == (status == 200)


# --- leavers and old addresses --------------------------------------------------------------


@pytest.fixture
def gone(certs, employee, colleague):
    """Alice and Bob left an hour ago; both still hold their certificates."""
    with time_machine.travel(timezone.now() - timedelta(hours=1), tick=False):
        for person in (employee, colleague):
            person.is_active = False
            person.save()
    return employee, colleague


def test_a_scoped_officer_sees_and_counts_only_the_leavers_the_scope_covers(officer, gone):
    client = client_for(officer)

    page = client.get(reverse("ra:leavers"))
    console = client.get(reverse("ra:console"))

    assert [leaver.username for leaver in page.context["leavers"]] == ["alice"]
    assert "Brown" not in page.content.decode()
    assert "Your officer scope: <strong>Sales</strong>" in page.content.decode()
    assert console.context["leaver_count"] == 1


def test_officers_who_act_for_everyone_see_every_leaver(unscoped, gone):
    client = client_for(unscoped)

    page = client.get(reverse("ra:leavers"))

    assert {leaver.username for leaver in page.context["leavers"]} == {"alice", "bob"}
    assert client.get(reverse("ra:console")).context["leaver_count"] == 2


@pytest.mark.parametrize("body", [{"confirm": "on"}, {}])
def test_revoking_all_of_a_leaver_outside_the_scope_is_403_and_changes_nothing(
    officer, gone, certs, body
):
    _alice, bob = gone

    response = client_for(officer).post(reverse("ra:leaver-revoke", args=[bob.pk]), body)

    assert response.status_code == 403
    assert REFUSED in response.content.decode()
    assert unchanged(certs["bob"])
    assert not AuditEvent.objects.filter(action="leaver.revoke").exists()


def test_revoking_all_of_a_leaver_inside_the_scope_revokes(officer, gone, certs):
    alice, _bob = gone

    response = client_for(officer).post(
        reverse("ra:leaver-revoke", args=[alice.pk]), {"confirm": "on"}
    )

    assert response.status_code == 302
    assert revoked(certs["alice"])
    assert AuditEvent.objects.get(action="leaver.revoke").actor == officer


def test_the_leaver_service_refuses_outside_the_scope(officer, gone, certs):
    _alice, bob = gone

    with pytest.raises(NotPermitted, match=REFUSED):
        leavers.leaver_revoke(user=bob, actor=officer)

    assert unchanged(certs["bob"])


def test_the_hourly_run_revokes_every_leaver_whatever_the_scopes(officer, gone, certs):
    with time_machine.travel(timezone.now() + GRACE, tick=False):
        outcome = leavers.leavers_revoke()

    assert outcome.revoked_accounts == 2
    assert revoked(certs["alice"])
    assert revoked(certs["bob"])


@pytest.fixture
def moved(certs, employee, colleague):
    """Alice and Bob changed address an hour ago, after their certificates were issued;
    the hourly run found their certificates."""
    earlier = timezone.now() - timedelta(hours=2)
    Certificate.objects.filter(pk__in=[certs["alice"].pk, certs["bob"].pk]).update(
        created_at=earlier
    )
    with time_machine.travel(timezone.now() - timedelta(hours=1), tick=False):
        for person in (employee, colleague):
            person.email = f"new.{person.username}@example.com"
            person.save()
    outdated.outdated_sync(now=timezone.now(), delay=GRACE)
    return certs["alice"], certs["bob"]


def test_a_scoped_officer_sees_and_counts_only_the_old_addresses_the_scope_covers(
    officer, unscoped, moved
):
    alices, _bobs = moved
    scoped = client_for(officer)

    page = scoped.get(reverse("ra:leavers"))

    assert [item.certificate.pk for item in page.context["outdated"]] == [alices.pk]
    assert scoped.get(reverse("ra:console")).context["outdated_count"] == 1
    assert client_for(unscoped).get(reverse("ra:console")).context["outdated_count"] == 2


def test_the_hourly_run_revokes_every_old_address_whatever_the_scopes(officer, moved):
    alices, bobs = moved

    with time_machine.travel(timezone.now() + GRACE, tick=False):
        leavers.leavers_revoke()

    assert revoked(alices)
    assert revoked(bobs)


def test_what_waits_for_no_scheduler_counts_the_scopes_people_and_no_mailbox(
    officer, gone, finance, certs
):
    """Without a broker (the tests' default) nothing runs on a schedule."""
    closed = issue(UserFactory(), certs["alice"].template, new_key())
    boxed(closed, finance)
    mailboxes.mailbox_set_active(mailbox=finance, active=False)
    reach = fresh_reach(officer)

    assert leavers.waiting_without_scheduler(reach=reach) == [
        "1 deactivated account(s) still holding certificates"
    ]
    assert len(leavers.waiting_without_scheduler()) == 2  # everyone's, and the mailbox


# --- shared mailboxes -----------------------------------------------------------------------


def test_a_scoped_officer_is_told_mailboxes_are_not_theirs_on_an_empty_page(
    officer, sales_scope, finance
):
    response = client_for(officer).get(reverse("ra:mailboxes"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "finance@example.com" not in page
    assert "your officer scope (Sales) does not cover them" in page
    assert 'id="new"' not in page  # no form to create one


@pytest.mark.parametrize("who", ["unscoped", "admin_user"])
def test_officers_who_act_for_everyone_see_every_mailbox(request, sales_scope, finance, who):
    page = client_for(request.getfixturevalue(who)).get(reverse("ra:mailboxes"))

    assert "finance@example.com" in page.content.decode()


def test_a_scoped_officer_may_not_handle_a_mailbox_on_the_pages(officer, sales_scope, finance):
    client = client_for(officer)

    created = client.post(
        reverse("ra:mailboxes"), {"email": "hr@example.com", "display_name": "HR"}
    )
    opened = client.get(reverse("ra:mailbox-detail", args=[finance.pk]))
    renamed = client.post(
        reverse("ra:mailbox-detail", args=[finance.pk]), {"display_name": "Money", "delegates": ""}
    )
    closed = client.post(
        reverse("ra:mailbox-active", args=[finance.pk]), {"active": "0", "confirm": "on"}
    )

    assert [r.status_code for r in (created, opened, renamed, closed)] == [403] * 4
    assert "A shared mailbox is outside the people your officer scope covers" in (
        opened.content.decode()
    )
    finance.refresh_from_db()
    assert (finance.display_name, finance.is_active) == ("Finance", True)
    assert not SharedMailbox.objects.filter(email="hr@example.com").exists()
    assert not AuditEvent.objects.filter(action__startswith="mailbox.").exists()


def test_the_mailbox_services_refuse_a_scoped_officer(officer, sales_scope, finance, unscoped):
    with pytest.raises(NotPermitted, match="outside the people your officer scope covers"):
        mailboxes.mailbox_create(
            email="hr@example.com", display_name="HR", delegates=[], actor=officer
        )
    with pytest.raises(NotPermitted):
        mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)

    assert mailboxes.mailbox_set_active(
        mailbox=finance, active=False, actor=unscoped
    ).deactivated_at


def test_the_mailbox_api_treats_a_scoped_officer_as_a_delegate(officer, sales_scope, finance):
    reads = SharedMailbox.objects.create(email="sales@example.com", display_name="Sales")
    reads.delegates.add(officer)
    client = token_client(officer)

    listed = client.get("/api/v1/mailboxes/").json()
    created = client.post(
        "/api/v1/mailboxes/",
        {"email": "hr@example.com", "display_name": "HR", "delegates": []},
        format="json",
    )
    closed = client.post(f"/api/v1/mailboxes/{finance.pk}/deactivate/")

    assert [m["email"] for m in listed["results"]] == ["sales@example.com"]
    assert created.status_code == closed.status_code == 403
    assert "officer scope" in created.json()["detail"]
    assert not SharedMailbox.objects.filter(email="hr@example.com").exists()
    finance.refresh_from_db()
    assert finance.is_active


def test_the_mailbox_admin_actions_are_not_offered_to_a_scoped_officer(officer, sales_scope):
    staff = as_staff(officer, "view_sharedmailbox")

    form = client_for(staff).get("/admin/enrollment/sharedmailbox/").context["action_form"]

    offered = set() if form is None else {value for value, _ in form.fields["action"].choices}
    assert not offered & {"deactivate", "reactivate"}


# --- the admin: for those who act for everyone ------------------------------------------------


def test_the_admins_bulk_revocation_is_not_offered_to_a_scoped_officer(officer, certs):
    staff = as_staff(officer, "view_certificate")
    client = client_for(staff)

    form = client.get("/admin/enrollment/certificate/").context["action_form"]
    offered = set() if form is None else {value for value, _ in form.fields["action"].choices}
    asked = client.post(
        "/admin/enrollment/certificate/",
        {"action": "revoke", "_selected_action": [str(certs["bob"].pk)]},
    )

    assert "revoke" not in offered
    assert not bulk_revoke.may_revoke_in_bulk(staff)
    assert unchanged(certs["bob"])
    assert asked.status_code in (200, 302)  # the admin ignores an action it does not offer
    with pytest.raises(NotPermitted, match="act for everyone"):
        bulk_revoke.bulk_revoke_start(ids=[certs["bob"].pk], reason="superseded", actor=staff)


@pytest.mark.parametrize("who", ["unscoped", "admin_user"])
def test_the_admins_bulk_revocation_serves_those_who_act_for_everyone(request, certs, who):
    staff = as_staff(request.getfixturevalue(who), "view_certificate")

    assert bulk_revoke.may_revoke_in_bulk(staff)


def test_a_run_whose_officer_was_given_a_scope_stops(unscoped, certs, sales_scope):
    staff = as_staff(unscoped, "view_certificate")
    run = bulk_revoke.bulk_revoke_start(
        ids=[certs["bob"].pk, certs["alice"].pk], reason="superseded", actor=staff
    )
    sales_scope.officers.user_set.add(staff)  # scoped before the batch comes

    bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)

    assert unchanged(certs["bob"])
    assert unchanged(certs["alice"])
    run.refresh_from_db()
    assert "may no longer revoke certificates from the admin" in run.error
