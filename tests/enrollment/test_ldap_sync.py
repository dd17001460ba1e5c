"""The directory leavers' sync against a real slapd (tests/slapd.py): people removed from the
directory or disabled there become leavers; a directory that cannot be read, or reads as
everyone gone, deactivates nobody. Entries are written with ldap-utils; nothing is mocked.
"""

from __future__ import annotations

import logging
import signal
from datetime import timedelta
from io import StringIO

import pytest
import time_machine

from django.core.management import CommandError, call_command
from django.utils import timezone

from enrollment import ldap_sync
from enrollment.models import AuditEvent, LdapSyncRun
from enrollment.tasks import ldap_sync_leavers_task
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.net import free_port
from tests.slapd import AD_DISABLED, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, SUFFIX

pytestmark = [pytest.mark.xdist_group("slapd"), pytest.mark.django_db]

AD_DISABLED_FILTER = "(userAccountControl:1.2.840.113556.1.4.803:=2)"


@pytest.fixture
def directory(slapd, settings):
    """The session's slapd, emptied of people, as the directory people sign in with (an
    Active Directory-like one), and the sync turned on."""
    slapd.reset_people()
    settings.AUTH_LDAP_SERVER_URI = slapd.uri
    settings.AUTH_LDAP_START_TLS = False
    settings.AUTH_LDAP_BIND_DN = SERVICE_DN
    settings.AUTH_LDAP_BIND_PASSWORD = SERVICE_PASSWORD
    settings.AUTH_LDAP_USER_SEARCH_BASE = PEOPLE
    settings.AUTH_LDAP_USER_FILTER = "(sAMAccountName=%(user)s)"
    settings.PKIPORTAL_LDAP_SYNC_LEAVERS = True
    settings.PKIPORTAL_LDAP_SYNC_DISABLED_FILTER = AD_DISABLED_FILTER
    settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN = 25
    settings.PKIPORTAL_LDAP_SYNC_CA_FILE = ""
    settings.PKIPORTAL_LDAP_SYNC_TIMEOUT = 5
    return slapd


def from_directory(username: str, **fields):
    """An account as django-auth-ldap creates one at the first sign-in: no password."""
    user = UserFactory(username=username, **fields)
    user.set_unusable_password()
    user.save(update_fields=["password"])
    return user


def refreshed(user):
    user.refresh_from_db()
    return user


@pytest.fixture
def people(directory):
    """dora is in the directory and enabled, ed was removed from it, fay is disabled."""
    directory.add_ad_person("dora")
    fay_dn = directory.add_ad_person("fay", account_control=AD_DISABLED)
    return {
        "dora": from_directory("dora"),
        "ed": from_directory("ed"),
        "fay": from_directory("fay"),
        "fay_dn": fay_dn,
    }


def deactivations():
    return AuditEvent.objects.filter(action="account.change", detail__source="ldap_sync")


# --- who becomes a leaver -------------------------------------------------------------


def test_an_account_the_directory_has_enabled_stays_active(directory):
    directory.add_ad_person("dora")
    dora = from_directory("dora")

    outcome = ldap_sync.leavers_sync()

    assert refreshed(dora).is_active
    assert (outcome.checked, outcome.found, outcome.gone, outcome.deactivated) == (1, 1, 0, 0)
    assert not deactivations().exists()
    assert not AuditEvent.objects.filter(action__startswith="ldap_sync.").exists()


def test_removed_and_disabled_people_are_deactivated_by_save(people):
    outcome = ldap_sync.leavers_sync()

    assert refreshed(people["dora"]).is_active
    for name in ("ed", "fay"):
        gone = refreshed(people[name])
        assert not gone.is_active
        assert gone.deactivated_at is not None  # the leavers' grace period has started
    assert (outcome.checked, outcome.found, outcome.gone, outcome.deactivated) == (3, 2, 2, 2)
    # One event per account, the system's, saying why; and one for the run.
    events = {event.object_repr: event for event in deactivations()}
    assert set(events) == {"ed", "fay"}
    assert events["ed"].actor_name == "system"
    assert events["ed"].detail == {
        "changes": {"is_active": [True, False]},
        "source": "ldap_sync",
        "reason": "not_found",
    }
    assert events["fay"].detail["reason"] == "disabled"
    assert events["fay"].detail["dn"] == people["fay_dn"]
    summary = AuditEvent.objects.get(action="ldap_sync.run")
    assert summary.actor_name == "system"
    assert summary.detail["deactivated"] == 2
    assert summary.detail["checked"] == 3
    assert summary.detail["source"] == "schedule"
    run = LdapSyncRun.objects.get()
    assert (run.deactivated, run.held_back, run.error) == (2, 0, "")


