"""The OpenAPI schema: complete, valid, warning-free, and served with its docs page."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from django.core.management import call_command

from tests.enrollment.api_tools import session_client

EXPECTED_OPERATIONS = {
    ("/api/v1/auth/token/", "post"),
    ("/api/v1/auth/logout/", "post"),
    ("/api/v1/auth/logoutall/", "post"),
    ("/api/v1/enrollments/", "get"),
    ("/api/v1/enrollments/", "post"),
    ("/api/v1/enrollments/{id}/", "get"),
    ("/api/v1/enrollments/{id}/collect/", "post"),
    ("/api/v1/certificates/", "get"),
    ("/api/v1/certificates/{serial}/", "get"),
    ("/api/v1/certificates/{serial}/revoke/", "post"),
    ("/api/v1/certificates/{serial}/renew/", "post"),
    ("/api/v1/requests/pending/", "get"),
    ("/api/v1/requests/{id}/approve/", "post"),
    ("/api/v1/requests/{id}/reject/", "post"),
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
        if method == "post" and "/auth/" not in path:
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


@pytest.mark.parametrize("path", ["/api/v1/schema/", "/api/v1/docs/"])
def test_the_schema_and_docs_are_served(client, db, path):
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    "path", ["/api/v1/enrollments/", "/api/v1/certificates/", "/api/v1/requests/pending/"]
)
def test_the_browsable_api_renders_for_a_browser_session(officer, path):
    client = session_client(officer)

    response = client.get(path, HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
