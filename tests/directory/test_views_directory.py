"""/directory/ pages: who may read them, the plain (no-JS) search, pages, hostile input."""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from enrollment import services
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db


@pytest.fixture
def jose(person, issue):
    user = person("José", "García", "Finance", email="jose.garcia@example.com")
    issue(user, "smime-signing")
    issue(user, "smime-dual-use")
    return user


def page_of(response) -> str:
    assert response["Content-Type"].startswith("text/html")
    return response.content.decode()


# --- who may read it ------------------------------------------------------------------


@pytest.mark.parametrize("role", ["employee", "colleague", "officer"])
def test_signed_in_people_may_search(role, request, jose):
    client = client_for(request.getfixturevalue(role))

    response = client.get("/directory/", {"q": "jose"})

    assert response.status_code == 200
    assert "José García" in page_of(response)


@pytest.mark.parametrize(
    "path",
    [
        "/directory/?q=jose",
        "/directory/?q=jose&partial=1",
        "/directory/{fp}/",
        "/directory/{fp}.cer",
        "/directory/{fp}.pem",
        "/directory/{fp}.p7b",
        "/directory/{fp}.vcf",
    ],
)
def test_anonymous_readers_are_sent_to_sign_in(anonymous_client, jose, path):
    fp = jose.certificates.first().fingerprint_sha256

    response = anonymous_client.get(path.format(fp=fp))

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/directory/")