def test_a_leavers_browser_session_ends(people):
    browser = client_for(people["ed"])
    assert browser.get("/certificates/").status_code == 200

    ldap_sync.leavers_sync()

    assert browser.get("/certificates/").status_code == 302


def test_a_configured_filter_tells_disabled_people_in_other_directories(directory, settings):
    """OpenLDAP, 389 DS and others mark a disabled person their own way."""
    settings.AUTH_LDAP_USER_FILTER = "(uid=%(user)s)"
    settings.PKIPORTAL_LDAP_SYNC_DISABLED_FILTER = "(employeeType=disabled)"
    directory.add_person("gil", "gil@example.com")
    hal_dn = directory.add_person("hal", "hal@example.com")
    directory.replace(hal_dn, "employeeType", "disabled")
    gil, hal = from_directory("gil"), from_directory("hal")

    ldap_sync.leavers_sync()

    assert refreshed(gil).is_active
    assert not refreshed(hal).is_active


def test_without_a_disabled_filter_only_removal_counts(people, settings):
    settings.PKIPORTAL_LDAP_SYNC_DISABLED_FILTER = ""

    ldap_sync.leavers_sync()

    assert refreshed(people["fay"]).is_active
    assert not refreshed(people["ed"]).is_active


def test_user_names_match_whatever_their_case(directory):
    """django-auth-ldap finds accounts by user name case-insensitively, as AD compares
    sAMAccountName: an account named in another case than its entry is the same person."""
    directory.add_ad_person("IVY.LONG")
    directory.add_ad_person("dora")
    ivy, _dora = from_directory("Ivy.Long"), from_directory("dora")

    outcome = ldap_sync.leavers_sync()

    assert (outcome.found, outcome.error) == (2, "")
    assert refreshed(ivy).is_active


def test_filter_characters_in_a_user_name_are_escaped(directory):
    """Unescaped, "(" breaks the filter and "*" matches anyone (RFC 4515)."""
    directory.add_ad_person("jo(contractor)")
    directory.add_ad_person("jack")
    jo = from_directory("jo(contractor)")
    star = from_directory("j*")

    outcome = ldap_sync.leavers_sync()

    assert outcome.error == ""
    assert refreshed(jo).is_active
    assert not refreshed(star).is_active


def test_two_entries_for_one_name_make_a_leaver_only_if_both_are_disabled(directory):
    directory.add_ad_person("kim")
    directory.add(
        f"dn: ou=Contractors,{PEOPLE}\nobjectClass: organizationalUnit\nou: Contractors\n\n"
        f"dn: cn=kim,ou=Contractors,{PEOPLE}\nobjectClass: inetOrgPerson\n"
        "objectClass: pkiportalTestAdAccount\ncn: kim\nsn: kim\nsAMAccountName: kim\n"
        f"userAccountControl: {AD_DISABLED}\n"
    )
    try:
        kim = from_directory("kim")
        ldap_sync.leavers_sync()
        assert refreshed(kim).is_active

        directory.replace(f"cn=kim,{PEOPLE}", "userAccountControl", str(AD_DISABLED))
        ldap_sync.leavers_sync()
        assert not refreshed(kim).is_active
    finally:
        directory.delete(f"cn=kim,ou=Contractors,{PEOPLE}")


def test_accounts_are_looked_up_in_batches_not_one_search_each(directory, monkeypatch):
    monkeypatch.setattr(ldap_sync, "BATCH", 3)
    monkeypatch.setattr(ldap_sync, "PAGE_SIZE", 2)  # several pages per search too
    searches = []
    entries = ldap_sync._Reader.entries

    def counted(reader, usernames, **kwargs):
        searches.append(len(usernames))
        return entries(reader, usernames, **kwargs)

    monkeypatch.setattr(ldap_sync._Reader, "entries", counted)
    present = [f"p{n}" for n in range(5)]
    for name in present:
        directory.add_ad_person(name)
    accounts = [from_directory(name) for name in [*present, "q1", "q2"]]

    outcome = ldap_sync.leavers_sync()

    # Seven accounts, three batches: one search for the entries and one for the disabled
    # among those found, each; the last batch (q2) found nobody to ask about.
    assert searches == [3, 3, 3, 3, 1]
    assert (outcome.checked, outcome.found, outcome.deactivated) == (7, 5, 2)
    assert [refreshed(user).is_active for user in accounts] == [True] * 5 + [False] * 2


