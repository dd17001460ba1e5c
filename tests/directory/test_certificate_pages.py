"""/directory/<fingerprint>/: the certificate in human terms and its downloads.

The .cer, .pem and .p7b are checked with the openssl CLI, the vCard is parsed back with
vobject and the certificate inside it checked with openssl too. None holds a private key.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import vobject

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enrollment import mailboxes, services
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs7 import format_fingerprint
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def cert(person, issue):
    user = person("José", "García", "Finance", email="jose.garcia@example.com")
    return issue(user, "smime-dual-use")


def pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", text, re.S)


def test_the_page_shows_the_certificate_in_human_terms(employee_client, cert):
    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    for expected in [
        "José García",
        "Test Issuing CA",  # issuer
        "EC P-256",
        "digitalSignature, keyAgreement",
        "emailProtection",
        "jose.garcia@example.com",
        format_fingerprint(cert.fingerprint_sha256),
        format_fingerprint(cert.fingerprint_sha1),
        "Signing and encryption",
        "Valid",
    ]:
        assert expected in page, expected
    assert cert.serial.upper()[-6:] in page.replace(":", "")


def test_a_revoked_certificate_says_so_with_its_reason(employee_client, cert):
    services.certificate_revoke(certificate=cert, reason="keyCompromise")

    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    assert "Revoked" in page
    assert "key compromise" in page
    assert "Do not rely on this certificate" in page
    assert "signatures made after that date" in page


def test_a_key_exposed_earlier_than_the_revocation_dates_the_warning_from_then(
    employee_client, cert
):
    since = cert.not_before.replace(microsecond=0)
    services.certificate_revoke(certificate=cert, reason="keyCompromise", invalidity_date=since)

    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    assert f"signatures made after {since:%Y-%m-%d %H:%M} UTC" in page
    assert "in other hands" in page


def test_fingerprints_are_found_in_any_case(employee_client, cert):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256.upper()}/")

    assert response.status_code == 200


@pytest.mark.parametrize("suffix", ["/", ".cer", ".p7b", ".vcf"])
def test_an_unknown_fingerprint_is_a_404(employee_client, cert, suffix):
    assert employee_client.get(f"/directory/{'0' * 64}{suffix}").status_code == 404


@pytest.mark.parametrize("suffix", [".key", ".p12", ".pfx", "/key"])
def test_there_is_no_private_key_download(employee_client, cert, suffix):
    assert employee_client.get(f"/directory/{cert.fingerprint_sha256}{suffix}").status_code == 404


def test_the_cer_is_the_der_certificate(employee_client, cert, openssl):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.cer")

    assert response["Content-Type"] == "application/pkix-cert"
    assert response["Content-Disposition"].startswith('attachment; filename="jose-garcia-')
    path = openssl.write("jose.cer", response.content)
    out = openssl.run("x509", "-inform", "DER", "-in", path, "-noout", "-fingerprint", "-sha256")
    assert format_fingerprint(cert.fingerprint_sha256) in out.stdout.decode()


def test_the_pem_is_the_certificate(employee_client, cert, openssl):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.pem")

    assert response["Content-Type"] == "application/x-pem-file"
    assert len(pem_blocks(response.content.decode())) == 1
    path = openssl.write("jose.pem", response.content)
    out = openssl.run("x509", "-in", path, "-noout", "-fingerprint", "-sha1")
    assert format_fingerprint(cert.fingerprint_sha1) in out.stdout.decode()


def test_the_p7b_carries_the_chain_that_verifies_the_certificate(
    employee_client, cert, hierarchy, openssl
):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.p7b")

    assert response["Content-Type"] == "application/pkcs7-mime"
    p7b = openssl.write("jose.p7b", response.content)
    bundle = openssl.run("pkcs7", "-inform", "DER", "-in", p7b, "-print_certs").stdout.decode()
    blocks = pem_blocks(bundle)
    assert len(blocks) == 3  # the certificate, the issuing CA, the root
    leaf = openssl.write("leaf.pem", _pem(cert))
    untrusted = openssl.write("bundle.pem", "".join(blocks).encode())
    anchor = openssl.write("root.pem", _pem(hierarchy.root))
    # Only the root comes from elsewhere: the .p7b alone completes the chain. (OpenSSL's
    # smimeencrypt purpose wants keyEncipherment, which EC keys never carry.)
    verified = openssl.run(
        "verify", "-CAfile", anchor, "-untrusted", untrusted, "-purpose", "smimesign", leaf
    )
    assert verified.stdout.decode().strip().endswith("OK")
    assert _pem(cert).decode() in blocks


def _pem(row) -> bytes:
    return row.certificate.public_bytes(Encoding.PEM)


def test_the_vcard_parses_back_with_the_certificate_inside(employee_client, cert, openssl):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response["Content-Type"] == "text/vcard; charset=utf-8"
    text = response.content.decode()
    assert text.startswith("BEGIN:VCARD\r\nVERSION:3.0\r\n")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    card = vobject.readOne(text)
    assert card.fn.value == "José García"
    assert card.n.value.family == "García"
    assert card.n.value.given == "José"
    assert card.email.value == "jose.garcia@example.com"
    assert card.org.value == ["Example Org", "Finance"]
    assert card.key.params["TYPE"] == ["X509"]
    der = card.key.value
    assert der == bytes(cert.der)
    path = openssl.write("from-vcard.cer", der)
    out = openssl.run("x509", "-inform", "DER", "-in", path, "-noout", "-fingerprint", "-sha256")
    assert format_fingerprint(cert.fingerprint_sha256) in out.stdout.decode()


@pytest.mark.parametrize("fmt", ["cer", "pem", "p7b", "vcf"])
def test_no_download_carries_a_private_key(employee_client, cert, fmt):
    body = employee_client.get(f"/directory/{cert.fingerprint_sha256}.{fmt}").content

    assert b"PRIVATE KEY" not in body
    assert b"ENCRYPTED" not in body


def test_times_are_labelled_with_the_zone_they_are_shown_in(employee_client, cert, settings):
    """Pages show times in TIME_ZONE and say which zone: a page once labelled New York
    times "UTC", five hours off for the revocation time relying parties judge by."""
    from zoneinfo import ZoneInfo

    services.certificate_revoke(certificate=cert, reason="keyCompromise")
    cert.refresh_from_db()
    settings.TIME_ZONE = "America/New_York"
    new_york = ZoneInfo("America/New_York")

    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    revoked = cert.revoked_at.astimezone(new_york)
    assert f"{revoked:%Y-%m-%d %H:%M} {revoked.tzname()}" in page
    not_before = cert.not_before.astimezone(new_york)
    assert f"{not_before:%Y-%m-%d %H:%M} {not_before.tzname()}" in page
    assert " UTC" not in page


# --- which certificate to encrypt to --------------------------------------------------


@pytest.fixture
def signing(cert, issue):
    """José's signing-only certificate, beside his dual-use `cert`."""
    return issue(cert.owner, "smime-signing")


