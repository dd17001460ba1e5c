"""The OpenAPI schema: complete, valid, warning-free, served, and true of real answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from django.core.management import call_command

from enrollment import recovery
from enrollment.models import Certificate, KeyRecoveryRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.api_tools import (
    CERTIFICATES,
    ENROLLMENTS,
    PENDING,
    certificate_url,
    csr_body,
    csr_pem,
    enrollment_url,
    request_url,
    server_key_body,
    session_client,
    token_client,
)
from tests.enrollment.tools import issue

EXPECTED_OPERATIONS = {
    ("/api/v1/auth/token/", "post"),
    ("/api/v1/auth/logout/", "post"),
    ("/api/v1/auth/logoutall/", "post"),
    ("/api/v1/enrollments/", "get"),
    ("/api/v1/enrollments/", "post"),
    ("/api/v1/enrollments/{id}/", "get"),
    ("/api/v1/enrollments/{id}/collect/", "post"),
    ("/api/v1/enrollments/{id}/withdraw/", "post"),
    ("/api/v1/certificates/", "get"),
    ("/api/v1/certificates/{serial}/", "get"),
    ("/api/v1/certificates/{serial}/revoke/", "post"),
    ("/api/v1/certificates/{serial}/renew/", "post"),
    ("/api/v1/requests/pending/", "get"),
    ("/api/v1/requests/{id}/approve/", "post"),
    ("/api/v1/requests/{id}/reject/", "post"),
    ("/api/v1/certificates/{serial}/recover/", "post"),
    ("/api/v1/recoveries/", "get"),
    ("/api/v1/recoveries/{id}/", "get"),
    ("/api/v1/recoveries/{id}/withdraw/", "post"),
}
# Writes that take no body: the schema says so rather than documenting an empty object.
WITHOUT_BODY = {
    ("/api/v1/enrollments/{id}/withdraw/", "post"),
    ("/api/v1/recoveries/{id}/withdraw/", "post"),
}


@pytest.fixture
def schema(db, tmp_path: Path) -> dict:
    """`manage.py spectacular --validate --fail-on-warn`: any warning fails the test."""
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    return yaml.safe_load(out.read_text())


def test_the_schema_validates_without_warnings_and_has_every_endpoint(schema):
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}

    assert operations >= EXPECTED_OPERATIONS


def test_every_write_documents_its_request_body_and_responses(schema):
    for path, method in EXPECTED_OPERATIONS:
        operation = schema["paths"][path][method]
        assert operation["responses"], (path, method)
        if (path, method) in WITHOUT_BODY:
            assert "requestBody" not in operation, (path, method)
        elif method == "post" and "/auth/" not in path:
            assert operation["requestBody"]["content"]["application/json"], (path, method)


def test_the_enrolment_body_is_one_of_the_two_shapes(schema):
    body = schema["paths"]["/api/v1/enrollments/"]["post"]["requestBody"]
    reference = body["content"]["application/json"]["schema"]["$ref"]
    shapes = schema["components"]["schemas"][reference.rsplit("/", 1)[1]]["oneOf"]

    assert {s["$ref"].rsplit("/", 1)[1] for s in shapes} == {
        "CsrEnrollmentIn",
        "ServerKeyEnrollmentIn",
    }
    responses = schema["paths"]["/api/v1/enrollments/"]["post"]["responses"]
    assert {"201", "202", "400", "401", "403", "413", "429"} <= set(responses)


def test_the_password_is_write_only_in_the_schema(schema):
    password = schema["components"]["schemas"]["ServerKeyEnrollmentIn"]["properties"][
        "pkcs12_password"
    ]

    assert password["writeOnly"] is True


def test_a_recoverys_state_is_documented_as_the_effective_one(schema):
    """The API answers state_shown, not the stored state: the schema says so, and keeps the
    enum (with every state's meaning) clients were generated from."""
    components = schema["components"]["schemas"]
    state = components["RecoveryOut"]["properties"]["state"]

    assert state["allOf"] == [{"$ref": "#/components/schemas/RecoveryOutStateEnum"}]
    assert state["description"].startswith("The effective state: as its approvals count now")
    assert "is `pending` again" in state["description"]
    assert components["RecoveryOutStateEnum"]["enum"] == list(KeyRecoveryRequest.State.values)
    assert "* `pending` - Waiting for approval" in components["RecoveryOutStateEnum"]["description"]


@pytest.mark.parametrize("path", ["/api/v1/schema/", "/api/v1/docs/"])
def test_the_schema_and_docs_are_served(client, db, path):
    assert client.get(path).status_code == 200


def test_the_docs_page_leads_back_to_the_portal(client, db):
    page = client.get("/api/v1/docs/").content.decode()

    assert 'href="/"' in page
    assert 'href="/account/tokens/"' in page
    assert 'id="swagger-ui"' in page  # drf-spectacular's own body is still there


@pytest.mark.parametrize(
    "path", ["/api/v1/enrollments/", "/api/v1/certificates/", "/api/v1/requests/pending/"]
)
def test_the_browsable_api_renders_for_a_browser_session(officer, path):
    client = session_client(officer)

    response = client.get(path, HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


# --- answers against the schema -------------------------------------------------------


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's null type, everywhere in the tree.

    Objects also refuse properties the schema does not list: a field left undocumented is
    as much a mismatch as a wrong type."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items()}
    if "properties" in converted and converted.get("type") == "object":
        converted.setdefault("additionalProperties", False)  # no undocumented fields either
    if converted.pop("nullable", False):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def assert_answer_matches(schema: dict, path: str, method: str, response: Any) -> None:
    """The answer's JSON is valid against what the schema documents for its status code."""
    documented = schema["paths"][path][method]["responses"][str(response.status_code)]
    body = documented["content"]["application/json"]["schema"]
    document = {"components": _json_schema(schema["components"]), "allOf": [_json_schema(body)]}
    jsonschema.Draft202012Validator(document).validate(response.json())


def test_answers_of_every_endpoint_match_the_schema(
    schema, hierarchy, template, employee, officer, colleague, key_pool
):
    """Valid and revoked certificates, a renewal and a first enrolment, a pending request,
    and a certificate without template or owner (the model allows both)."""
    me, them, ra = token_client(employee), token_client(colleague), token_client(officer)
    key = [key_pool.get(KeyAlgorithm.EC_P256, slot=slot) for slot in range(4)]

    def check(path: str, method: str, response: Any, status: int = 200) -> None:
        assert response.status_code == status, response.content
        assert_answer_matches(schema, path, method, response)

    enrolled = me.post(ENROLLMENTS, csr_body(key[0]), format="json")
    check("/api/v1/enrollments/", "post", enrolled, 201)
    renewed = me.post(
        f"{certificate_url(enrolled.json()['serial'])}renew/",
        {"csr": csr_pem(key[1])},
        format="json",
    )
    check("/api/v1/certificates/{serial}/renew/", "post", renewed, 201)
    issue(employee, template("smime-dual-use"), key[2])  # for the directory's e-mail lookup
    orphan = issue(colleague, template("smime-signing"), key[3])
    Certificate.objects.filter(pk=orphan.pk).update(template=None, owner=None)
    signing = template("smime-signing")
    signing.requires_approval = True
    signing.save()
    pending = them.post(ENROLLMENTS, server_key_body("smime-signing"), format="json")
    check("/api/v1/enrollments/", "post", pending, 202)

    check("/api/v1/enrollments/", "get", me.get(ENROLLMENTS))
    for answer in (enrolled, renewed):
        check("/api/v1/enrollments/{id}/", "get", me.get(enrollment_url(answer.json()["id"])))
    check("/api/v1/enrollments/{id}/", "get", ra.get(enrollment_url(pending.json()["id"])))
    for client in (me, ra):
        check("/api/v1/certificates/", "get", client.get(CERTIFICATES))
    for serial in (enrolled.json()["serial"], renewed.json()["serial"], orphan.serial):
        check("/api/v1/certificates/{serial}/", "get", ra.get(certificate_url(serial)))
    check("/api/v1/requests/pending/", "get", ra.get(PENDING))
    check("/api/v1/directory/", "get", me.get("/api/v1/directory/", {"q": "alice"}))
    check("/api/v1/directory/", "get", me.get("/api/v1/directory/", {"email": employee.email}))
    approved = ra.post(request_url(pending.json()["id"], "approve"), {}, format="json")
    check("/api/v1/requests/{id}/approve/", "post", approved)
    withdrawn = them.post(f"{enrollment_url(pending.json()['id'])}withdraw/")
    check("/api/v1/enrollments/{id}/withdraw/", "post", withdrawn)
    assert withdrawn.json()["state"] == "withdrawn"
    refused = them.post(f"{enrollment_url(pending.json()['id'])}withdraw/")
    check("/api/v1/enrollments/{id}/withdraw/", "post", refused, 409)
    revoked = ra.post(
        f"{certificate_url(orphan.serial)}revoke/", {"reason": "superseded"}, format="json"
    )
    check("/api/v1/certificates/{serial}/revoke/", "post", revoked)


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def test_answers_of_the_key_recovery_endpoints_match_the_schema(
    schema, archived, employee, officer, second_officer, kra, agent_user, fast_pkcs12
):
    """Asked, in progress, ready and withdrawn, and the 409 of a second ask."""
    me = token_client(employee)
    url = f"{certificate_url(archived.certificate.serial)}recover/"

    def check(path: str, method: str, response: Any, status: int = 200) -> None:
        assert response.status_code == status, response.content
        assert_answer_matches(schema, path, method, response)

    asked = me.post(url, {"reason": "Lost laptop."}, format="json")
    check("/api/v1/certificates/{serial}/recover/", "post", asked, 201)
    check(
        "/api/v1/certificates/{serial}/recover/",
        "post",
        me.post(url, {"reason": "Again."}, format="json"),
        409,
    )
    check("/api/v1/recoveries/", "get", me.get("/api/v1/recoveries/"))
    found = KeyRecoveryRequest.objects.get(pk=asked.json()["id"])
    recovery.recovery_accept(recovery=found, officer=officer, note="Called her back.")
    recovery.recovery_approve(recovery=found, officer=second_officer)
    recovery.recovery_perform(
        recovery=found, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip
    ready = me.get(asked.json()["url"])
    check("/api/v1/recoveries/{id}/", "get", ready)
    assert ready.json()["download_until"] is not None
    check(
        "/api/v1/recoveries/{id}/withdraw/", "post", me.post(f"{asked.json()['url']}withdraw/"), 409
    )
    recovery.recovery_expire_due(now=found.download_expires_at)
    again = me.post(url, {"reason": "Still lost."}, format="json")
    withdrawn = me.post(f"{again.json()['url']}withdraw/")
    check("/api/v1/recoveries/{id}/withdraw/", "post", withdrawn)
    assert withdrawn.json()["state"] == "withdrawn"