def test_reactivation_is_not_automatic(people, directory):
    ldap_sync.leavers_sync()
    directory.add_ad_person("ed")  # back in the directory (rehired, or a mistake undone)

    ldap_sync.leavers_sync()

    assert not refreshed(people["ed"]).is_active


# --- who is never touched -------------------------------------------------------------


def test_local_accounts_with_a_password_are_never_looked_up(directory, employee, people):
    """A break-glass or admin-made account has a password of its own: not the directory's."""
    outcome = ldap_sync.leavers_sync()

    assert refreshed(employee).is_active
    assert outcome.checked == 3


def test_a_superuser_the_directory_dropped_is_reported_not_deactivated(
    directory, people, officer_client
):
    root = from_directory("root-sso", is_superuser=True, is_staff=True)

    outcome = ldap_sync.leavers_sync()

    assert refreshed(root).is_active
    assert outcome.superusers == ["root-sso"]
    assert outcome.deactivated == 2  # ed and fay; the superuser neither counted nor touched
    check = officer_client.get("/health/").json()["checks"]["ldap_sync"]
    assert check["status"] == "warn"
    assert "root-sso" in check["problems"][0]
    assert "deactivate them in the admin" in officer_client.get("/ra/").content.decode()


def test_inactive_accounts_are_left_alone(directory):
    gone = from_directory("lee", is_active=False)
    directory.add_ad_person("dora")
    from_directory("dora")

    outcome = ldap_sync.leavers_sync()

    assert outcome.checked == 1
    assert not deactivations().filter(object_id=str(gone.pk)).exists()


# --- a directory that cannot be trusted deactivates nobody -----------------------------


def assert_nobody_deactivated(people, outcome, text):
    assert all(refreshed(people[name]).is_active for name in ("dora", "ed", "fay"))
    assert not deactivations().exists()
    assert outcome.deactivated == 0
    assert text in outcome.error
    assert LdapSyncRun.objects.get().error == outcome.error


def test_a_directory_that_is_down(people, settings, officer_client, caplog):
    settings.AUTH_LDAP_SERVER_URI = f"ldap://127.0.0.1:{free_port()}"  # nothing listens

    with caplog.at_level(logging.ERROR, logger="enrollment.ldap_sync"):
        outcome = ldap_sync.leavers_sync()

    assert_nobody_deactivated(people, outcome, "could not connect and bind")
    assert "Nobody was deactivated" in caplog.text
    check = officer_client.get("/health/").json()["checks"]["ldap_sync"]
    assert check["status"] == "warn"
    assert "could not connect" in check["problems"][0]
    page = officer_client.get("/ra/").content.decode()
    assert "People who left the directory may still be active here." in page


def test_a_refused_bind_names_no_password(people, settings, caplog):
    settings.AUTH_LDAP_BIND_PASSWORD = "wrong-password-1234"

    with caplog.at_level(logging.INFO):
        outcome = ldap_sync.leavers_sync()

    assert_nobody_deactivated(people, outcome, "invalidCredentials")
    assert "wrong-password-1234" not in outcome.error + caplog.text


def test_a_directory_that_stops_answering_times_out(people, settings, directory):
    settings.PKIPORTAL_LDAP_SYNC_TIMEOUT = 1
    directory.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        outcome = ldap_sync.leavers_sync()
    finally:
        directory.process.send_signal(signal.SIGCONT)

    assert_nobody_deactivated(people, outcome, "could not connect and bind")


def test_a_search_base_that_does_not_exist(people, settings):
    settings.AUTH_LDAP_USER_SEARCH_BASE = f"ou=Staff,{SUFFIX}"  # renamed, say

    outcome = ldap_sync.leavers_sync()

    assert_nobody_deactivated(people, outcome, "AUTH_LDAP_USER_SEARCH_BASE")