def page_of(client, certificate) -> str:
    response = client.get(f"/directory/{certificate.fingerprint_sha256}/")
    assert response.status_code == 200
    return response.content.decode()


def downloads_of(page: str) -> str:
    return page.split("<h2>Download</h2>")[1].split("</section>")[0]


def test_a_signing_only_page_says_so_and_offers_the_one_to_encrypt_to_first(
    employee_client, cert, signing
):
    page = page_of(employee_client, signing)

    assert "Signing only — can't encrypt to this one." in page
    assert (
        "To send José García encrypted mail, use "
        f'<a href="/directory/{cert.fingerprint_sha256}/">the signing and encryption certificate'
    ) in page
    downloads = downloads_of(page)
    first, own = downloads.split("This signing-only certificate, to check signatures:")
    assert f'href="/directory/{cert.fingerprint_sha256}.cer"' in first
    assert f'href="/directory/{cert.fingerprint_sha256}.vcf"' in first
    assert f'href="/directory/{signing.fingerprint_sha256}.cer"' in own
    # The contact card carries the certificate to encrypt to, never this one.
    assert f"{signing.fingerprint_sha256}.vcf" not in page
    assert "Encrypt to this one" not in page


def test_the_page_of_the_one_to_encrypt_to_says_so(employee_client, cert, signing):
    page = page_of(employee_client, cert)

    assert "Encrypt to this one:" in page
    assert "the newest valid certificate José García holds that can encrypt" in page
    assert "Signing only" not in page
    assert f'href="/directory/{cert.fingerprint_sha256}.vcf"' in downloads_of(page)


