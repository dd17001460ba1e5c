"""PKIPORTAL_TRUSTED_PROXIES: whose X-Forwarded-For is believed, checked at start-up."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_by_default_no_proxy_is_trusted(load_settings):
    assert load_settings()["PKIPORTAL_TRUSTED_PROXIES"] == ()


def test_addresses_and_networks_of_both_families_are_read(load_settings):
    loaded = load_settings(PKIPORTAL_TRUSTED_PROXIES="10.0.0.5, 172.16.0.0/12,::1,2001:db8::/64")

    assert loaded["PKIPORTAL_TRUSTED_PROXIES"] == (
        ip_network("10.0.0.5/32"),
        ip_network("172.16.0.0/12"),
        ip_network("::1/128"),
        ip_network("2001:db8::/64"),
    )


def test_django_axes_asks_the_portal_for_the_client_address_and_user_name(load_settings):
    loaded = load_settings()

    assert loaded["AXES_CLIENT_IP_CALLABLE"] == "pkiportal.clients.client_address"
    assert loaded["AXES_USERNAME_CALLABLE"] == "pkiportal.clients.axes_username"


@pytest.mark.parametrize(
    "entry",
    [
        "proxy.example.com",  # names are not resolved: a DNS answer would decide trust
        "10.0.0.300",
        "10.0.0.5/24",  # host bits set: 10.0.0.0/24 was meant, or a typo
        "10.0.0.0/33",
        "[::1]",
        "10.0.0.5:8080",
    ],
)
def test_a_bad_entry_stops_start_up_and_is_named(load_settings, entry):
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_TRUSTED_PROXIES") as raised:
        load_settings(PKIPORTAL_TRUSTED_PROXIES=f"10.0.0.1,{entry}")

    assert repr(entry) in str(raised.value)
