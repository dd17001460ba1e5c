"""GET /api/v1/directory/: what a mail gateway gets for an address, search, who may ask."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from cryptography import x509

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from enrollment import services
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/directory/"


@pytest.fixture
def jose(person):
    return person("José", "García", "Finance", email="jose.garcia@example.com")


@pytest.fixture
def certs(jose, issue, encryption_template):
    """One of each purpose for José, issued in this order."""
    return {
        "signing": issue(jose, "smime-signing"),
        "dual_use": issue(jose, "smime-dual-use"),
        "encryption": issue(jose, "test-encryption"),
    }


def fingerprints(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["fingerprint_sha256"] for item in response.json()["results"]]


# --- ?email= : what to encrypt to -----------------------------------------------------


def test_an_address_gives_its_encryption_capable_certificates_newest_first(employee_client, certs):
    response = employee_client.get(URL, {"email": "jose.garcia@example.com"})

    assert fingerprints(response) == [
        certs["encryption"].fingerprint_sha256,
        certs["dual_use"].fingerprint_sha256,
    ]
    assert response.json()["next"] is None


def test_a_signing_only_certificate_is_never_offered_for_encryption(employee_client, jose, issue):
    issue(jose, "smime-signing")

    assert fingerprints(employee_client.get(URL, {"email": "jose.garcia@example.com"})) == []


def test_the_address_matches_in_any_case(employee_client, certs):
    response = employee_client.get(URL, {"email": "  Jose.GARCIA@Example.COM "})

    assert len(fingerprints(response)) == 2


def test_a_revoked_certificate_disappears_at_once(employee_client, certs):
    services.certificate_revoke(certificate=certs["encryption"], reason="keyCompromise")

    response = employee_client.get(URL, {"email": "jose.garcia@example.com"})

    assert fingerprints(response) == [certs["dual_use"].fingerprint_sha256]


def test_someone_who_has_left_is_neither_offered_nor_found(employee_client, jose, certs):
    """A deactivated account: its valid certificates are no one to encrypt to any more."""
    jose.is_active = False
    jose.save()

    assert fingerprints(employee_client.get(URL, {"email": "jose.garcia@example.com"})) == []
    for include_inactive in ("false", "true"):
        found = employee_client.get(URL, {"q": "García", "include_inactive": include_inactive})
        assert fingerprints(found) == []

    page = employee_client.get(f"/directory/{certs['dual_use'].fingerprint_sha256}/")
    assert "no longer active" in page.content.decode()  # the page itself stays, for signatures

    jose.is_active = True
    jose.save()
    assert len(fingerprints(employee_client.get(URL, {"email": "jose.garcia@example.com"}))) == 2


def test_an_expired_certificate_is_not_offered(employee, certs, time_machine):
    time_machine.move_to(certs["dual_use"].not_after + timedelta(seconds=1))
    client = client_for(employee)  # signed in after the jump: sessions expire too

    assert fingerprints(client.get(URL, {"email": "jose.garcia@example.com"})) == []


def test_each_result_carries_its_pem_and_chain(employee_client, certs, hierarchy):
    (first, _second) = employee_client.get(URL, {"email": "jose.garcia@example.com"}).json()[
        "results"
    ]

    leaf = x509.load_pem_x509_certificate(first["pem"].encode())
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in first["chain_pem"]]
    assert leaf == certs["encryption"].certificate
    assert chain == [hierarchy.issuing.certificate, hierarchy.root.certificate]
    leaf.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(chain[1])
    assert first["purpose"] == "encryption"
    assert first["state"] == "valid"
    assert first["owner"] == {
        "name": "José García",
        "email": "jose.garcia@example.com",
        "organizational_unit": "Finance",
    }
    assert first["url"].endswith(f"/directory/{certs['encryption'].fingerprint_sha256}/")
    assert "PRIVATE KEY" not in str(first)


def test_an_unknown_address_gives_an_empty_list(employee_client, certs):
    assert fingerprints(employee_client.get(URL, {"email": "nobody@example.com"})) == []


# --- ?q= : search ---------------------------------------------------------------------


def test_a_search_gives_the_valid_certificates_of_matching_people(employee_client, certs):
    response = employee_client.get(URL, {"q": "garcia"})

    assert set(fingerprints(response)) == {c.fingerprint_sha256 for c in certs.values()}


def test_a_search_can_include_revoked_and_expired_certificates(employee_client, certs):
    services.certificate_revoke(certificate=certs["signing"], reason="superseded")

    default = fingerprints(employee_client.get(URL, {"q": "garcia"}))
    everything = employee_client.get(URL, {"q": "garcia", "include_inactive": "true"}).json()

    assert certs["signing"].fingerprint_sha256 not in default
    states = {item["fingerprint_sha256"]: item["state"] for item in everything["results"]}
    assert states[certs["signing"].fingerprint_sha256] == "revoked"


def test_a_search_pages_by_people_following_next(employee_client, person, issue):
    for n in range(5):
        issue(person("Pat", f"Page{n}", username=f"pat{n}"))

    names, url, params = [], URL, {"q": "pat", "limit": 2}
    for _ in range(5):
        body = employee_client.get(url, params).json()
        names += [item["owner"]["name"] for item in body["results"]]
        if body["next"] is None:
            break
        url, params = body["next"], None

    assert names == [f"Pat Page{n}" for n in range(5)]


# --- which certificate to encrypt to -----------------------------------------------------


def marks(response) -> dict[str, tuple[bool, bool]]:
    """(usable_for_encryption, recommended_for_encryption) by fingerprint."""
    assert response.status_code == 200, response.content
    return {
        item["fingerprint_sha256"]: (
            item["usable_for_encryption"],
            item["recommended_for_encryption"],
        )
        for item in response.json()["results"]
    }


def test_a_search_says_which_certificate_to_encrypt_to(employee_client, certs):
    found = marks(employee_client.get(URL, {"q": "garcia"}))

    assert found == {
        certs["signing"].fingerprint_sha256: (False, False),  # signing only: never
        certs["dual_use"].fingerprint_sha256: (True, False),
        certs["encryption"].fingerprint_sha256: (True, True),  # the newest that can encrypt
    }


def test_an_address_lookup_recommends_the_newest(employee_client, certs):
    found = marks(employee_client.get(URL, {"email": "jose.garcia@example.com"}))

    assert found == {
        certs["encryption"].fingerprint_sha256: (True, True),
        certs["dual_use"].fingerprint_sha256: (True, False),
    }


def test_of_two_dual_use_certificates_the_newer_is_recommended(employee_client, jose, issue):
    signing = issue(jose, "smime-signing")
    older = issue(jose, "smime-dual-use")
    newer = issue(jose, "smime-dual-use")

    for params in ({"q": "garcia"}, {"email": "jose.garcia@example.com"}):
        found = marks(employee_client.get(URL, params))
        assert found[newer.fingerprint_sha256] == (True, True)
        assert found[older.fingerprint_sha256] == (True, False)
    assert marks(employee_client.get(URL, {"q": "garcia"}))[signing.fingerprint_sha256] == (
        False,
        False,
    )


def test_someone_with_only_a_signing_certificate_has_none_recommended(employee_client, jose, issue):
    signing = issue(jose, "smime-signing")

    found = marks(employee_client.get(URL, {"q": "garcia"}))

    assert found == {signing.fingerprint_sha256: (False, False)}


def test_revoked_certificates_are_neither_usable_nor_recommended(employee_client, certs):
    services.certificate_revoke(certificate=certs["encryption"], reason="keyCompromise")

    found = marks(employee_client.get(URL, {"q": "garcia", "include_inactive": "true"}))

    assert found[certs["encryption"].fingerprint_sha256] == (False, False)
    assert found[certs["dual_use"].fingerprint_sha256] == (True, True)


def test_expired_certificates_are_neither_usable_nor_recommended(
    employee, jose, issue, time_machine
):
    dual_use = issue(jose, "smime-dual-use")
    time_machine.move_to(dual_use.not_after + timedelta(seconds=1))
    client = client_for(employee)  # signed in after the jump: sessions expire too

    found = marks(client.get(URL, {"q": "garcia", "include_inactive": "true"}))

    assert found == {dual_use.fingerprint_sha256: (False, False)}


def test_each_holder_of_an_address_gets_its_own_recommendation(employee_client, person, issue):
    """Two accounts given one address (a directory sync's mistake; issuance refuses the
    address until it is put right), each with certificates for it from before: each
    holder's newest is marked, never one across both."""
    first = person("Ann", "One", email="team@example.com", username="ann")
    firsts = [issue(first), issue(first)]
    first.email = "ann@example.com"
    first.save()
    second = person("Ben", "Two", email="team@example.com", username="ben")
    seconds = [issue(second)]
    first.email = "team@example.com"
    first.save()

    found = marks(employee_client.get(URL, {"email": "team@example.com"}))

    assert found == {
        firsts[0].fingerprint_sha256: (True, False),
        firsts[1].fingerprint_sha256: (True, True),
        seconds[0].fingerprint_sha256: (True, True),
    }


