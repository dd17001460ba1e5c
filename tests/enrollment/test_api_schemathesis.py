"""The whole API against its own OpenAPI schema, with inputs schemathesis generates.

Every operation the schema documents, as an RA officer, as an employee and anonymously:
whatever arrives (hostile strings, wrong types, huge numbers, odd content types), the
answer is never a 5xx, it is one the schema documents for that operation (status code,
content type, body), and the body matches the documented schema. The schema is the one
drf-spectacular serves at /api/v1/schema/; the requests go through Django's WSGI app
in-process, to the real database.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from knox.models import AuthToken

from drf_spectacular.generators import SchemaGenerator

from enrollment import services
from pkiportal.wsgi import application

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

# Minting, logging out and logging out everywhere are left out: the last would revoke the
# token every later example uses. tests/enrollment/test_api_tokens*.py cover them.
SCHEMA = schemathesis.openapi.from_dict(
    SchemaGenerator().get_schema(request=None, public=True)
).exclude(path_regex="/auth/")
SCHEMA.app = application
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.specs.openapi.checks.status_code_conformance,
    schemathesis.specs.openapi.checks.content_type_conformance,
    schemathesis.specs.openapi.checks.response_schema_conformance,
]
# Examples per operation and role. Derandomised: CI runs the same ones each time; to
# explore further, raise it (PKIPORTAL_SCHEMATHESIS_EXAMPLES=500) and run this file alone.
EXAMPLES = int(os.environ.get("PKIPORTAL_SCHEMATHESIS_EXAMPLES", "12"))


@pytest.fixture
def data(hierarchy, template, officer, employee):
    """Something to find: a certificate of the employee's, and a pending request."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    services.certificate_issue(
        template=template("smime-signing"), owner=employee, public_key=key.public_key()
    )
    return {"officer": officer, "employee": employee}


@pytest.fixture(autouse=True)
def _keep_the_test_transaction():
    """Django's handler closes the database connection at each request's start when its
    autocommit differs from the settings' (true inside the test's transaction). Its test
    Client disconnects that signal around each request; schemathesis calls the WSGI app
    directly, so it is disconnected here for the test."""
    from django.core.signals import request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)


def _token(user) -> str:
    _instance, token = AuthToken.objects.create(user=user)
    return token


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
@pytest.mark.parametrize("role", ["officer", "employee", "anonymous"])
def test_every_answer_is_documented_and_none_is_a_server_error(operation, role, data, settings):
    settings.PKIPORTAL_ENROLL_RATE_PER_HOUR = 10_000  # let the examples reach the enrolment
    headers = {} if role == "anonymous" else {"Authorization": f"Token {_token(data[role])}"}

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()
