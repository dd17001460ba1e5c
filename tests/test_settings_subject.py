"""The subject settings every certificate carries are refused at start-up when the
S/MIME BR (7.1.4.2.2 (d), Appendix A) forbid them, not at the first issuance.

The settings module is executed afresh under a patched environment (conftest's
load_settings); Django's own settings object is not touched.
"""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_the_placeholder_identifier_loads_without_a_country(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_ORGANIZATION_IDENTIFIER"] == "NTRUS-0000000"
    assert loaded["PKIPORTAL_COUNTRY_NAME"] == ""


@pytest.mark.parametrize(
    ("identifier", "country"),
    [
        ("NTRDE-HRB12345", "DE"),
        ("NTRUS+CA-C1234567", "us"),
        ("VATGB-123456789", ""),
        ("LEIXG-5493001KJTIIGC8Y1R12", "FR"),
        ("GOVGB+ENG", "GB"),
        ("INTXG", "CH"),
    ],
)
def test_identifiers_of_the_allowed_schemes_load(load_settings, identifier, country):
    loaded = load_settings(
        PKIPORTAL_ORGANIZATION_IDENTIFIER=identifier, PKIPORTAL_COUNTRY_NAME=country
    )

    assert loaded["PKIPORTAL_ORGANIZATION_IDENTIFIER"] == identifier
    assert loaded["PKIPORTAL_COUNTRY_NAME"] == country.upper()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"PKIPORTAL_ORGANIZATION_IDENTIFIER": "ABCGB-1"}, "registration scheme ABC"),
        ({"PKIPORTAL_ORGANIZATION_IDENTIFIER": "LEIGB-5493001KJTIIGC8Y1R12"}, "country XG"),
        ({"PKIPORTAL_ORGANIZATION_IDENTIFIER": "INTGB"}, "country XG"),
        ({"PKIPORTAL_ORGANIZATION_IDENTIFIER": "VATGB+ENG-1"}, "only the NTR and GOV"),
        ({"PKIPORTAL_ORGANIZATION_IDENTIFIER": "NTRGB"}, "lacks its registration number"),
        ({"PKIPORTAL_COUNTRY_NAME": "GB"},
         r"NTRUS-0000000.*names country US.*\(PKIPORTAL_COUNTRY_NAME is GB\)"),
        ({"PKIPORTAL_COUNTRY_NAME": "GBR"}, "PKIPORTAL_COUNTRY_NAME: 'GBR' is not a two-letter"),
    ],
)  # fmt: skip
def test_it_refuses_what_the_builder_would_refuse_at_every_issuance(
    load_settings, variables, message
):
    with pytest.raises(ImproperlyConfigured, match=message):
        load_settings(**variables)