# --- an address its holder no longer has ----------------------------------------------


def current_marks(response) -> dict[str, tuple[bool, bool, bool]]:
    """(usable_for_encryption, recommended_for_encryption, for_current_address)."""
    assert response.status_code == 200, response.content
    return {
        item["fingerprint_sha256"]: (
            item["usable_for_encryption"],
            item["recommended_for_encryption"],
            item["for_current_address"],
        )
        for item in response.json()["results"]
    }


@pytest.fixture
def handed_on(person, issue):
    """team@ was Ann's; she is ann@ now, her certificates for team@ still in their grace
    period, and Ben, team@'s new holder, has one for it."""
    ann = person("Ann", "One", "Team", email="team@example.com", username="ann")
    olds = [issue(ann), issue(ann)]
    ann.email = "ann@example.com"
    ann.save()
    ben = person("Ben", "Two", "Team", email="team@example.com", username="ben")
    return {"ann": ann, "olds": olds, "ben": ben, "bens": issue(ben)}


def test_an_address_handed_on_gives_only_its_new_holders_certificate(employee_client, handed_on):
    """Mail to team@ reaches Ben now: Ann's certificates for it are no one to encrypt to."""
    found = current_marks(employee_client.get(URL, {"email": "team@example.com"}))

    assert found == {handed_on["bens"].fingerprint_sha256: (True, True, True)}


