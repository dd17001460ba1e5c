"""Names as people read them: short attribute names instead of dotted OIDs."""

from __future__ import annotations

from cryptography import x509
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