def test_the_public_setting_opens_the_directory_to_anonymous_readers(
    anonymous_client, jose, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True
    fp = jose.certificates.first().fingerprint_sha256

    assert "José García" in page_of(anonymous_client.get("/directory/", {"q": "garcia"}))
    assert anonymous_client.get(f"/directory/{fp}/").status_code == 200
    assert anonymous_client.get(f"/directory/{fp}.cer").status_code == 200


def test_a_deactivated_account_may_not_read_it(person, jose):
    former = person("Fred", "Former", is_active=False)
    client = Client()
    verified_login(client, former)

    assert client.get("/directory/", {"q": "jose"}).status_code == 302


def test_the_directory_is_read_only(employee_client, jose):
    assert employee_client.post("/directory/", {"q": "jose"}).status_code == 405


# --- the plain form and its results ---------------------------------------------------


def test_the_plain_get_form_works_without_javascript(employee_client, jose):
    page = page_of(employee_client.get("/directory/", {"q": "GARCIA"}))

    assert '<form method="get" action="/directory/"' in page
    assert 'name="q"' in page
    assert 'value="GARCIA"' in page
    assert "jose.garcia@example.com" in page
    assert "Finance" in page
    assert "Signing and encryption" in page
    assert "<strong>Signing</strong>" in page
    assert "S/MIME Dual-use" in page
    for certificate in jose.certificates.all():
        assert certificate.fingerprint_sha256 in page
        assert f"/directory/{certificate.fingerprint_sha256}/" in page


def test_search_as_you_type_fetches_only_the_results_fragment(employee_client, jose):
    page = page_of(employee_client.get("/directory/", {"q": "jos", "partial": "1"}))

    assert "José García" in page
    assert "<html" not in page
    assert "<form" not in page


def test_the_page_loads_the_enhancement_script(employee_client):
    page = page_of(employee_client.get("/directory/"))

    assert "data-live-search=" in page
    assert "/static/js/directory.js" in page
    assert employee_client.get("/static/js/directory.js").status_code == 200


def test_revoked_certificates_are_hidden_then_shown_clearly_marked(employee_client, jose):
    certificate = jose.certificates.get(template__slug="smime-signing")
    services.certificate_revoke(certificate=certificate, reason="keyCompromise")

    default = page_of(employee_client.get("/directory/", {"q": "jose"}))
    everything = page_of(
        employee_client.get("/directory/", {"q": "jose", "include_inactive": "on"})
    )

    assert certificate.fingerprint_sha256 not in default
    assert certificate.fingerprint_sha256 in everything
    assert "badge status-revoked" in everything
    assert "key compromise" in everything


def test_nobody_found_says_so(employee_client, jose):
    page = page_of(employee_client.get("/directory/", {"q": "nobody-here"}))

    assert "No one matches" in page
    assert 'href="/enroll/"' in page  # where to send someone who has none yet


def test_each_details_link_names_whose_certificate_it_opens(employee_client, jose):
    """Screen readers list links by their text: three identical ones say nothing."""
    page = page_of(employee_client.get("/directory/", {"q": "jose"}))

    labels = [
        part.split('"', 1)[0] for part in page.split('aria-label="Details and downloads: ')[1:]
    ]
    assert len(labels) == 2
    assert len(set(labels)) == 2
    assert all(label.startswith("José García, ") for label in labels)


def test_results_come_in_pages_with_a_next_link(employee_client, person, issue):
    for n in range(23):
        issue(person("Pat", f"Page{n:02d}", username=f"pat{n:02d}"))

    first = page_of(employee_client.get("/directory/", {"q": "pat"}))
    assert first.count('class="card person"') == 20
    next_link = first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
    second = page_of(employee_client.get("/directory/" + next_link.replace("&amp;", "&")))

    assert second.count('class="card person"') == 3
    assert "Pat Page22" in second
    assert "Pat Page00" not in second
    assert "First page" in second
    assert 'rel="next"' not in second


# --- hostile input --------------------------------------------------------------------

HOSTILE = [
    "' OR '1'='1",
    "%' UNION SELECT password FROM accounts_user --",
    "(a+)+$",
    ".*[",
    "\\",
    "__%%__",
    "😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\u202e\u200b",
]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_give_an_empty_result(employee_client, jose, query):
    response = employee_client.get("/directory/", {"q": query})

    assert response.status_code == 200
    assert "José García" not in page_of(response)


@pytest.mark.parametrize(
    "query_string",
    [
        "q=" + "a" * 201,
        "q=jo%00se",
        "q=jose&after=abc",
        "q=jose&after=-1",
        "q=jose&after=99999999999999999999999",
        "q=jose&after=999999",
    ],
)
def test_bad_query_strings_are_a_clean_400(employee_client, jose, query_string):
    response = employee_client.get(f"/directory/?{query_string}")

    assert response.status_code == 400
    assert 'class="notice bad"' in page_of(response)


# A WSGI server hands raw request bytes over as latin-1 text (PEP 3333): "\xff" is byte 0xFF.
@pytest.mark.parametrize("raw", ["q=%FF%FE", "q=jos%C3", "q=jo\xff\xfese", "q=%ED%A0%80"])
def test_invalid_utf8_is_never_a_500(employee_client, jose, raw):
    response = employee_client.generic("GET", "/directory/", QUERY_STRING=raw)

    assert response.status_code in (200, 400)


def test_a_results_page_costs_a_fixed_number_of_queries(employee_client, person, issue):
    """However many people a page shows, the queries are the same (no per-person query)."""

    def queries_for(query: str, expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            page = page_of(employee_client.get("/directory/", {"q": query}))
        assert page.count('class="card person"') == expected
        return len(captured)

    issue(person("Quinn", "Solo", username="quinn"))
    for n in range(6):
        issue(person("Pat", f"Page{n}", username=f"pat{n}"))

    assert queries_for("pat", 6) == queries_for("quinn", 1)


def test_results_show_fingerprints_as_every_other_page_does(employee_client, jose):
    from enrollment.models import Certificate
    from enrollment.x509.pkcs7 import format_fingerprint

    page = page_of(employee_client.get("/directory/", {"q": "jose"}))

    for cert in Certificate.objects.filter(owner=jose):
        assert format_fingerprint(cert.fingerprint_sha256) in page  # AB:CD:…, as openssl shows
        assert f"/directory/{cert.fingerprint_sha256}/" in page  # links keep the plain form


# --- two valid certificates of one kind -----------------------------------------------


@pytest.fixture
def enrolled_twice(person, issue):
    """Lena enrolled for S/MIME Signing twice instead of renewing; she has one dual-use."""
    user = person("Lena", "Lindqvist", "Legal")
    older = issue(user, "smime-signing")
    newer = issue(user, "smime-signing")
    dual_use = issue(user, "smime-dual-use")
    return older, newer, dual_use


def entries(page: str) -> dict[str, str]:
    """Each listed certificate's entry in the results, by its fingerprint."""
    found = {}
    for entry in page.split('<li class="cert ')[1:]:
        fingerprint = entry.split('class="details" href="/directory/')[1].split("/")[0]
        found[fingerprint] = entry.split("</li>")[0]
    return found


def test_the_results_mark_the_newest_of_two_valid_certificates_of_one_purpose(
    employee_client, enrolled_twice
):
    older, newer, dual_use = enrolled_twice

    listed = entries(page_of(employee_client.get("/directory/", {"q": "lena"})))

    assert 'class="badge newest"' in listed[newer.fingerprint_sha256]
    assert "newest" not in listed[older.fingerprint_sha256]
    # The only one of its purpose: nothing to choose between.
    assert "newest" not in listed[dual_use.fingerprint_sha256]


def test_the_newest_is_a_valid_one_when_expired_and_revoked_are_shown(
    employee_client, enrolled_twice
):
    older, newer, _dual_use = enrolled_twice
    services.certificate_revoke(certificate=newer, reason="cessationOfOperation")

    listed = entries(
        page_of(employee_client.get("/directory/", {"q": "lena", "include_inactive": "on"}))
    )

    assert 'class="badge newest"' in listed[older.fingerprint_sha256]
    assert "newest" not in listed[newer.fingerprint_sha256]


def test_the_older_certificates_page_points_to_the_newer_one(employee_client, enrolled_twice):
    older, newer, dual_use = enrolled_twice

    old_page = page_of(employee_client.get(f"/directory/{older.fingerprint_sha256}/"))
    new_page = page_of(employee_client.get(f"/directory/{newer.fingerprint_sha256}/"))
    only_page = page_of(employee_client.get(f"/directory/{dual_use.fingerprint_sha256}/"))

    assert "There is a newer one." in old_page
    assert f'href="/directory/{newer.fingerprint_sha256}/">use that one</a>' in old_page
    assert "The newest of 2 valid signing certificates Lena Lindqvist holds" in new_page
    assert "There is a newer one." not in new_page
    for text in ("There is a newer one.", "The newest of"):
        assert text not in only_page


def test_a_revoked_newer_certificate_is_not_pointed_to(employee_client, enrolled_twice):
    older, newer, _dual_use = enrolled_twice
    services.certificate_revoke(certificate=newer, reason="cessationOfOperation")

    page = page_of(employee_client.get(f"/directory/{older.fingerprint_sha256}/"))

    assert "There is a newer one." not in page
    assert "The newest of" not in page


# --- which certificate to encrypt to --------------------------------------------------


def card_of(page: str, name: str) -> str:
    """One person's (or shared mailbox's) card in the results."""
    return page.split(f"<h2>{name}</h2>")[1].split('<li class="card person')[0]


def test_the_results_mark_the_certificate_to_encrypt_to_and_say_signing_only_plainly(
    employee_client, jose
):
    signing = jose.certificates.get(template__slug="smime-signing")
    dual_use = jose.certificates.get(template__slug="smime-dual-use")

    page = page_of(employee_client.get("/directory/", {"q": "jose"}))
    listed = entries(page)

    assert 'class="badge encrypt-to"' in listed[dual_use.fingerprint_sha256]
    assert "Encrypt to this one" in listed[dual_use.fingerprint_sha256]
    assert "Signing only — can't encrypt to this one" in listed[signing.fingerprint_sha256]
    assert "encrypt-to" not in listed[signing.fingerprint_sha256]
    assert "Signing only" not in listed[dual_use.fingerprint_sha256]
    # Its downloads head the card, before the list of certificates.
    card = card_of(page, "José García")
    offer = card.split('<ul class="certs">')[0]
    assert "Encrypt to the signing and encryption certificate until" in offer
    assert f'href="/directory/{dual_use.fingerprint_sha256}.cer"' in offer
    assert f'href="/directory/{dual_use.fingerprint_sha256}.vcf"' in offer
    assert signing.fingerprint_sha256 not in offer


def test_of_two_dual_use_certificates_the_newer_is_the_one_to_encrypt_to(
    employee_client, person, issue
):
    user = person("Rita", "Renewed")
    older = issue(user, "smime-dual-use")
    newer = issue(user, "smime-dual-use")

    listed = entries(page_of(employee_client.get("/directory/", {"q": "rita"})))

    assert 'class="badge encrypt-to"' in listed[newer.fingerprint_sha256]
    assert "encrypt-to" not in listed[older.fingerprint_sha256]


def test_someone_with_only_a_signing_certificate_has_nothing_to_encrypt_to(
    employee_client, person, issue
):
    user = person("Sam", "Signer")
    signing = issue(user, "smime-signing")

    card = card_of(page_of(employee_client.get("/directory/", {"q": "sam"})), "Sam Signer")

    assert "Sam Signer has no certificate you can encrypt to yet: ask them to get one at" in card
    assert 'href="/enroll/"' in card
    assert "badge encrypt-to" not in card
    assert f"{signing.fingerprint_sha256}.vcf" not in card


@pytest.mark.parametrize("partial", [False, True])
def test_searching_for_yourself_speaks_to_you_and_of_the_others(person, issue, partial):
    """It said "Sam Signer has no certificate you can encrypt to" to Sam Signer."""
    sam = person("Sam", "Signer")
    issue(sam, "smime-signing")
    issue(person("Sam", "Second"), "smime-signing")
    query = {"q": "sam", **({"partial": "1"} if partial else {})}

    page = page_of(client_for(sam).get("/directory/", query))

    own = card_of(page, "Sam Signer")
    assert "You have no certificate others can encrypt to yet: get one at" in own
    assert 'href="/enroll/"' in own
    assert "Sam Signer has no certificate" not in page
    other = card_of(page, "Sam Second")
    assert "Sam Second has no certificate you can encrypt to yet: ask them to get one" in other
    assert "You have" not in other


def test_an_anonymous_reader_of_the_public_directory_is_spoken_to_as_a_sender(
    anonymous_client, person, issue, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True
    issue(person("Sam", "Signer"), "smime-signing")

    page = page_of(anonymous_client.get("/directory/", {"q": "sam"}))

    assert "Sam Signer has no certificate you can encrypt to yet" in page
    assert "You have" not in page


def test_revoked_and_expired_certificates_are_never_the_one_to_encrypt_to(
    employee, person, issue, time_machine
):
    user = person("Eva", "Ended")
    revoked = issue(user, "smime-dual-use")
    services.certificate_revoke(certificate=revoked, reason="superseded")
    expiring = issue(user, "smime-dual-use")
    time_machine.move_to(expiring.not_after + timedelta(seconds=1))
    client = client_for(employee)  # signed in after the jump: sessions expire too

    page = page_of(client.get("/directory/", {"q": "eva", "include_inactive": "on"}))
    listed = entries(page)

    assert set(listed) == {revoked.fingerprint_sha256, expiring.fingerprint_sha256}
    assert "badge encrypt-to" not in page
    assert "Eva Ended has no certificate you can encrypt to yet" in page


def test_a_revoked_newer_certificate_leaves_the_older_one_to_encrypt_to(
    employee_client, person, issue
):
    user = person("Rita", "Renewed")
    older = issue(user, "smime-dual-use")
    newer = issue(user, "smime-dual-use")
    services.certificate_revoke(certificate=newer, reason="keyCompromise")

    listed = entries(
        page_of(employee_client.get("/directory/", {"q": "rita", "include_inactive": "on"}))
    )

    assert 'class="badge encrypt-to"' in listed[older.fingerprint_sha256]
    assert "encrypt-to" not in listed[newer.fingerprint_sha256]


def test_a_shared_mailbox_card_says_which_certificate_to_encrypt_to(
    employee_client, officer, colleague, hierarchy, kra, template
):
    from enrollment import mailboxes

    finance = mailboxes.mailbox_create(
        email="finance@example.com", display_name="Finance", delegates=[colleague], actor=officer
    )

    def issue_for_finance():
        certificate, _bundle = services.certificate_issue_with_server_key(
            template=template("smime-encryption"),
            owner=colleague,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password="correct horse battery staple",
            mailbox=finance,
        )
        return certificate

    older, newer = issue_for_finance(), issue_for_finance()

    page = page_of(employee_client.get("/directory/", {"q": "finance"}))
    assert 'class="badge encrypt-to"' in entries(page)[newer.fingerprint_sha256]
    assert "encrypt-to" not in entries(page)[older.fingerprint_sha256]
    assert f'href="/directory/{newer.fingerprint_sha256}.vcf"' in card_of(page, "Finance")

    for certificate in (older, newer):
        services.certificate_revoke(certificate=certificate, reason="superseded")
    page = page_of(employee_client.get("/directory/", {"q": "finance", "include_inactive": "on"}))
    assert "badge encrypt-to" not in page
    assert "Finance has no certificate you can encrypt to yet: ask its delegates" in page


def test_marking_what_to_encrypt_to_costs_no_query_per_person(employee_client, person, issue):
    def queries_for(query: str, expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            page = page_of(employee_client.get("/directory/", {"q": query}))
        assert page.count('class="card person"') == expected
        return len(captured)

    quinn = person("Quinn", "Solo", username="quinn")
    issue(quinn, "smime-signing")
    for n in range(6):
        user = person("Pat", f"Page{n}", username=f"pat{n}")
        issue(user, "smime-signing")
        issue(user, "smime-dual-use")

    assert queries_for("pat", 6) == queries_for("quinn", 1)


# --- a certificate for an address its holder no longer has ----------------------------


def move(user, address: str) -> None:
    """The account's address changes (a new name, a sync): its certificates for the old
    one stay valid for a grace period (enrollment.outdated)."""
    user.email = address
    user.save()


def test_a_certificate_for_an_old_address_is_never_the_one_to_encrypt_to(
    employee_client, person, issue
):
    user = person("Rita", "Renamed", email="rita.old@example.com")
    old = issue(user, "smime-dual-use")
    move(user, "rita.new@example.com")
    new = issue(user, "smime-dual-use")

    page = page_of(employee_client.get("/directory/", {"q": "rita"}))
    listed = entries(page)

    assert 'class="badge encrypt-to"' in listed[new.fingerprint_sha256]
    assert "old-address" not in listed[new.fingerprint_sha256]
    assert "encrypt-to" not in listed[old.fingerprint_sha256]
    assert "For an old address — don't encrypt to this one" in listed[old.fingerprint_sha256]
    assert (
        "For rita.old@example.com, an address Rita Renamed no longer has: encrypt to "
        f'<a href="/directory/{new.fingerprint_sha256}/">the signing and encryption '
        "certificate for rita.new@example.com</a> instead."
    ) in listed[old.fingerprint_sha256]
    # Two valid dual-use certificates: the newest mark never falls on the old address's.
    assert "badge newest" not in listed[old.fingerprint_sha256]
    offer = card_of(page, "Rita Renamed").split('<ul class="certs">')[0]
    assert f'href="/directory/{new.fingerprint_sha256}.vcf"' in offer
    assert old.fingerprint_sha256 not in offer


def test_someone_whose_address_changed_has_nothing_to_encrypt_to_until_they_renew(
    employee_client, person, issue
):
    user = person("Rita", "Renamed", email="rita.old@example.com")
    old = issue(user, "smime-dual-use")
    move(user, "rita.new@example.com")

    card = card_of(page_of(employee_client.get("/directory/", {"q": "rita"})), "Rita Renamed")

    assert "Rita Renamed has no certificate you can encrypt to yet: ask them to get one" in card
    assert "badge encrypt-to" not in card
    assert f"{old.fingerprint_sha256}.vcf" not in card
    assert "For an old address — don't encrypt to this one" in card
    assert "For rita.old@example.com, an address Rita Renamed no longer has." in card


def test_an_address_handed_on_is_recommended_for_its_new_holder_only(
    employee_client, person, issue
):
    """team@ was Ann's and is Ben's now: mail to it reaches Ben, and two people each with
    a certificate "to encrypt to" for it would send half of it to Ann."""
    ann = person("Ann", "One", "Team", email="team@example.com", username="ann")
    anns = issue(ann, "smime-dual-use")
    move(ann, "ann@example.com")
    ben = person("Ben", "Two", "Team", email="team@example.com", username="ben")
    bens = issue(ben, "smime-dual-use")

    both = page_of(employee_client.get("/directory/", {"q": "team"}))
    by_address = page_of(employee_client.get("/directory/", {"q": "team@example.com"}))

    assert 'class="badge encrypt-to"' in entries(both)[bens.fingerprint_sha256]
    assert "encrypt-to" not in entries(both)[anns.fingerprint_sha256]
    assert "Ann One has no certificate you can encrypt to yet" in card_of(both, "Ann One")
    assert both.count('class="badge encrypt-to"') == 1
    assert set(entries(by_address)) == {bens.fingerprint_sha256}
    assert 'class="badge encrypt-to"' in entries(by_address)[bens.fingerprint_sha256]


def test_an_address_changed_back_makes_the_newer_certificate_the_old_one(
    employee_client, person, issue
):
    """A → B → A within the grace period: the certificate for A is to encrypt to again,
    and the newer one, for B, is the old one."""
    user = person("Rita", "Renamed", email="rita@example.com")
    first = issue(user, "smime-dual-use")
    move(user, "rita.b@example.com")
    for_b = issue(user, "smime-dual-use")
    move(user, "rita@example.com")

    listed = entries(page_of(employee_client.get("/directory/", {"q": "rita"})))

    assert 'class="badge encrypt-to"' in listed[first.fingerprint_sha256]
    assert 'class="badge newest"' in listed[first.fingerprint_sha256]
    assert "For an old address" in listed[for_b.fingerprint_sha256]
    assert "badge newest" not in listed[for_b.fingerprint_sha256]


@pytest.mark.parametrize("partial", [False, True])
def test_your_certificate_for_an_old_address_speaks_to_you(person, issue, partial):
    user = person("Rita", "Renamed", email="rita.old@example.com")
    old = issue(user, "smime-dual-use")
    move(user, "rita.new@example.com")
    new = issue(user, "smime-dual-use")
    query = {"q": "rita", **({"partial": "1"} if partial else {})}

    listed = entries(page_of(client_for(user).get("/directory/", query)))

    assert (
        "For rita.old@example.com, an address you no longer have: others encrypt to you with "
        f'<a href="/directory/{new.fingerprint_sha256}/">'
    ) in listed[old.fingerprint_sha256]


def test_an_anonymous_reader_of_the_public_directory_sees_the_old_address_alike(
    anonymous_client, person, issue, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True
    user = person("Rita", "Renamed", email="rita.old@example.com")
    old = issue(user, "smime-dual-use")
    move(user, "rita.new@example.com")

    page = page_of(anonymous_client.get("/directory/", {"q": "rita"}))

    assert "badge encrypt-to" not in page
    assert "For an old address — don't encrypt to this one" in entries(page)[old.fingerprint_sha256]
    assert "Rita Renamed has no certificate you can encrypt to yet" in page
    assert "You have" not in page
    assert "you no longer have" not in page


def test_a_certificate_naming_no_address_is_still_the_one_to_encrypt_to(
    employee_client, person, issue
):
    """Some imported certificates name no address: no mailbox to have lost."""
    from enrollment.models import Certificate

    user = person("Rita", "Renamed", email="rita.old@example.com")
    nameless = issue(user, "smime-dual-use")
    Certificate.objects.filter(pk=nameless.pk).update(email="", emails=[])
    move(user, "rita.new@example.com")

    listed = entries(page_of(employee_client.get("/directory/", {"q": "rita"})))

    assert 'class="badge encrypt-to"' in listed[nameless.fingerprint_sha256]
    assert "old address" not in listed[nameless.fingerprint_sha256]


def test_people_whose_addresses_changed_cost_no_query_per_person(employee_client, person, issue):
    def queries_for(query: str, expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            page = page_of(employee_client.get("/directory/", {"q": query}))
        assert page.count('class="card person"') == expected
        return len(captured)

    quinn = person("Quinn", "Solo", username="quinn")
    issue(quinn, "smime-dual-use")
    for n in range(6):
        user = person("Pat", f"Page{n}", username=f"pat{n}")
        issue(user, "smime-dual-use")
        move(user, f"pat.page{n}@example.com")
        if n % 2:
            issue(user, "smime-dual-use")

    assert queries_for("pat", 6) == queries_for("quinn", 1)