def test_an_address_handed_on_to_someone_without_a_certificate_gives_none(
    employee_client, person, issue
):
    """The harm itself: a gateway encrypting to what the lookup gives would make Ben's
    mail readable by Ann, and not by him."""
    ann = person("Ann", "One", email="team@example.com", username="ann")
    issue(ann)
    ann.email = "ann@example.com"
    ann.save()
    person("Ben", "Two", email="team@example.com", username="ben")

    assert fingerprints(employee_client.get(URL, {"email": "team@example.com"})) == []


def test_the_old_address_gives_nothing_and_the_new_one_the_renewed_certificate(
    employee_client, jose, issue
):
    old = issue(jose)
    jose.email = "jose.garcia-lopez@example.com"
    jose.save()
    new = issue(jose)

    assert fingerprints(employee_client.get(URL, {"email": "jose.garcia@example.com"})) == []
    assert current_marks(employee_client.get(URL, {"email": "jose.garcia-lopez@example.com"})) == {
        new.fingerprint_sha256: (True, True, True)
    }
    assert old.email == "jose.garcia@example.com"


def test_a_search_says_a_certificate_for_an_old_address_is_not_to_encrypt_to(
    employee_client, handed_on, issue
):
    ann = handed_on["ann"]
    renewed = issue(ann)  # for ann@

    found = current_marks(employee_client.get(URL, {"q": "team"}))

    assert found == {
        handed_on["olds"][0].fingerprint_sha256: (False, False, False),
        handed_on["olds"][1].fingerprint_sha256: (False, False, False),
        renewed.fingerprint_sha256: (True, True, True),
        handed_on["bens"].fingerprint_sha256: (True, True, True),
    }
    olds = [item for item in employee_client.get(URL, {"q": "ann"}).json()["results"]]
    assert {item["owner"]["email"] for item in olds} == {"ann@example.com"}
    assert {item["email"] for item in olds} == {"team@example.com", "ann@example.com"}


