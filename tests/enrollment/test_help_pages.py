"""The help page on using a downloaded .p12 in mail programs, and where it is offered."""

from __future__ import annotations

import pytest

from tests.conftest import client_for
from tests.enrollment.test_views_certificates import issue_to

pytestmark = pytest.mark.django_db

HELP = "/help/mail-clients/"


@pytest.mark.parametrize("role", ["anonymous", "employee", "officer"])
def test_anyone_may_read_it_it_holds_nothing_private(role, request, hierarchy):
    client = request.getfixturevalue("anonymous_client") if role == "anonymous" else None
    client = client or client_for(request.getfixturevalue(role))

    response = client.get(HELP)

    assert response.status_code == 200
    page = response.content.decode()
    for client_name in ("Outlook on Windows", "Apple Mail", "Thunderbird", "iPhone"):
        assert client_name in page
    assert 'href="/pki/#trust"' in page  # trusting the CA first
    assert client.post(HELP).status_code == 405


def test_it_mentions_the_archived_copy_only_where_a_template_archives(
    anonymous_client, hierarchy, template
):
    from enrollment.models import CertificateTemplate

    assert "key recovery agent can open" in anonymous_client.get(HELP).content.decode()

    CertificateTemplate.objects.update(archive_key=False)
    assert "key recovery agent can open" not in anonymous_client.get(HELP).content.decode()


def test_the_enrolment_and_certificate_pages_link_it(
    employee, employee_client, template, hierarchy
):
    enrol = employee_client.get("/enroll/smime-signing/").content.decode()
    mine = issue_to(employee, template)
    certificate = employee_client.get(f"/certificates/{mine.pk}/").content.decode()

    assert f'href="{HELP}"' in enrol
    assert f'href="{HELP}"' in certificate
