"""Shared mailboxes on the web pages and the API: who may and who may not, and hostile
addresses and display names from the officer's form and the API (no 500, nothing stored)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.urls import reverse

from enrollment import mailboxes, services
from enrollment.models import AuditEvent, Certificate, CertificateRequest, SharedMailbox
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import Agent, client_for
from tests.enrollment.api_tools import API, ENROLLMENTS, csr_pem, session_client, token_client
from tests.enrollment.api_tools import PASSWORD as API_PASSWORD
from tests.enrollment.web import enrol_with_portal_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

MAILBOXES = f"{API}/mailboxes/"
PASSWORD = "Mailbox-Shared-Lantern-27"


@pytest.fixture
def kra(quick_kra: Agent) -> Agent:
    return quick_kra


@pytest.fixture
def finance(officer, employee) -> SharedMailbox:
    return mailboxes.mailbox_create(
        email="finance@example.com", display_name="Finance", delegates=[employee], actor=officer
    )


@pytest.fixture
def issued(hierarchy, kra, template, finance, employee) -> Certificate:
    made = services.request_submit(
        requester=employee,
        template=template("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        channel="web",
    )
    certificate, _bundle = services.request_collect(
        request=made, actor=employee, pkcs12_password=PASSWORD
    )
    return certificate


@pytest.fixture
def people(employee, colleague, officer):
    """anonymous, a delegate (Alice), a colleague who is not one (Bob), an officer."""
    return {"anonymous": None, "delegate": employee, "colleague": colleague, "officer": officer}


# --- RA pages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", 302), ("delegate", 403), ("colleague", 403), ("officer", 200)],
)
def test_only_officers_see_the_mailbox_pages(people, finance, who, expected):
    client = client_for(people[who])
    for url in (reverse("ra:mailboxes"), reverse("ra:mailbox-detail", args=[finance.pk])):
        assert client.get(url).status_code == expected


@pytest.mark.parametrize(
    ("who", "expected"), [("anonymous", 302), ("delegate", 403), ("colleague", 403)]
)
def test_only_officers_change_mailboxes(people, finance, who, expected):
    client = client_for(people[who])
    before = AuditEvent.objects.count()
    assert (
        client.post(reverse("ra:mailboxes"), {"email": "hr@example.com", "display_name": "HR"})
    ).status_code == expected
    assert (
        client.post(
            reverse("ra:mailbox-detail", args=[finance.pk]),
            {"display_name": "Mine now", "delegates": people[who].username if people[who] else ""},
        )
    ).status_code == expected
    assert (
        client.post(
            reverse("ra:mailbox-active", args=[finance.pk]), {"active": "0", "confirm": "on"}
        )
    ).status_code == expected
    finance.refresh_from_db()
    assert (finance.display_name, finance.is_active) == ("Finance", True)
    assert not SharedMailbox.objects.filter(email="hr@example.com").exists()
    assert AuditEvent.objects.count() == before


def test_an_officer_creates_edits_and_deactivates_a_mailbox_on_the_ra_pages(
    officer, employee, colleague
):
    client = client_for(officer)
    response = client.post(
        reverse("ra:mailboxes"),
        {
            "email": "HR@example.com",
            "display_name": "Human resources",
            "delegates": "alice\nbob@example.com",
        },
    )
    assert response.status_code == 302
    created = SharedMailbox.objects.get(email="hr@example.com")
    assert set(created.delegates.all()) == {employee, colleague}
    response = client.post(
        reverse("ra:mailbox-detail", args=[created.pk]),
        {"display_name": "HR team", "delegates": "bob"},
    )
    assert response.status_code == 302
    changed = AuditEvent.objects.get(action="mailbox.change")
    assert changed.detail["delegates_removed"] == ["alice"]
    assert changed.detail["display_name"] == {"old": "Human resources", "new": "HR team"}
    unsure = client.post(reverse("ra:mailbox-active", args=[created.pk]), {"active": "0"})
    assert unsure.status_code == 400
    assert "I am sure" in unsure.content.decode()
    created.refresh_from_db()
    assert created.is_active  # not on one click
    client.post(reverse("ra:mailbox-active", args=[created.pk]), {"active": "0", "confirm": "on"})
    created.refresh_from_db()
    assert not created.is_active
    assert AuditEvent.objects.filter(action="mailbox.deactivate", actor=officer).exists()


def test_an_unknown_delegate_is_named_and_nothing_is_stored(officer):
    response = client_for(officer).post(
        reverse("ra:mailboxes"),
        {"email": "hr@example.com", "display_name": "HR", "delegates": "nobody-here"},
    )
    assert response.status_code == 400
    assert b"nobody-here" in response.content
    assert not SharedMailbox.objects.exists()


# --- enrolment and my certificates -----------------------------------------------------


def test_a_delegate_enrols_for_the_mailbox_from_the_enrol_page(hierarchy, kra, finance, employee):
    client = client_for(employee)
    page = client.get(reverse("enrollment:enroll", args=["smime-encryption"]))
    assert b"finance@example.com" in page.content
    response = enrol_with_portal_key(
        client, "smime-encryption", password=PASSWORD, mailbox=str(finance.pk)
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pkcs12"
    certificate = Certificate.objects.get(mailbox=finance)
    assert certificate.owner is None


def test_a_colleague_cannot_choose_a_mailbox_they_do_not_read(
    hierarchy, kra, finance, employee, colleague, officer
):
    """Bob reads no mailbox: the page offers none, and a crafted choice is not taken."""
    response = enrol_with_portal_key(
        client_for(colleague), "smime-encryption", password=PASSWORD, mailbox=str(finance.pk)
    )
    assert not Certificate.objects.filter(mailbox=finance).exists()
    assert not CertificateRequest.objects.filter(mailbox=finance).exists()
    # Alice reads another mailbox only: finance@'s id is not among her choices.
    hr = mailboxes.mailbox_create(
        email="hr@example.com", display_name="HR", delegates=[colleague], actor=officer
    )
    response = enrol_with_portal_key(
        client_for(employee), "smime-encryption", password=PASSWORD, mailbox=str(hr.pk)
    )
    assert response.status_code == 400
    assert not CertificateRequest.objects.filter(mailbox=hr).exists()


def test_a_signing_template_does_not_offer_the_mailbox(hierarchy, kra, finance, employee):
    page = client_for(employee).get(reverse("enrollment:enroll", args=["smime-signing"]))
    assert page.status_code == 200
    assert b"finance@example.com" not in page.content


@pytest.mark.parametrize(
    ("who", "sees"), [("delegate", True), ("colleague", False), ("officer", False)]
)
def test_my_certificates_lists_the_mailboxes_i_read(people, issued, who, sees):
    page = client_for(people[who]).get(reverse("enrollment:certificate-list"))
    assert page.status_code == 200
    assert (b"Shared mailboxes I read" in page.content) is sees
    assert (
        issued.fingerprint_sha256[:8].upper().encode() in page.content.replace(b":", b"")
    ) is sees


@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", 302), ("delegate", 200), ("colleague", 404), ("officer", 200)],
)
def test_the_mailbox_certificates_page_and_downloads(people, issued, who, expected):
    client = client_for(people[who])
    assert (
        client.get(reverse("enrollment:certificate-detail", args=[issued.pk])).status_code
        == expected
    )
    download = reverse("enrollment:certificate-download", args=[issued.pk, "pem"])
    assert client.get(download).status_code == expected


@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", 302), ("colleague", 404), ("officer", 403), ("delegate", 302)],
)
def test_delegates_revoke_the_mailbox_certificate_on_its_page(people, issued, who, expected):
    response = client_for(people[who]).post(
        reverse("enrollment:certificate-revoke", args=[issued.pk]),
        {"reason": "superseded", "confirm": "on"},
    )
    assert response.status_code == expected
    issued.refresh_from_db()
    assert (issued.status == Certificate.Status.REVOKED) is (who == "delegate")


def test_another_delegate_asks_for_the_key_on_the_certificates_page(issued, finance, colleague):
    finance.delegates.add(colleague)
    response = client_for(colleague).post(
        reverse("enrollment:certificate-recover", args=[issued.pk]),
        {"reason": "I read finance@ too.", "pkcs12_format": "modern"},
    )
    assert response.status_code == 302
    asked = issued.recovery_requests.get()
    assert asked.asked_by == colleague
    assert asked.recipient_id == colleague.pk


def test_the_queue_says_the_mailbox_already_holds_one_not_the_delegate(
    issued, finance, employee, approval, officer
):
    waiting = services.request_submit(
        requester=employee,
        template=approval("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        channel="web",
    )

    page = client_for(officer).get(reverse("enrollment:ra-requests")).content.decode()

    row = page.split(f'id="holds-{waiting.pk}"')[1].split("</span>")[0]
    assert "already holds a valid one" in row
    assert f"{issued.serial[:12]}…" in row


# --- the directory ------------------------------------------------------------------------


def test_the_directory_finds_the_mailbox_and_its_certificate(issued, colleague):
    client = client_for(colleague)
    page = client.get(reverse("directory:search"), {"q": "financ"})
    assert page.status_code == 200
    assert b"shared mailbox" in page.content
    assert issued.fingerprint_sha256.encode() in page.content
    found = client.get(f"{API}/directory/", {"email": "Finance@example.com"})
    assert found.status_code == 200
    [result] = found.json()["results"] if "results" in found.json() else found.json()
    assert result["fingerprint_sha256"] == issued.fingerprint_sha256
    assert result["shared_mailbox"] == {"email": "finance@example.com", "display_name": "Finance"}
    assert result["owner"] is None
    detail = client.get(reverse("directory:certificate", args=[issued.fingerprint_sha256]))
    assert b"the shared mailbox Finance" in detail.content


def test_the_directory_marks_the_newest_of_a_mailboxs_two_certificates(
    issued, finance, employee, template, colleague
):
    made = services.request_submit(
        requester=employee,
        template=template("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        channel="web",
    )
    newer, _bundle = services.request_collect(
        request=made, actor=employee, pkcs12_password=PASSWORD
    )
    client = client_for(colleague)

    page = client.get(reverse("directory:search"), {"q": "financ"}).content.decode()
    older_page = client.get(reverse("directory:certificate", args=[issued.fingerprint_sha256]))

    # Its entry, found by its details link (the card's "encrypt to" downloads come first).
    details = f"/directory/{newer.fingerprint_sha256}/"
    entry = page.split(details)[0].rsplit('<li class="cert ', 1)[1]
    assert 'class="badge newest"' in entry
    assert page.count('class="badge newest"') == 1
    assert b"The shared mailbox also holds a newer valid encryption certificate" in (
        older_page.content
    )


def test_a_closed_mailbox_is_no_longer_offered_to_encrypt_to(issued, finance, officer, colleague):
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)
    found = client_for(colleague).get(f"{API}/directory/", {"email": "finance@example.com"})
    body = found.json()
    assert body.get("results", body) == []


# --- the API ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", None), ("delegate", ["finance@example.com"]), ("colleague", []),
     ("officer", ["finance@example.com", "hr@example.com"])],
)  # fmt: skip
def test_the_api_lists_the_mailboxes_one_reads(people, finance, officer, who, expected):
    mailboxes.mailbox_create(email="hr@example.com", display_name="HR", actor=officer)
    response = token_client(people[who]).get(MAILBOXES)
    if expected is None:
        assert response.status_code == 401
        return
    assert response.status_code == 200
    body = response.json()
    rows = body["results"] if isinstance(body, dict) else body
    assert [row["email"] for row in rows] == expected


@pytest.mark.parametrize(
    ("who", "expected"), [("anonymous", 401), ("delegate", 403), ("colleague", 403)]
)
def test_only_officers_manage_mailboxes_through_the_api(people, finance, who, expected):
    client = token_client(people[who])
    url = f"{MAILBOXES}{finance.pk}/"
    assert (
        client.post(
            MAILBOXES, {"email": "hr@example.com", "display_name": "HR"}, format="json"
        ).status_code
        == expected
    )
    changed = client.patch(url, {"display_name": "X", "delegates": []}, format="json")
    assert changed.status_code in {expected, 404}
    assert client.post(f"{url}deactivate/").status_code in {expected, 404}
    finance.refresh_from_db()
    assert (finance.display_name, finance.is_active) == ("Finance", True)
    assert not SharedMailbox.objects.filter(email="hr@example.com").exists()


def test_an_officer_manages_mailboxes_through_the_api(officer, employee, colleague):
    client = token_client(officer)
    created = client.post(
        MAILBOXES,
        {"email": "hr@example.com", "display_name": "HR", "delegates": ["alice"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    url = f"{MAILBOXES}{created.json()['id']}/"
    changed = client.patch(url, {"display_name": "HR team", "delegates": ["bob"]}, format="json")
    assert changed.json()["delegates"] == ["bob"]
    assert client.post(f"{url}deactivate/").json()["is_active"] is False
    assert client.post(f"{url}deactivate/").status_code == 409
    assert client.post(f"{url}reactivate/").json()["is_active"] is True
    unknown = client.patch(url, {"display_name": "HR", "delegates": ["ghost"]}, format="json")
    assert unknown.status_code == 400
    assert "ghost" in unknown.json()["delegates"][0]


def mailbox_body(**extra):
    return {
        "template": "smime-encryption",
        "mailbox": "finance@example.com",
        "key_algorithm": "ec-p256",
        "pkcs12_password": API_PASSWORD,
        "pkcs12_format": "modern",
        **extra,
    }


@pytest.mark.parametrize(
    ("who", "expected"), [("anonymous", 401), ("colleague", 403), ("delegate", 201)]
)
def test_the_api_enrols_a_delegate_for_the_mailbox(hierarchy, kra, people, finance, who, expected):
    response = token_client(people[who]).post(ENROLLMENTS, mailbox_body(), format="json")
    assert response.status_code == expected, response.content
    assert Certificate.objects.filter(mailbox=finance).exists() is (expected == 201)
    if expected == 201:
        assert response.json()["pkcs12"]
        assert response["Cache-Control"] == "no-store"


def test_the_api_refuses_a_csr_for_a_mailbox(hierarchy, kra, finance, employee, ec_p256_key):
    body = {"template": "smime-encryption", "csr": csr_pem(ec_p256_key), "mailbox": finance.email}
    response = token_client(employee).post(ENROLLMENTS, body, format="json")
    assert response.status_code == 400
    assert "csr" in response.json()
    assert not CertificateRequest.objects.exists()


@pytest.mark.parametrize(
    ("who", "sees"), [("delegate", True), ("colleague", False), ("officer", True)]
)
def test_the_api_certificate_list_shows_the_mailbox_certificate_to_its_delegates(
    people, issued, who, sees
):
    response = session_client(people[who]).get(f"{API}/certificates/")
    serials = [row["serial"] for row in response.json()["results"]]
    assert (issued.serial in serials) is sees


# --- hostile input -------------------------------------------------------------------------

HOSTILE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hostile_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300),
    st.sampled_from(
        [
            "finance@example.com\x00",
            "finance@example.com\r\nBcc: x@evil.test",
            "\u202efinance@example.com",
            "fin ance@example.com",
            "finance@@example.com",
            "<script>@example.com",
            "a" * 65 + "@example.com",
            "finance@example.com.",
            "",
            "   ",
        ]
    ),
)


# Addresses the portal must take (any case, padded with spaces; no account has them), so
# that the "stored and clean" branch below is reached, not only the refusals.
valid_address = st.builds(
    lambda local, upper, pad: pad + "mb-" + (local.upper() if upper else local) + "@example.com",
    st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,10})?", fullmatch=True),
    st.booleans(),
    st.sampled_from(["", " ", "\t"]),
)


def _clean_display_name(text: str) -> bool:
    name = " ".join(text.split())
    return 0 < len(name) <= 200 and not any(
        unicodedata.category(c) in mailboxes._REFUSED_CATEGORIES for c in name
    )


@HOSTILE
@given(
    address=st.one_of(
        st.tuples(valid_address, st.just(True)), st.tuples(hostile_text, st.just(False))
    ),
    display_name=st.one_of(hostile_text, st.text(min_size=1, max_size=40)),
)
def test_hostile_mailboxes_from_the_officers_form_never_500_nor_store(
    officer, address, display_name
):
    email, valid = address
    SharedMailbox.objects.all().delete()
    response = client_for(officer).post(
        reverse("ra:mailboxes"), {"email": email, "display_name": display_name}
    )
    assert response.status_code in (302, 400, 409)
    stored = list(SharedMailbox.objects.all())
    if valid and _clean_display_name(display_name):
        # A good address with any printable display name, hostile or not, is taken as is.
        assert response.status_code == 302, response.content
    if response.status_code != 302:
        assert stored == []
    else:
        [mailbox] = stored
        assert mailbox.email == email.strip().lower()
        assert mailbox.email.isascii()
        assert mailbox.display_name == " ".join(display_name.split())
        assert all(c.isprintable() for c in mailbox.display_name)


@HOSTILE
@given(
    email=st.one_of(hostile_text, st.integers(), st.none(), st.lists(st.text(max_size=5))),
    display_name=st.one_of(hostile_text, st.integers(), st.none()),
    delegates=st.one_of(st.lists(hostile_text, max_size=3), hostile_text, st.none()),
)
def test_hostile_mailboxes_through_the_api_never_500_nor_store(
    officer, employee, email, display_name, delegates
):
    SharedMailbox.objects.all().delete()
    response = token_client(officer).post(
        MAILBOXES,
        {"email": email, "display_name": display_name, "delegates": delegates},
        format="json",
    )
    assert response.status_code in (201, 400, 409), response.content
    if response.status_code != 201:
        assert not SharedMailbox.objects.exists()


def test_the_api_names_a_bad_address_and_stores_nothing(officer, settings):
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com",)
    response = token_client(officer).post(
        MAILBOXES, {"email": "finance@elsewhere.test", "display_name": "X"}, format="json"
    )
    assert response.status_code == 400
    assert "email" in response.json()
    assert not SharedMailbox.objects.exists()


def test_an_inactive_colleague_cannot_be_a_delegate(officer):
    gone = UserFactory(username="gone", is_active=False)
    with pytest.raises(services.PolicyViolation):
        mailboxes.mailbox_create(
            email="hr@example.com", display_name="HR", delegates=[gone], actor=officer
        )
