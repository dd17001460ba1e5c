"""POST /api/v1/rollouts/ and GET /api/v1/rollouts/{id}/: officers only, schema-true."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django.core import mail

from enrollment.models import AuditEvent, CertificateRequest, Rollout
from tests.enrollment.api_tools import API, session_client, token_client
from tests.enrollment.test_api_schema import assert_answer_matches, schema  # noqa: F401
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

ROLLOUTS = f"{API}/rollouts/"


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def body(*people: str, **extra: object) -> dict[str, object]:
    return {"template": "smime-signing", "people": list(people), **extra}


@pytest.mark.parametrize(
    ("role", "create", "read"),
    [
        ("officer", 201, 200),
        ("agent", 403, 403),
        ("employee", 403, 403),
        ("colleague", 403, 403),
        ("anonymous", 401, 401),
    ],
)
def test_only_officers_create_and_read_rollouts(
    role, create, read, signing, officer, agent_user, employee, colleague
):
    users = {"officer": officer, "agent": agent_user, "employee": employee,
             "colleague": colleague, "anonymous": None}  # fmt: skip
    invited = UserFactory()
    existing = token_client(officer).post(ROLLOUTS, body(invited.username), format="json")
    assert existing.status_code == 201
    client = token_client(users[role])
    someone = UserFactory()
    assert client.post(ROLLOUTS, body(someone.username), format="json").status_code == create
    assert client.get(f"{ROLLOUTS}{existing.json()['id']}/").status_code == read
    assert Rollout.objects.count() == (2 if create == 201 else 1)


def test_a_browser_session_needs_the_csrf_token(signing, officer, employee):
    client = session_client(officer, enforce_csrf=True)
    assert client.post(ROLLOUTS, body("alice"), format="json").status_code == 403
    assert Rollout.objects.count() == 0


def test_create_answers_with_counts_and_skips_and_matches_the_schema(
    schema,  # noqa: F811
    signing,
    officer,
    employee,
    colleague,
    django_capture_on_commit_callbacks,
):
    client = token_client(officer)
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post(
            ROLLOUTS, body("alice", "bob@example.com", "ghost", "alice", name="Pilot"),
            format="json",
        )  # fmt: skip
    assert created.status_code == 201, created.content
    assert_answer_matches(schema, "/api/v1/rollouts/", "post", created)
    answer = created.json()
    assert answer["invited"] == 2
    assert answer["counts"]["invited"] == 2
    assert {s["reason"] for s in answer["skipped"]} == {"unknown", "duplicate"}
    assert {p["username"] for p in answer["people"]} == {"alice", "bob"}
    assert len(mail.outbox) == 2
    read = client.get(answer["url"])
    assert read.status_code == 200
    assert_answer_matches(schema, "/api/v1/rollouts/{id}/", "get", read)


def test_the_schema_documents_both_operations(schema):  # noqa: F811
    assert "post" in schema["paths"]["/api/v1/rollouts/"]
    assert "get" in schema["paths"]["/api/v1/rollouts/{id}/"]
    responses = schema["paths"]["/api/v1/rollouts/"]["post"]["responses"]
    assert {"201", "400", "401", "403"} <= set(responses)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"template": "nope", "people": ["alice"]}, "template"),
        ({"template": "smime-signing", "group": "No such", "people": []}, "group"),
        ({"template": "smime-signing", "people": "alice"}, "people"),
        ({"template": "smime-signing", "people": ["al\x00ice"]}, "people"),
        ({"template": "smime-signing", "people": ["ghost"]}, "people"),
        ({"template": "smime-signing", "people": ["alice"], "key_algorithm": "dsa"},
         "key_algorithm"),
    ],
)  # fmt: skip
def test_bad_bodies_are_400_and_store_nothing(payload, field, signing, officer, employee):
    response = token_client(officer).post(ROLLOUTS, payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json() or "detail" in response.json()
    assert Rollout.objects.count() == 0
    assert CertificateRequest.objects.count() == 0
    assert not AuditEvent.objects.filter(action__startswith="rollout").exists()


@hypothesis_settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(people=st.lists(st.text(max_size=300), max_size=50))
def test_any_list_of_strings_gets_a_4xx_or_a_rollout_never_a_500(people, signing, officer):
    response = token_client(officer).post(ROLLOUTS, body(*people), format="json")
    # Only the officer exists, and is never invited: nobody can be.
    assert response.status_code == 400, response.content
    assert Rollout.objects.count() == 0


def test_a_list_over_the_limit_is_refused(signing, officer, employee, settings):
    settings.PKIPORTAL_ROLLOUT_MAX_PEOPLE = 3
    response = token_client(officer).post(ROLLOUTS, body(*["alice"] * 4), format="json")
    assert response.status_code == 400
    assert Rollout.objects.count() == 0


# --- from the review ---------------------------------------------------------------------


def test_an_api_item_is_one_entry_even_with_a_blank_in_it(officer, signing):
    UserFactory(username="ann")
    UserFactory(username="ben")
    client = token_client(officer)

    response = client.post(ROLLOUTS, body("ann ben"), format="json")

    assert response.status_code == 400  # nobody to invite: "ann ben" names no one
    assert not CertificateRequest.objects.exists()


def test_the_list_gives_counts_not_people(officer, signing):
    UserFactory(username="ann")
    client = token_client(officer)
    created = client.post(ROLLOUTS, body("ann"), format="json")
    assert created.status_code == 201

    listed = client.get(ROLLOUTS).json()["results"][0]

    assert "people" not in listed
    assert listed["invited"] == 1
    assert [p["username"] for p in client.get(listed["url"]).json()["people"]] == ["ann"]