def test_an_older_dual_use_page_points_to_a_newer_encryption_certificate(
    employee_client, cert, issue, encryption_template
):
    newer = issue(cert.owner, "test-encryption")

    old_page = page_of(employee_client, cert)
    new_page = page_of(employee_client, newer)

    assert "To send José García encrypted mail, use " in old_page
    assert f'<a href="/directory/{newer.fingerprint_sha256}/">the encryption certificate' in (
        old_page
    )
    assert "Encrypt to this one:" not in old_page
    assert "Encrypt to this one:" in new_page


def test_someone_with_only_a_signing_certificate_has_nothing_to_encrypt_to(
    employee_client, person, issue
):
    signing = issue(person("Sam", "Signer"), "smime-signing")

    page = page_of(employee_client, signing)

    assert "Signing only — can't encrypt to this one." in page
    assert "Sam Signer has no certificate you can encrypt to yet: ask them to get one at" in page
    assert 'href="/enroll/"' in page
    assert ".vcf" not in page


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_revoked_or_expired_certificate_is_never_the_one_to_encrypt_to(
    employee, cert, how, time_machine
):
    if how == "revoked":
        services.certificate_revoke(certificate=cert, reason="superseded")
    else:
        time_machine.move_to(cert.not_after + timedelta(seconds=1))
    client = client_for(employee)  # signed in after any jump: sessions expire too

    page = page_of(client, cert)

    assert "Encrypt to this one" not in page
    assert "José García has no certificate you can encrypt to yet" in page


def test_a_revoked_certificates_page_points_to_the_valid_one_to_encrypt_to(
    employee_client, cert, issue
):
    renewed = issue(cert.owner, "smime-dual-use")
    services.certificate_revoke(certificate=renewed, reason="keyCompromise")
    newest = issue(cert.owner, "smime-dual-use")

    page = page_of(employee_client, renewed)

    assert f'<a href="/directory/{newest.fingerprint_sha256}/">the signing and encryption' in page
    assert "Encrypt to this one:" not in page


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_revoked_or_expired_page_offers_the_card_of_the_one_to_encrypt_to_not_its_own(
    employee, cert, issue, how, time_machine
):
    """The page says not to encrypt to it: its own contact card, "for your address book",
    would put it where a mail client encrypts to it."""
    if how == "revoked":
        services.certificate_revoke(certificate=cert, reason="superseded")
    else:
        time_machine.move_to(cert.not_after + timedelta(seconds=1))
    newest = issue(cert.owner, "smime-dual-use")
    client = client_for(employee)  # signed in after any jump: sessions expire too

    downloads = downloads_of(page_of(client, cert))

    assert f"{cert.fingerprint_sha256}.vcf" not in downloads
    assert f'href="/directory/{newest.fingerprint_sha256}.vcf"' in downloads
    assert f"the certificate to encrypt to (not this {how} one)" in downloads
    assert f'href="/directory/{cert.fingerprint_sha256}.cer"' in downloads  # still there


def test_a_revoked_page_with_nothing_to_encrypt_to_offers_no_card(employee_client, cert):
    services.certificate_revoke(certificate=cert, reason="keyCompromise")

    assert ".vcf" not in downloads_of(page_of(employee_client, cert))


def test_the_card_of_someone_who_has_left_is_not_offered(employee_client, cert):
    cert.owner.is_active = False
    cert.owner.save()

    page = page_of(employee_client, cert)

    assert "no longer active" in page
    assert ".vcf" not in downloads_of(page)


def test_nothing_is_offered_to_encrypt_to_for_someone_who_has_left(employee_client, cert, signing):
    owner = signing.owner
    owner.is_active = False
    owner.save()

    page = page_of(employee_client, signing)
    card = employee_client.get(f"/directory/{signing.fingerprint_sha256}.vcf")

    assert "no longer active" in page
    assert cert.fingerprint_sha256 not in page
    assert ".vcf" not in page
    assert card.status_code == 404
    assert cert.fingerprint_sha256 not in card.content.decode()


