"""Names as people read them: short attribute names instead of dotted OIDs."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from enrollment.x509.names import readable_name, readable_rfc4514


def test_surname_given_name_and_organization_identifier_get_their_short_names():
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Karl Keeper"),
            x509.NameAttribute(NameOID.SURNAME, "Keeper"),
            x509.NameAttribute(NameOID.GIVEN_NAME, "Karl"),
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, "NTRUS-0000000"),
        ]
    )

    assert readable_name(name) == (
        "organizationIdentifier=NTRUS-0000000,GN=Karl,SN=Keeper,CN=Karl Keeper"
    )


def test_a_stored_string_with_dotted_oids_reads_the_same():
    stored = "CN=Karl Keeper,2.5.4.4=Keeper,2.5.4.42=Karl,O=Example Org"

    assert readable_rfc4514(stored) == "CN=Karl Keeper,SN=Keeper,GN=Karl,O=Example Org"


def test_a_string_that_does_not_parse_is_shown_as_it_is():
    assert readable_rfc4514("not a name") == "not a name"
    assert readable_rfc4514("") == ""


def test_what_storing_escaped_stays_escaped_when_read_back():
    """A CSR's subject is stored escaped; an attribute RFC 4514 writes as #hex would come
    back decoded, a right-to-left override included, without escaping the result."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from enrollment.x509.csr import parse_csr
    from enrollment.x509.names import printable

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Mallory"),
            x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, "\u202egpj.exe"),
        ]
    )
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    stored = printable(parse_csr(request.public_bytes(Encoding.PEM)).requested_subject)

    shown = readable_rfc4514(stored)

    assert "\u202e" not in shown
    assert "\\u202e" in shown
    assert readable_rfc4514("CN=\x00") == "CN=\\x00"  # one that does not parse, too
