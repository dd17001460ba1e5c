"""Links in the portal's mail lead people to its https:// site URL; certificates keep the
http:// base URL for their CRL, CA certificate and OCSP URLs, which relying parties fetch
without TLS."""

from __future__ import annotations

from io import StringIO

import pytest

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from django.core.management import call_command

from enrollment import services
from tests.enrollment.tools import cryptography_csr

pytestmark = pytest.mark.django_db


def test_a_mail_links_to_the_https_site_while_the_certificate_names_the_http_base(
    settings,
    tmp_path,
    approval,
    employee,
    officer,
    ec_p256_key,
    mailoutbox,
    django_capture_on_commit_callbacks,
):
    settings.PKIPORTAL_BASE_URL = "http://pki.example.com"
    settings.PKIPORTAL_SITE_URL = "https://portal.example.com"
    # The CAs take their URLs from the settings, as an operator's create_pki does.
    call_command(
        "create_pki",
        "--country", "GB",
        "--root-key-out", str(tmp_path / "root.pem"),
        "--root-passphrase-file", str(tmp_path / "passphrase"),
        "--root-key-algorithm", "ec-p384",
        "--issuing-key-algorithm", "ec-p256",
        stdout=StringIO(),
    )  # fmt: skip
    request = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        csr=cryptography_csr(ec_p256_key).public_bytes(Encoding.PEM),
        channel="web",
    )

    with django_capture_on_commit_callbacks(execute=True):
        approved = services.request_approve(request=request, officer=officer)

    (decided,) = [m for m in mailoutbox if m.to == [employee.email]]
    assert f"https://portal.example.com/enroll/requests/{request.pk}/" in decided.body
    assert "http://" not in decided.body
    certificate = approved.certificate.certificate
    crl_dp = certificate.extensions.get_extension_for_oid(
        ExtensionOID.CRL_DISTRIBUTION_POINTS
    ).value
    assert [name.value for point in crl_dp for name in point.full_name or []] == [
        "http://pki.example.com/pki/issuing.crl"
    ]
    aia = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {(d.access_method, d.access_location.value) for d in aia} == {
        (AuthorityInformationAccessOID.CA_ISSUERS, "http://pki.example.com/pki/issuing.crt"),
        (AuthorityInformationAccessOID.OCSP, "http://pki.example.com/pki/ocsp/"),
    }