# --- the vCard carries the certificate to encrypt to ------------------------------------


def test_a_signing_only_vcard_is_the_card_of_the_one_to_encrypt_to(employee_client, cert, signing):
    response = employee_client.get(f"/directory/{signing.fingerprint_sha256}.vcf")

    assert response.status_code == 302
    assert response["Location"] == f"/directory/{cert.fingerprint_sha256}.vcf"
    card = vobject.readOne(employee_client.get(response["Location"]).content.decode())
    assert card.key.value == bytes(cert.der)
    usage = x509.load_der_x509_certificate(card.key.value).extensions.get_extension_for_class(
        x509.KeyUsage
    )
    assert usage.value.key_agreement  # EC: what a sender's client encrypts with


def test_the_renewed_dual_use_vcard_is_offered_from_a_signing_only_page(
    employee_client, cert, signing, issue
):
    renewed = issue(cert.owner, "smime-dual-use")

    response = employee_client.get(f"/directory/{signing.fingerprint_sha256}.vcf")

    assert response["Location"] == f"/directory/{renewed.fingerprint_sha256}.vcf"


def test_there_is_no_vcard_of_a_signing_only_certificate_when_nothing_can_encrypt(
    employee_client, person, issue
):
    signing = issue(person("Sam", "Signer"), "smime-signing")

    response = employee_client.get(f"/directory/{signing.fingerprint_sha256}.vcf")

    assert response.status_code == 404
    body = response.content.decode()
    assert "Signing only — can't encrypt to this one." in body
    assert "Sam Signer has no certificate you can encrypt to yet" in body
    assert "BEGIN:VCARD" not in body
    assert response["Content-Type"].startswith("text/html")


def test_anonymous_readers_are_sent_to_sign_in_before_any_vcard_redirect(
    anonymous_client, cert, signing
):
    response = anonymous_client.get(f"/directory/{signing.fingerprint_sha256}.vcf")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/directory/")
    assert cert.fingerprint_sha256 not in response["Location"]