def test_a_missing_search_base_is_noticed_before_anyone_needs_looking_up(
    directory, settings, officer_client
):
    """A renamed OU warns at once, not when the first directory account appears."""
    settings.AUTH_LDAP_USER_SEARCH_BASE = f"ou=Staff,{SUFFIX}"

    outcome = ldap_sync.leavers_sync()

    assert outcome.checked == 0
    assert "AUTH_LDAP_USER_SEARCH_BASE (ou=Staff," in outcome.error
    assert "noSuchObject" in outcome.error
    assert officer_client.get("/health/").json()["checks"]["ldap_sync"]["status"] == "warn"


def test_a_directory_that_finds_none_of_the_accounts(people, directory):
    """An empty replica, or a filter that matches no one, is not everyone leaving."""
    directory.reset_people()

    outcome = ldap_sync.leavers_sync()

    assert_nobody_deactivated(people, outcome, "found none of the 3 accounts")


def test_a_later_good_run_clears_the_warning(people, settings, officer_client):
    settings.AUTH_LDAP_BIND_PASSWORD = "wrong-password-1234"
    ldap_sync.leavers_sync()
    settings.AUTH_LDAP_BIND_PASSWORD = SERVICE_PASSWORD

    ldap_sync.leavers_sync()

    assert officer_client.get("/health/").json()["checks"]["ldap_sync"]["status"] == "ok"


# --- the cap --------------------------------------------------------------------------


@pytest.fixture
def over_the_cap(people, settings):
    """Two gone (ed, fay) and a cap of one: the run holds them back."""
    settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN = 1
    return ldap_sync.leavers_sync()


def test_more_gone_than_the_cap_deactivates_none_and_warns(
    over_the_cap, people, officer_client, caplog
):
    assert over_the_cap.held_back == 2
    assert refreshed(people["ed"]).is_active
    assert refreshed(people["fay"]).is_active
    assert not deactivations().exists()
    event = AuditEvent.objects.get(action="ldap_sync.held_back")
    assert event.outcome == AuditEvent.Outcome.FAILURE
    assert event.detail == {
        "held_back": 2,
        "cap": 1,
        "not_found": 1,
        "disabled": 1,
        "checked": 3,
        "source": "schedule",
    }
    check = officer_client.get("/health/").json()["checks"]["ldap_sync"]
    assert check["status"] == "warn"
    assert "2 accounts are gone from the directory or disabled there" in check["problems"][0]
    for path in ("/ra/", "/ra/leavers/"):
        page = officer_client.get(path).content.decode()
        assert "more than PKIPORTAL_LDAP_SYNC_MAX_PER_RUN (1), so none were deactivated" in page
        assert "ldap_sync_leavers --confirm --ignore-cap" in page


def test_the_held_back_error_is_logged(people, settings, caplog):
    settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN = 1

    with caplog.at_level(logging.ERROR, logger="enrollment.ldap_sync"):
        ldap_sync.leavers_sync()

    assert "so none were deactivated" in caplog.text


def test_a_cap_of_zero_asks_a_person_for_every_deactivation(people, settings):
    settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN = 0

    assert ldap_sync.leavers_sync().held_back == 2


def test_confirm_alone_respects_the_cap(over_the_cap, people):
    with pytest.raises(CommandError, match="so none were deactivated"):
        call_command("ldap_sync_leavers", "--confirm", stdout=StringIO())

    assert refreshed(people["ed"]).is_active


def test_confirm_ignoring_the_cap_deactivates_them_and_clears_the_warning(
    over_the_cap, people, officer_client
):
    out = StringIO()

    call_command("ldap_sync_leavers", "--confirm", "--ignore-cap", stdout=out)

    assert "Deactivated 2 account(s)." in out.getvalue()
    assert not refreshed(people["ed"]).is_active
    assert not refreshed(people["fay"]).is_active
    assert AuditEvent.objects.get(action="ldap_sync.run").detail["source"] == "command"
    assert officer_client.get("/health/").json()["checks"]["ldap_sync"]["status"] == "ok"


# --- the command ----------------------------------------------------------------------