def test_someone_whose_address_changed_has_none_recommended_until_they_renew(
    employee_client, jose, issue
):
    old = issue(jose)
    jose.email = "jose.garcia-lopez@example.com"
    jose.save()

    found = current_marks(employee_client.get(URL, {"q": "garcia"}))

    assert found == {old.fingerprint_sha256: (False, False, False)}


def test_a_change_of_case_alone_changes_nothing(employee_client, jose, issue):
    dual_use = issue(jose)
    jose.email = "  Jose.Garcia@EXAMPLE.com "
    jose.save()

    for params in ({"q": "garcia"}, {"email": "jose.garcia@example.com"}):
        found = current_marks(employee_client.get(URL, params))
        assert found == {dual_use.fingerprint_sha256: (True, True, True)}


def test_a_certificate_naming_no_address_is_still_offered(employee_client, jose, issue):
    """Some imported certificates name no address: there is no mailbox to have lost."""
    from enrollment.models import Certificate

    dual_use = issue(jose)
    Certificate.objects.filter(pk=dual_use.pk).update(email="", emails=[])
    jose.email = "jose.garcia-lopez@example.com"
    jose.save()

    found = current_marks(employee_client.get(URL, {"q": "garcia"}))

    assert found == {dual_use.fingerprint_sha256: (True, True, True)}


def test_the_public_lookup_leaves_out_a_former_holders_certificate_alike(
    anonymous_client, handed_on, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True

    by_address = current_marks(anonymous_client.get(URL, {"email": "team@example.com"}))
    by_search = current_marks(anonymous_client.get(URL, {"q": "ann"}))

    assert by_address == {handed_on["bens"].fingerprint_sha256: (True, True, True)}
    assert set(by_search.values()) == {(False, False, False)}


def test_an_address_handed_on_costs_no_more_queries(employee_client, handed_on, person, issue):
    """The rule reads owners the lookup loads already: no query per certificate."""
    issue(person("Carl", "Three", email="carl@example.com", username="carl"))

    def queries_for(params: dict[str, str], expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert len(fingerprints(employee_client.get(URL, params))) == expected
        return len(captured)

    assert queries_for({"email": "team@example.com"}, 1) == queries_for(
        {"email": "carl@example.com"}, 1
    )
    assert queries_for({"q": "team"}, 3) == queries_for({"q": "carl"}, 1)


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": "jose", "email": "jose.garcia@example.com"},
        {"q": ""},
        {"q": "j"},
        {"q": "a" * 201},
        {"q": "jo\x00se"},
        {"email": "not an address"},
        {"email": "jose\x00@example.com"},
        {"email": "a" * 250 + "@example.com"},
        {"q": "jose", "limit": "0"},
        {"q": "jose", "limit": "101"},
        {"q": "jose", "after": "x"},
        {"q": "jose", "after": "99999999999999999999"},
        {"q": "jose", "after": "123456"},
    ],
)
def test_bad_queries_are_a_clean_400(employee_client, certs, params):
    response = employee_client.get(URL, params)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "query",
    ["' OR 1=1 --", "%%", "__", "(a+)+$", "\\", "garcia%", "😀😀", "\u202e\u202e"],
)
def test_hostile_searches_give_an_empty_result_or_a_400(employee_client, certs, query):
    response = employee_client.get(URL, {"q": query})

    if response.status_code != 400:  # "\\" and invisible characters leave no term to search
        assert fingerprints(response) == []


@pytest.mark.parametrize(
    "raw", ["q=%FF%FE", "email=jose%FF@example.com", "q=jo\xff\xfese", "email=%ED%A0%80"]
)
def test_invalid_utf8_is_never_a_500(employee_client, certs, raw):
    response = employee_client.generic("GET", URL, QUERY_STRING=raw)

    assert response.status_code in (200, 400)


# --- who may ask ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["employee", "colleague", "officer"])
def test_signed_in_people_may_look_up(role, request, certs):
    client = client_for(request.getfixturevalue(role))

    assert len(fingerprints(client.get(URL, {"email": "jose.garcia@example.com"}))) == 2


