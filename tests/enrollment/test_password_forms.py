"""Forms that ask for a file's password (a new .p12's, a key recovery agent's) are marked
up so that password managers do not take them for the portal's sign-in: the password
fields say which kind of password they hold, and a hidden, read-only "username" names the
file, so a manager files the password under it rather than offering, saving or "updating"
the person's sign-in. The sign-in form keeps what managers need to fill it."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from enrollment.models import Certificate, CertificateRequest
from tests.conftest import Agent, client_for
from tests.enrollment.ra_fixtures import agent_upload
from tests.enrollment.test_views_certificates import issue_to
from tests.enrollment.web import PASSWORD, enrol_with_portal_key

pytestmark = pytest.mark.django_db


class _Forms(HTMLParser):
    """Each <form>'s <input> elements, as attribute dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[list[dict[str, str | None]]] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "form":
            self.forms.append([])
            self._open = True
        elif tag == "input" and self._open:
            self.forms[-1].append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = False


def password_forms(page: str) -> list[list[dict[str, str | None]]]:
    """The forms of the page that have a password field."""
    parser = _Forms()
    parser.feed(page)
    return [f for f in parser.forms if any(i.get("type") == "password" for i in f)]


def the_password_form(response) -> list[dict[str, str | None]]:
    assert response.status_code in (200, 400)
    (form,) = password_forms(response.content.decode())
    return form


def assert_named_for_a_file(form, name: str) -> None:
    """One username field, hidden and read-only, naming the file; never sent (no name)."""
    usernames = [i for i in form if i.get("autocomplete") == "username"]
    assert len(usernames) == 1
    (username,) = usernames
    assert username["value"] == name
    assert "hidden" in username
    assert "readonly" in username
    assert "name" not in username
    # Nothing else a manager could take for the account's user name.
    others = [
        i
        for i in form
        if i.get("type") in (None, "text", "email") and i.get("autocomplete") != "username"
    ]
    assert others == []


def assert_new_p12_password_form(form, name: str) -> None:
    passwords = {i["name"]: i for i in form if i.get("type") == "password"}
    assert set(passwords) == {"pkcs12_password", "pkcs12_password_confirm"}
    assert {p["autocomplete"] for p in passwords.values()} == {"new-password"}
    assert all("value" not in p for p in passwords.values())  # never echoed
    assert_named_for_a_file(form, name)


@pytest.fixture
def kra(quick_kra) -> Agent:
    return quick_kra


def test_enrolling_with_a_portal_key_asks_a_new_password_for_a_named_file(
    employee_client, hierarchy
):
    form = the_password_form(employee_client.get("/enroll/smime-signing/"))

    assert_new_p12_password_form(form, "S/MIME Signing (.p12 file)")


def test_a_refused_weak_password_shows_the_same_form_without_it(employee_client, hierarchy):
    response = enrol_with_portal_key(employee_client, password="Zq7x")

    assert response.status_code == 400
    assert "Zq7x" not in response.content.decode()
    assert_new_p12_password_form(the_password_form(response), "S/MIME Signing (.p12 file)")


@pytest.mark.parametrize(
    ("password", "confirmation"),
    [("Zq7x", "Zq7x"), (PASSWORD, PASSWORD + "x")],
    ids=["weak", "the two differ"],
)
def test_a_refused_password_is_typed_again_from_the_first_field(
    employee_client, hierarchy, password, confirmation
):
    """Both fields come back empty, below the fold on a phone: the first one is
    autofocused, so the browser scrolls to it and its error."""
    response = enrol_with_portal_key(employee_client, password=password, confirmation=confirmation)

    passwords = {i["name"]: i for i in the_password_form(response) if i.get("type") == "password"}
    assert "autofocus" in passwords["pkcs12_password"]
    assert "autofocus" not in passwords["pkcs12_password_confirm"]


def test_a_form_shown_afresh_takes_no_focus(employee_client, hierarchy):
    form = the_password_form(employee_client.get("/enroll/smime-signing/"))

    assert not [i for i in form if "autofocus" in i]


def test_renewing_asks_the_same(employee, employee_client, template, hierarchy):
    mine = issue_to(employee, template)

    response = employee_client.get(f"/enroll/smime-signing/?renew={mine.pk}")

    assert response.context["renewal"] == mine
    assert_new_p12_password_form(the_password_form(response), "S/MIME Signing (.p12 file)")


def test_collecting_an_approved_request_asks_the_same(
    approval, employee, employee_client, officer_client, hierarchy
):
    approval("smime-dual-use")
    employee_client.post(
        "/enroll/smime-dual-use/", {"method": "server", "key_algorithm": "ec-p256"}
    )
    pending = CertificateRequest.objects.get(requester=employee)
    assert (
        password_forms(employee_client.get(f"/enroll/requests/{pending.pk}/").content.decode())
        == []
    )
    officer_client.post(f"/ra/requests/{pending.pk}/decide/", {"decision": "approve"})

    page = employee_client.get(f"/enroll/requests/{pending.pk}/")

    assert_new_p12_password_form(the_password_form(page), "S/MIME Dual-use (.p12 file)")
    # The form still works, and the password is the file's only.
    collected = employee_client.post(
        f"/enroll/requests/{pending.pk}/",
        {
            "pkcs12_password": PASSWORD,
            "pkcs12_password_confirm": PASSWORD,
            "pkcs12_format": "modern",
        },
    )
    assert collected["Content-Type"] == "application/x-pkcs12"
    assert Certificate.objects.filter(owner=employee).exists()


def test_an_agent_types_their_files_password_never_offered_the_sign_in(approved, kra, agent_user):
    client = client_for(agent_user)
    url = f"/ra/recovery/{approved.pk}/perform/"

    page = client.get(url)
    refused = client.post(url, agent_upload(kra.pkcs12, "not the password"))

    for response in (page, refused):
        online, offline = password_forms(response.content.decode())
        (agent_password,) = [i for i in online if i.get("type") == "password"]
        (passphrase,) = [i for i in offline if i.get("type") == "password"]
        # The password of an existing file (browsers ignore "off" on password fields).
        assert agent_password["autocomplete"] == "current-password"
        assert passphrase["autocomplete"] == "current-password"
        assert "value" not in agent_password
        assert_named_for_a_file(online, "Key recovery agent (.p12 file)")
        assert_named_for_a_file(offline, "Recovered key (recovered-key.pem)")
    assert "not the password" not in refused.content.decode()


def test_the_sign_in_form_stays_a_sign_in_form_for_password_managers(anonymous_client):
    (form,) = password_forms(anonymous_client.get("/accounts/login/").content.decode())

    fields = {i.get("name"): i for i in form}
    assert fields["username"]["autocomplete"] == "username"
    assert fields["password"]["autocomplete"] == "current-password"
    assert "hidden" not in fields["username"]