def test_the_command_lists_who_would_change_and_changes_nothing(people):
    out = StringIO()

    call_command("ldap_sync_leavers", stdout=out)

    text = out.getvalue()
    assert "Looked up 3 account(s) that came from the directory" in text
    assert "2 found there" in text
    assert "  ed  not found\n" in text
    assert f"  fay  disabled  {people['fay_dn']}\n" in text
    assert "dora" not in text
    assert "Run again with --confirm" in text
    assert all(refreshed(people[name]).is_active for name in ("ed", "fay"))
    assert not AuditEvent.objects.exists()
    assert not LdapSyncRun.objects.exists()


def test_the_command_lists_before_the_sync_is_turned_on(people, settings):
    settings.PKIPORTAL_LDAP_SYNC_LEAVERS = False
    out = StringIO()

    call_command("ldap_sync_leavers", stdout=out)

    assert "  ed  not found" in out.getvalue()
    with pytest.raises(CommandError, match="PKIPORTAL_LDAP_SYNC_LEAVERS=true"):
        call_command("ldap_sync_leavers", "--confirm", stdout=StringIO())
    assert refreshed(people["ed"]).is_active


def test_the_command_confirmed_deactivates_them(people):
    out = StringIO()

    call_command("ldap_sync_leavers", "--confirm", stdout=out)

    assert "Deactivated 2 account(s)." in out.getvalue()
    assert not refreshed(people["ed"]).is_active
    assert LdapSyncRun.objects.get().source == LdapSyncRun.Source.COMMAND


def test_the_command_says_when_the_directory_cannot_be_read(people, settings):
    settings.AUTH_LDAP_BIND_PASSWORD = "wrong-password-1234"

    with pytest.raises(CommandError, match="Nobody was deactivated: .*invalidCredentials"):
        call_command("ldap_sync_leavers", "--confirm", stdout=StringIO())


def test_ignore_cap_goes_with_confirm(people):
    with pytest.raises(CommandError, match="--ignore-cap goes with --confirm"):
        call_command("ldap_sync_leavers", "--ignore-cap", stdout=StringIO())


def test_the_command_needs_the_sign_in_directory(db, settings):
    """The test settings, as the embedded default, have no AUTH_LDAP_SERVER_URI."""
    assert not hasattr(settings, "AUTH_LDAP_SERVER_URI")

    with pytest.raises(CommandError, match="AUTH_LDAP_SERVER_URI is not set"):
        call_command("ldap_sync_leavers", stdout=StringIO())


# --- the task and /health/ ------------------------------------------------------------


def test_the_task_runs_the_sync(people):
    result = ldap_sync_leavers_task.delay().get()

    assert result["deactivated"] == 2
    assert not refreshed(people["ed"]).is_active


def test_the_task_does_nothing_while_it_is_off(people, settings, officer_client):
    settings.PKIPORTAL_LDAP_SYNC_LEAVERS = False

    assert ldap_sync_leavers_task.delay().get() == {"mode": "off"}

    assert refreshed(people["ed"]).is_active
    assert not LdapSyncRun.objects.exists()
    check = officer_client.get("/health/").json()["checks"]["ldap_sync"]
    assert check == {"status": "ok", "mode": "off"}


def test_health_warns_when_runs_stop_finishing(people, officer_client):
    ldap_sync.leavers_sync()
    assert officer_client.get("/health/").json()["checks"]["ldap_sync"]["status"] == "ok"

    with time_machine.travel(timezone.now() + timedelta(hours=4)):
        check = officer_client.get("/health/").json()["checks"]["ldap_sync"]

    assert check["status"] == "warn"
    assert "last finished at" in check["problems"][0]


def test_health_details_are_for_officers_not_for_anyone(people, settings, anonymous_client):
    settings.AUTH_LDAP_BIND_PASSWORD = "wrong-password-1234"
    ldap_sync.leavers_sync()

    assert "checks" not in anonymous_client.get("/health/").json()


def test_the_ra_console_warns_only_officers(people, settings, employee_client):
    settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN = 1
    ldap_sync.leavers_sync()

    response = employee_client.get("/ra/")

    assert response.status_code in (302, 403)
    assert b"PKIPORTAL_LDAP_SYNC_MAX_PER_RUN" not in response.content


def test_what_django_auth_ldap_creates_counts_as_the_directorys(directory, employee):
    """set_unusable_password(): "!" and random text, never a password that verifies."""
    user = from_directory("mo")

    assert user.password.startswith("!")
    assert list(ldap_sync.directory_accounts()) == [user]
