"""serializers.api_path: reverse()'s answer, from a path reversed once per route."""

from __future__ import annotations

import pytest

from django.urls import NoReverseMatch, get_script_prefix, reverse, set_script_prefix

from enrollment.api.serializers import api_path


@pytest.fixture
def script_prefix():
    """Restores the script prefix a test sets (a portal served under /pki-portal/)."""
    before = get_script_prefix()
    yield set_script_prefix
    set_script_prefix(before)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("enrollment-detail", "pk", 1),
        ("enrollment-detail", "pk", 9876543210),
        ("enrollment-collect", "pk", 42),
        ("recovery-detail", "pk", 7),
        ("certificate-detail", "serial", "5f3a0b9c1d2e4f60718293a4b5c6d7e8f9012345"),
        ("certificate-detail", "serial", "5F:3A:0B"),  # not put in as is: reverse() itself
        ("enrollment-detail", "pk", "0123456789abcdef"),  # the mark itself
    ],
)
def test_a_path_is_what_reverse_gives(name, field, value):
    assert api_path(name, **{field: value}) == reverse(
        f"enrollment-api:{name}", kwargs={field: value}
    )


def test_a_new_script_prefix_is_not_answered_from_the_old_ones_path(script_prefix):
    plain = api_path("enrollment-detail", pk=3)

    script_prefix("/pki-portal/")
    moved = api_path("enrollment-detail", pk=3)

    assert moved == reverse("enrollment-api:enrollment-detail", kwargs={"pk": 3})
    assert moved == "/pki-portal" + plain


def test_an_id_the_route_refuses_is_refused_as_by_reverse():
    with pytest.raises(NoReverseMatch):
        api_path("certificate-detail", serial="not/hex")


def test_a_route_without_an_id_is_reversed_as_usual():
    assert api_path("enrollment-list") == reverse("enrollment-api:enrollment-list")


def test_another_urlconf_is_not_answered_from_the_old_ones_path(settings):
    plain = api_path("enrollment-detail", pk=4)

    settings.ROOT_URLCONF = "tests.enrollment.moved_api_urls"
    moved = api_path("enrollment-detail", pk=4)

    assert moved == reverse("enrollment-api:enrollment-detail", kwargs={"pk": 4})
    assert moved == "/moved" + plain