def test_the_public_directory_redirects_anonymous_readers_to_the_card_to_encrypt_to(
    anonymous_client, cert, signing, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True

    response = anonymous_client.get(f"/directory/{signing.fingerprint_sha256}.vcf")

    assert response["Location"] == f"/directory/{cert.fingerprint_sha256}.vcf"
    assert anonymous_client.get(response["Location"]).status_code == 200


# --- a revoked or expired certificate's .vcf: the card of the one to encrypt to -------


def _revoke_or_expire(cert, how: str, time_machine) -> None:
    if how == "revoked":
        services.certificate_revoke(certificate=cert, reason="superseded")
    else:
        time_machine.move_to(cert.not_after + timedelta(seconds=1))


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_revoked_or_expired_vcard_is_the_card_of_the_one_to_encrypt_to(
    employee, cert, issue, how, time_machine
):
    """Its page says not to encrypt to it; the card's address, bookmarked or scripted,
    must not hand it to an address book either."""
    _revoke_or_expire(cert, how, time_machine)
    newest = issue(cert.owner, "smime-dual-use")
    client = client_for(employee)  # signed in after any jump: sessions expire too

    response = client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 302
    assert response["Location"] == f"/directory/{newest.fingerprint_sha256}.vcf"
    card = vobject.readOne(client.get(response["Location"]).content.decode())
    assert card.key.value == bytes(newest.der)


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_revoked_or_expired_vcard_with_nothing_to_encrypt_to_is_gone_and_says_why(
    employee, cert, how, time_machine
):
    _revoke_or_expire(cert, how, time_machine)
    client = client_for(employee)

    response = client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 410  # gone for good, unlike an unknown fingerprint
    assert response["Content-Type"].startswith("text/html")
    assert "Content-Disposition" not in response
    body = response.content.decode()
    assert f"{how.capitalize()} — don't encrypt to this one." in body
    assert "José García has no certificate you can encrypt to yet" in body
    assert 'href="/enroll/"' in body
    assert "BEGIN:VCARD" not in body


def test_the_vcard_of_someone_who_has_left_is_not_served(employee_client, cert):
    cert.owner.is_active = False
    cert.owner.save()

    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 404
    body = response.content.decode()
    assert "Its holder is no longer active: there is no one to encrypt to." in body
    assert "BEGIN:VCARD" not in body


@pytest.mark.parametrize("fmt", ["cer", "pem", "p7b"])
@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_revoked_or_expired_certificate_stays_downloadable_to_check_old_signatures(
    employee, cert, issue, fmt, how, time_machine
):
    _revoke_or_expire(cert, how, time_machine)
    issue(cert.owner, "smime-dual-use")
    client = client_for(employee)

    response = client.get(f"/directory/{cert.fingerprint_sha256}.{fmt}")

    assert response.status_code == 200
    assert response["Content-Disposition"].endswith(f'{cert.fingerprint_sha256[:8]}.{fmt}"')


def test_anonymous_readers_are_sent_to_sign_in_before_a_revoked_vcard_says_anything(
    anonymous_client, cert, issue
):
    services.certificate_revoke(certificate=cert, reason="superseded")
    newest = issue(cert.owner, "smime-dual-use")

    response = anonymous_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/directory/")
    assert newest.fingerprint_sha256 not in response["Location"]


def test_the_public_directory_answers_anonymous_readers_of_a_revoked_vcard_alike(
    anonymous_client, cert, issue, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True
    services.certificate_revoke(certificate=cert, reason="superseded")

    gone = anonymous_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")
    newest = issue(cert.owner, "smime-dual-use")
    moved = anonymous_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert gone.status_code == 410
    assert moved["Location"] == f"/directory/{newest.fingerprint_sha256}.vcf"


# --- your own certificates: the pages speak to you ------------------------------------


def test_your_signing_only_page_and_card_say_you_have_nothing_others_can_encrypt_to(
    person, issue, employee_client
):
    sam = person("Sam", "Signer")
    signing = issue(sam, "smime-signing")
    client = client_for(sam)

    page = page_of(client, signing)
    card = client.get(f"/directory/{signing.fingerprint_sha256}.vcf")

    assert "You have no certificate others can encrypt to yet: get one at" in page
    assert 'href="/enroll/"' in page
    assert "Sam Signer has no certificate" not in page
    assert card.status_code == 404
    assert "You have no certificate others can encrypt to yet" in card.content.decode()
    # A colleague still reads of Sam, and whom to ask.
    theirs = page_of(employee_client, signing)
    assert "Sam Signer has no certificate you can encrypt to yet: ask them" in theirs
    assert "You have" not in theirs


def test_your_revoked_certificates_page_and_card_speak_to_you(cert):
    services.certificate_revoke(certificate=cert, reason="superseded")
    client = client_for(cert.owner)

    page = page_of(client, cert)
    card = client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert "You have no certificate others can encrypt to yet: get one at" in page
    assert "José García has no certificate" not in page
    assert card.status_code == 410
    assert "You have no certificate others can encrypt to yet" in card.content.decode()


def test_your_pages_say_which_of_yours_others_encrypt_to(cert, signing):
    client = client_for(cert.owner)

    own = page_of(client, cert)
    signing_only = page_of(client, signing)

    assert "the newest valid certificate you hold that can encrypt." in own
    assert (
        "Others sending you encrypted mail should use "
        f'<a href="/directory/{cert.fingerprint_sha256}/">the signing and encryption'
    ) in signing_only
    assert "José García" not in own.split("<h2>Download</h2>")[0].split("</h1>")[1]


def test_your_older_and_newer_pages_say_which_of_yours_is_newer(employee_client, cert, issue):
    newer = issue(cert.owner, "smime-dual-use")  # enrolled again rather than renewed
    client = client_for(cert.owner)

    old_page = page_of(client, cert)
    new_page = page_of(client, newer)

    assert "There is a newer one.</strong> You also hold a newer valid signing and" in old_page
    assert "The newest of 2 valid signing and encryption certificates you hold:" in new_page
    assert "José García" not in old_page.split("</h1>")[1].split("<h2>Download</h2>")[0]
    assert "José García" not in new_page.split("</h1>")[1].split("<h2>Download</h2>")[0]
    # A colleague still reads of José.
    assert "José García also holds a newer valid" in page_of(employee_client, cert)
    assert "certificates José García holds:" in page_of(employee_client, newer)


def test_your_signing_only_page_says_which_of_yours_others_take_to_encrypt(
    employee_client, cert, signing
):
    own = downloads_of(page_of(client_for(cert.owner), signing))
    theirs = downloads_of(page_of(employee_client, signing))

    assert (
        "<strong>To encrypt to you</strong>, others take the signing and encryption "
        "certificate instead:"
    ) in own
    assert "José García" not in own
    assert (
        "<strong>To encrypt to José García</strong>, take the signing and encryption "
        "certificate instead:"
    ) in theirs


# --- a shared mailbox's pages read by one of its delegates ------------------------------
# The mailbox holds its certificates, not the delegate: the pages speak of "this shared
# mailbox", never "you hold"; where it has none to encrypt to, the delegate is the one who
# can get it one, so they are told so rather than to "ask its delegates".


@pytest.fixture
def finance(officer, colleague, hierarchy, kra, template):
    """finance@, Bob Brown (colleague) its delegate, with two valid encryption certificates."""
    mailbox = mailboxes.mailbox_create(
        email="finance@example.com", display_name="Finance", delegates=[colleague], actor=officer
    )
    for _ in range(2):
        services.certificate_issue_with_server_key(
            template=template("smime-encryption"),
            owner=colleague,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password="correct horse battery staple",
            mailbox=mailbox,
        )
    return mailbox


def notices_of(page: str) -> str:
    """The page between its heading and its downloads: the notices about the holder."""
    return page.split("</h1>")[1].split("<h2>Download</h2>")[0]


def test_a_delegate_reads_of_this_shared_mailbox_s_certificates(
    finance, colleague, employee_client
):
    older, newer = finance.certificates.order_by("not_before", "pk")
    delegate = client_for(colleague)

    old_page = notices_of(page_of(delegate, older))
    new_page = notices_of(page_of(delegate, newer))
    services.certificate_revoke(certificate=older, reason="superseded")
    revoked_page = notices_of(page_of(delegate, older))

    assert "This shared mailbox also holds a newer valid encryption certificate" in old_page
    assert "The newest of 2 valid encryption certificates of this shared mailbox" in new_page
    assert "the newest valid certificate this shared mailbox holds that can encrypt." in new_page
    assert "Others sending this shared mailbox encrypted mail should use" in revoked_page
    for page in (old_page, new_page, revoked_page):
        assert "you hold" not in page
        assert "You also hold" not in page
    # Anyone else reads of the shared mailbox by name, as before.
    theirs = notices_of(page_of(employee_client, older))
    assert "To send the shared mailbox Finance encrypted mail, use" in theirs
    assert "the shared mailbox Finance holds that can encrypt." in notices_of(
        page_of(employee_client, newer)
    )


def test_a_delegate_is_told_they_can_get_a_mailbox_with_none_a_certificate(
    finance, colleague, employee_client
):
    older, newer = finance.certificates.order_by("not_before", "pk")
    for certificate in (older, newer):
        services.certificate_revoke(certificate=certificate, reason="superseded")
    delegate = client_for(colleague)
    told = "has no certificate others can encrypt to yet: as one of its delegates, you can get"

    page = notices_of(page_of(delegate, newer))
    card = delegate.get(f"/directory/{newer.fingerprint_sha256}.vcf")
    results = delegate.get("/directory/", {"q": "finance", "include_inactive": "on"})

    assert f"This shared mailbox {told} one for it at" in page
    assert 'href="/enroll/"' in page
    assert card.status_code == 410
    assert f"This shared mailbox {told}" in card.content.decode()
    assert f"Finance {told}" in results.content.decode()
    for answer in (page, card.content.decode(), results.content.decode()):
        assert "ask its delegates" not in answer
        assert "You have no certificate" not in answer
    # Anyone else is told whom to ask.
    assert "ask its delegates" in notices_of(page_of(employee_client, newer))
    others = employee_client.get("/directory/", {"q": "finance", "include_inactive": "on"})
    assert "Finance has no certificate you can encrypt to yet: ask its delegates" in (
        others.content.decode()
    )


# --- a certificate for an address its holder no longer has ----------------------------


def move(user, address: str) -> None:
    """The account's address changes: its certificates for the old one stay valid for a
    grace period (enrollment.outdated), then are revoked."""
    user.email = address
    user.save()


@pytest.fixture
def renamed(cert, issue):
    """José is jose.garcia-lopez@ now and holds a certificate for it; `cert` names his old
    address, jose.garcia@."""
    move(cert.owner, "jose.garcia-lopez@example.com")
    return issue(cert.owner, "smime-dual-use")


def test_a_certificate_for_an_old_address_says_not_to_encrypt_to_it(employee_client, cert, renamed):
    page = page_of(employee_client, cert)

    assert "For an old address — don't encrypt to this one." in page
    assert "It is for jose.garcia@example.com, an address José García no longer has" in page
    assert (
        "To send José García encrypted mail, use "
        f'<a href="/directory/{renamed.fingerprint_sha256}/">the signing and encryption '
        "certificate for jose.garcia-lopez@example.com</a>."
    ) in page
    assert "Encrypt to this one:" not in page
    assert "The newest of" not in page
    downloads = downloads_of(page)
    first, own = downloads.split("This certificate for an old address, to check signatures:")
    assert f'href="/directory/{renamed.fingerprint_sha256}.cer"' in first
    assert f'href="/directory/{renamed.fingerprint_sha256}.vcf"' in first
    assert f"{cert.fingerprint_sha256}.vcf" not in page
    assert "(not this one, for an old address)" in own
    for fmt in ("cer", "pem", "p7b"):  # to check the signatures it made
        assert f'href="/directory/{cert.fingerprint_sha256}.{fmt}"' in own


def test_the_certificate_for_the_new_address_is_the_one_to_encrypt_to(
    employee_client, cert, renamed
):
    page = page_of(employee_client, renamed)

    assert "Encrypt to this one:" in page
    assert "old address" not in page
    assert "The newest of" not in page  # the old address's is not one of a kind with it
    assert f'href="/directory/{renamed.fingerprint_sha256}.vcf"' in downloads_of(page)


def test_an_old_address_with_nothing_to_encrypt_to_says_whom_to_ask(employee_client, cert):
    move(cert.owner, "jose.garcia-lopez@example.com")

    page = page_of(employee_client, cert)

    assert "For an old address — don't encrypt to this one." in page
    assert "José García has no certificate you can encrypt to yet: ask them" in page
    assert ".vcf" not in page


def test_your_certificate_for_an_old_address_speaks_to_you(cert, renamed):
    client = client_for(cert.owner)

    page = page_of(client, cert)

    assert (
        "It is for jose.garcia@example.com, an address you no longer have (yours is now "
        "jose.garcia-lopez@example.com)"
    ) in page
    assert (
        "Others sending you encrypted mail should use "
        f'<a href="/directory/{renamed.fingerprint_sha256}/">'
    ) in page
    assert "José García no longer has" not in page


def test_a_signing_only_certificate_for_an_old_address_says_both(
    employee_client, cert, signing, renamed
):
    page = page_of(employee_client, signing)

    assert "For an old address — don't encrypt to this one." in page
    assert f'<a href="/directory/{renamed.fingerprint_sha256}/">' in page
    assert f'href="/directory/{renamed.fingerprint_sha256}.vcf"' in downloads_of(page)


def test_a_certificate_naming_no_address_keeps_its_card(employee_client, cert):
    """Some imported certificates name no address: no mailbox to have lost."""
    from enrollment.models import Certificate

    Certificate.objects.filter(pk=cert.pk).update(email="", emails=[])
    move(cert.owner, "jose.garcia-lopez@example.com")

    page = page_of(employee_client, cert)
    card = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert "Encrypt to this one:" in page
    assert "old address" not in page
    assert card.status_code == 200
    assert vobject.readOne(card.content.decode()).key.value == bytes(cert.der)


def test_an_address_handed_on_points_to_the_former_holders_own_certificate(
    employee_client, cert, renamed, person, issue
):
    """jose.garcia@ is Josefina's now: José's old certificate's page and card lead to
    José's new certificate, never to hers."""
    josefina = person("Josefina", "García", email="jose.garcia@example.com", username="josefina")
    hers = issue(josefina, "smime-dual-use")

    page = page_of(employee_client, cert)
    card = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert hers.fingerprint_sha256 not in page
    assert f'<a href="/directory/{renamed.fingerprint_sha256}/">' in page
    assert card["Location"] == f"/directory/{renamed.fingerprint_sha256}.vcf"
    assert "Encrypt to this one:" in page_of(employee_client, hers)


# --- its .vcf -----------------------------------------------------------------------


def test_an_old_address_vcard_is_the_card_of_the_one_to_encrypt_to(employee_client, cert, renamed):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 302
    assert response["Location"] == f"/directory/{renamed.fingerprint_sha256}.vcf"
    card = vobject.readOne(employee_client.get(response["Location"]).content.decode())
    assert card.key.value == bytes(renamed.der)
    assert card.email.value == "jose.garcia-lopez@example.com"


def test_an_old_address_vcard_with_nothing_to_encrypt_to_is_a_404_saying_why(employee_client, cert):
    """Not a 410: changing the address back within the grace period makes the card its own
    again, as reactivating does for a holder who left; once it is revoked, it is a 410."""
    move(cert.owner, "jose.garcia-lopez@example.com")

    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "Content-Disposition" not in response
    body = response.content.decode()
    assert "For an old address — don't encrypt to this one." in body
    assert "this one is for jose.garcia@example.com, an address its holder no longer has" in body
    assert "José García has no certificate you can encrypt to yet" in body
    assert "BEGIN:VCARD" not in body

    services.certificate_revoke(certificate=cert, reason="affiliationChanged")
    assert employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf").status_code == 410
    move(cert.owner, "jose.garcia@example.com")
    assert employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf").status_code == 410


def test_an_address_changed_back_gives_the_card_back(employee_client, cert):
    move(cert.owner, "jose.garcia-lopez@example.com")
    move(cert.owner, "jose.garcia@example.com")

    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 200
    assert vobject.readOne(response.content.decode()).key.value == bytes(cert.der)


def test_your_old_address_vcard_speaks_to_you(cert):
    move(cert.owner, "jose.garcia-lopez@example.com")
    client = client_for(cert.owner)

    response = client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response.status_code == 404
    body = response.content.decode()
    assert "an address you no longer have" in body
    assert "You have no certificate others can encrypt to yet" in body


@pytest.mark.parametrize("fmt", ["cer", "pem", "p7b"])
def test_a_certificate_for_an_old_address_stays_downloadable_to_check_old_signatures(
    employee_client, cert, renamed, fmt
):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.{fmt}")

    assert response.status_code == 200
    assert response["Content-Disposition"].endswith(f'{cert.fingerprint_sha256[:8]}.{fmt}"')


def test_anonymous_readers_are_sent_to_sign_in_before_an_old_address_says_anything(
    anonymous_client, cert, renamed
):
    for suffix in ("/", ".vcf"):
        response = anonymous_client.get(f"/directory/{cert.fingerprint_sha256}{suffix}")

        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=/directory/")
        assert renamed.fingerprint_sha256 not in response["Location"]


def test_the_public_directory_answers_anonymous_readers_of_an_old_address_alike(
    anonymous_client, cert, issue, settings
):
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True
    move(cert.owner, "jose.garcia-lopez@example.com")

    missing = anonymous_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")
    renamed = issue(cert.owner, "smime-dual-use")
    moved = anonymous_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")
    page = page_of(anonymous_client, cert)

    assert missing.status_code == 404
    assert moved["Location"] == f"/directory/{renamed.fingerprint_sha256}.vcf"
    assert "an address José García no longer has" in page
    assert "you no longer have" not in page