def test_anonymous_callers_are_refused_by_default(anonymous_client, certs):
    response = anonymous_client.get(URL, {"email": "jose.garcia@example.com"})

    assert response.status_code == 401
    assert "jose" not in response.content.decode().lower()


def test_the_public_setting_opens_the_lookup_to_anonymous_callers(
    anonymous_client, certs, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True

    assert len(fingerprints(anonymous_client.get(URL, {"email": "jose.garcia@example.com"}))) == 2


def test_an_api_token_may_look_up(employee, certs):
    from knox.models import AuthToken

    _instance, token = AuthToken.objects.create(employee)
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")

    assert len(fingerprints(client.get(URL, {"email": "jose.garcia@example.com"}))) == 2


def test_a_deactivated_accounts_api_token_may_not_look_up(person, certs):
    from knox.models import AuthToken

    former = person("Fred", "Former")
    _instance, token = AuthToken.objects.create(former)
    former.is_active = False
    former.save()
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")

    response = client.get(URL, {"email": "jose.garcia@example.com"})

    assert response.status_code == 401
    assert "jose" not in response.content.decode().lower()


def test_the_lookup_is_read_only(employee_client, certs):
    assert employee_client.post(URL, {"email": "jose.garcia@example.com"}).status_code == 405


# --- documentation --------------------------------------------------------------------


def test_the_lookup_is_in_the_openapi_schema(employee_client):
    schema = yaml.safe_load(employee_client.get("/api/v1/schema/").content)

    operation = schema["paths"]["/api/v1/directory/"]["get"]
    assert operation["operationId"] == "directory_lookup"
    assert {p["name"] for p in operation["parameters"]} >= {"q", "email", "include_inactive"}
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/LookupOut"}
    certificate = schema["components"]["schemas"]["DirectoryCertificateOut"]["properties"]
    assert {"pem", "chain_pem", "purpose", "state", "fingerprint_sha256"} <= set(certificate)


def test_the_encryption_marks_are_documented_in_the_schema(employee_client):
    schema = yaml.safe_load(employee_client.get("/api/v1/schema/").content)

    out = schema["components"]["schemas"]["DirectoryCertificateOut"]
    for field in ("usable_for_encryption", "recommended_for_encryption", "for_current_address"):
        assert out["properties"][field]["type"] == "boolean"
        assert out["properties"][field]["description"]
        assert field in out["required"]
    assert "signing-only" in out["properties"]["usable_for_encryption"]["description"]
    assert "no longer has" in out["properties"]["usable_for_encryption"]["description"]


def test_timezone_is_utc_in_results(employee_client, certs):
    (item, *_rest) = employee_client.get(URL, {"email": "jose.garcia@example.com"}).json()[
        "results"
    ]
    assert item["not_after"].endswith("Z")
    assert timezone.now().tzinfo is not None


def test_a_page_costs_the_same_few_queries_however_many_results(employee_client, person, issue):
    def queries_for(query: str, expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert len(fingerprints(employee_client.get(URL, {"q": query}))) == expected
        return len(captured)

    issue(person("Quinn", "Solo", username="quinn"))
    for n in range(6):
        user = person("Pat", f"Page{n}", username=f"pat{n}")
        issue(user)
        issue(user, "smime-signing")

    assert queries_for("pat", 12) == queries_for("quinn", 1) <= 8


def test_a_page_of_people_whose_addresses_changed_costs_the_same_queries(
    employee_client, person, issue
):
    """The current-address rule reads each person's address from the row the page holds."""

    def queries_for(query: str, expected: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            found = current_marks(employee_client.get(URL, {"q": query}))
        assert len(found) == expected
        return len(captured)

    issue(person("Quinn", "Solo", username="quinn"))
    for n in range(6):
        user = person("Pat", f"Page{n}", username=f"pat{n}")
        issue(user)
        user.email = f"pat.page{n}@example.com"
        user.save()
        issue(user)

    assert queries_for("pat", 12) == queries_for("quinn", 1) <= 8
